"""The YAML config of CryoSiam's subtomogram-embedding step, validated once.

Every key of the documented config (``docs/config.md``) is accepted with its documented
meaning; an unknown key or a value of the wrong type is a :class:`ConfigError` naming the key
and the file. Relative paths resolve against the directory the command runs in (as CryoSiam
and Nextflow do). The same file works as ``--config_file`` for the CLI and as
``-params-file`` for Nextflow.

Overrides (``--set key.sub=value``) are applied to the raw YAML before validation, so they
obey exactly the same rules as the file; an error in an override names ``--set``, not the file.

The YAML is read by a bounded loader (:mod:`.yaml_bounded`): aliases may not expand the document beyond
:data:`.yaml_bounded.MAX_YAML_VALUES` values (a "billion laughs" file is a config error, not gigabytes of
memory), a key may not appear twice in a mapping, and a few keys that CryoSiam's own
embedding-step configs carry but that do nothing here (:data:`IGNORED_CRYOSIAM_KEYS`) are
dropped with a warning; every other unknown key stops the command.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .yaml_bounded import read_config_text, read_yaml

log = logging.getLogger(__name__)

# the orders of the rotation groups of the cube that embedding_rotations can name (core.model.cube_rotations)
ROTATION_GROUP_ORDERS = (1, 4, 12, 24)

MAX_COUNT = 2**31 - 1  # the largest size or count a key may ask for (NumPy, torch and scikit-learn take int32s)
MAX_CONFIG_BYTES = 4 * 2**20  # a config is a few kilobytes; a long test_files list a few hundred
# Keys of CryoSiam's own embedding-step configs that do nothing here: dropped with a warning
# (docs/config.md, "Keys ignored on purpose"). Every other unknown key stops the command.
IGNORED_CRYOSIAM_KEYS = (
    ("visualization", "visualize_3d_mask"),  # CryoSiam's first example config: 3D masks of the clusters
    ("visualization", "3d_mask_extension"),  # ... and their file type (.mrc or .h5)
)
# Metrics that both UMAP and scikit-learn's pairwise distances compute on real-valued embeddings
# without further parameters (boolean and parametrized metrics are left out).
DISTANCES = (
    "euclidean",
    "l2",
    "sqeuclidean",
    "cosine",
    "correlation",
    "manhattan",
    "l1",
    "cityblock",
    "chebyshev",
    "minkowski",
    "canberra",
    "braycurtis",
)


def plain_name(value: str, what: str = "a file name") -> str:
    """``value`` if it is a plain file name: no folder part, not ``.``/``..``, no NUL, not empty."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError(f"must be {what} without a folder part")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class KMeansConfig(_Section):
    num_clusters: int = Field(default=6, ge=1, le=MAX_COUNT)
    visualization: bool = True


class SpectralConfig(_Section):
    num_clusters: int = Field(default=6, ge=1, le=MAX_COUNT)
    estimate_num_clusters: bool = False
    visualization: bool = True
    n_neighbors: int = Field(default=10, ge=2, le=MAX_COUNT)  # extension: neighbours of the affinity graph


class VisualizationConfig(_Section):
    prediction_folder: str | None = None
    distance: Literal[DISTANCES] = "euclidean"  # type: ignore[valid-type]
    pca_components: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    visualization_suffix: str = "instance_regions.csv"
    visualize_umap: bool = True
    umap_3d: bool = Field(default=False, alias="3d_umap")
    max_plot_points: int = Field(default=20000, ge=100, le=MAX_COUNT)  # extension: subsample for plots only
    explorer_thumbnails: int = Field(default=20000, ge=0, le=MAX_COUNT)
    """Extension: at most this many instances (a stratified sample) get a particle thumbnail in
    ``embeddings_explorer.html``; the others show text only on hover. 0: no thumbnails."""
    explorer_max_points: int = Field(default=200_000, ge=100, le=200_000)
    """Extension: at most this many instances (a stratified sample by tomogram and cluster) are drawn
    in ``embeddings_explorer.html``: thin a large set for a fluid page (200,000, the page's bound)."""

    @field_validator("visualization_suffix")
    @classmethod
    def _plain_suffix(cls, v: str) -> str:
        return plain_name(v, "the end of a file name")


class ScaleConfig(_Section):
    """Extension: how the analysis steps handle more embeddings than memory (docs/analysis.md, "At scale")."""

    memory_gb: float = Field(default=4.0, ge=0)  # merged embeddings larger than this are read in chunks
    working_dim: int = Field(default=64, ge=2, le=MAX_COUNT)  # out of core: PCA dimensions clustering uses
    projection_sample: int = Field(default=100_000, ge=100, le=MAX_COUNT)  # UMAP fitted on at most this many


class DataConfig(_Section):
    patch_size: list[int] = Field(default_factory=lambda: [64, 64, 64])
    patch_overlap: Any = None  # accepted for compatibility; unused by the embedding step
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    @field_validator("patch_size")
    @classmethod
    def _positive_patch(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(not 1 <= int(s) <= MAX_COUNT for s in v):
            raise ValueError(f"must be three positive integers [z, y, x], got {v}")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> DataConfig:
        if not self.max > self.min:
            raise ValueError(f"max ({self.max}) must be greater than min ({self.min})")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class NetworkConfig(_Section):
    """Network shape. ``predict`` takes the architecture from the checkpoint; ``train`` uses all of it."""

    spatial_dims: int = 3
    in_channels: int = 1
    dim: int = Field(default=1024, ge=1, le=MAX_COUNT)
    block_type: Literal["basic", "bottleneck"] = "bottleneck"
    num_layers: list[int] = Field(default_factory=lambda: [1, 1, 1, 1])
    num_filters: list[int] = Field(default_factory=lambda: [64, 128, 256, 512])
    no_max_pool: bool = True
    pred_dim: int = Field(default=512, ge=1, le=MAX_COUNT)
    conv1_t_size: int = Field(default=7, ge=1, le=MAX_COUNT)
    conv1_t_stride: int = Field(default=1, ge=1, le=MAX_COUNT)

    @field_validator("num_layers", "num_filters")
    @classmethod
    def _four_positive(cls, v: list[int]) -> list[int]:
        if len(v) != 4 or any(not 1 <= n <= MAX_COUNT for n in v):
            raise ValueError("must be four positive integers (one per ResNet stage)")
        return v


class ParametersConfig(_Section):
    gpu_devices: Any = 0  # a GPU index, a list of them (the first is used), or null (CPU)
    data: DataConfig = Field(default_factory=DataConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)

    @field_validator("gpu_devices")
    @classmethod
    def _gpu_indices(cls, v):
        indices = v if isinstance(v, list) else [] if v is None else [v]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
            raise ValueError(
                "must be a GPU index (0, 1, ...), a list of them, or null for the CPU "
                "(Lightning's -1, all GPUs, does not apply: one process uses one GPU)"
            )
        return v


class HyperParametersConfig(_Section):
    batch_size: int = Field(default=10, ge=1, le=MAX_COUNT)
    # extensions used by `train`
    learning_rate: float = Field(default=0.001, gt=0)
    max_steps: int = Field(default=1000, ge=1, le=MAX_COUNT)
    # simulated training: the share of pairs that are sub-unit assemblies instead of envelope shapes
    assembly_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    # a supervised-contrastive term beside SimSiam's loss: pairs of one class are positives (core.train)
    contrast_weight: float = Field(default=0.0, ge=0.0, le=100.0)
    contrast_temperature: float = Field(default=0.2, gt=0.0, le=10.0)
    # simulated training: a linear classifier of the simulator's classes on the projector output (core.train)
    class_weight: float = Field(default=0.0, ge=0.0, le=100.0)


class InstancesConfig(_Section):
    """CryoSiam's optional instance-step section: selects ``<stem>_instance_preds_min-A_max-B.h5``."""

    min_center_distance: Any = None  # numbers: they become part of a file name
    max_center_distance: Any = None

    @field_validator("min_center_distance", "max_center_distance")
    @classmethod
    def _number(cls, v):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError("must be a number or null")
        return v


class CentersConfig(_Section):
    """Extension: how ``predict-centers`` reads picks (docs/picks.md)."""

    units: Literal["auto", "voxels", "angstrom"] = "auto"
    origin: Literal["auto", "corner", "centered"] = "auto"
    voxel_size: Any = None  # Å per tomogram voxel (number or [z, y, x]); null: MRC header
    picks_voxel_size: Any = None  # Å per voxel of voxel-unit picks; null: the tomogram's
    tomogram_column: str | None = None  # the column naming each pick's tomogram; null: rlnTomoName, ...
    mask_radius: float | None = Field(default=None, gt=0)  # voxels; null: no sphere mask
    border: Literal["pad", "skip"] = "pad"

    @field_validator("voxel_size", "picks_voxel_size")
    @classmethod
    def _positive_triple(cls, v):
        if v is None:
            return v
        values = [v] * 3 if isinstance(v, (int, float)) else v
        if (
            not isinstance(values, list)
            or len(values) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf") for x in values)
        ):
            raise ValueError("must be a positive number or [z, y, x]")
        return v


class Config(_Section):
    data_folder: str | None = None
    instances_mask_folder: str | None = None
    log_dir: str | None = None
    prediction_folder: str | None = None
    trained_model: str | None = None
    contrastive: bool = True
    file_extension: str = ".mrc"

    test_files: list[str] | None = None
    train_files: list[str] | None = None
    clustering_files: list[str] | None = None
    visualization_files: list[str] | None = None

    min_particle_size: int | None = Field(default=None, ge=0, lt=2**63)
    max_particle_size: int | None = Field(default=None, ge=0, lt=2**63)
    masking_type: Literal[0, 1, 2] = 1
    expand_labels: int = Field(default=0, ge=0, le=MAX_COUNT)

    instances: InstancesConfig | None = None

    # CryoSiam's centres-based prediction (simsiam_embeddings_from_centers_predict)
    centers_file: str | None = None
    centers_patch_size: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    centers: CentersConfig = Field(default_factory=CentersConfig)

    clustering_kmeans: KMeansConfig = Field(default_factory=KMeansConfig)
    clustering_spectral: SpectralConfig = Field(default_factory=SpectralConfig)
    visualization: VisualizationConfig = Field(default_factory=VisualizationConfig)
    parameters: ParametersConfig = Field(default_factory=ParametersConfig)
    hyper_parameters: HyperParametersConfig = Field(default_factory=HyperParametersConfig)

    # extensions (documented in docs/config.md)
    seed: int = Field(default=0, ge=0, lt=2**32)  # NumPy's and scikit-learn's seeds are 32-bit
    skip_missing_masks: bool = False
    mixed_precision: bool = False
    # the embedding averaged over this rotation group of the cube (1: none, CryoSiam's embedding; 4, 12, 24)
    embedding_rotations: int = 1
    scale: ScaleConfig = Field(default_factory=ScaleConfig)

    # where the config came from, for error messages (not YAML keys)
    _source: str = PrivateAttr("<defaults>")
    _overrides: dict[str, str] = PrivateAttr(default_factory=dict)  # dotted key -> "--set key=value"

    @field_validator("file_extension")
    @classmethod
    def _dotted(cls, v: str) -> str:
        v = plain_name(v, "a file extension")
        return v if v.startswith(".") else "." + v

    @field_validator("test_files", "train_files", "clustering_files", "visualization_files")
    @classmethod
    def _plain_names(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            plain_name(name, "a tomogram file name (in data_folder)")
        return v

    @field_validator("embedding_rotations")
    @classmethod
    def _rotation_group(cls, v: int) -> int:
        if v not in ROTATION_GROUP_ORDERS:
            raise ValueError("must be 1 (none), 4, 12 or 24 (the order of a rotation group of the cube)")
        return v

    @model_validator(mode="after")
    def _cubic_patch_for_axis_turns(self) -> Config:
        size = self.parameters.data.patch_size
        if self.embedding_rotations > 4 and size is not None and len(set(size)) > 1:
            raise ValueError(
                f"embedding_rotations {self.embedding_rotations} turns the patch's axes into each other: "
                f"it needs a cubic parameters.data.patch_size, not {list(size)} (use 1 or 4)"
            )
        return self

    @field_validator(
        "data_folder", "instances_mask_folder", "log_dir", "prediction_folder", "trained_model", "centers_file"
    )
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\0" in v:
            raise ValueError("a path cannot hold a NUL character")
        return v

    # --- helpers -------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """The config file (or ``<defaults>``)."""
        return self._source

    def origin(self, key: str) -> str:
        """Where a (dotted) key's value came from: ``--set key=value`` or the config file, for messages."""
        return _origin(key, self._overrides, self._source)

    def path(self, key: str) -> Path:
        """The resolved path of a top-level path key, or a ConfigError if it is not set."""
        value = getattr(self, key)
        if value is None or value == "":
            raise ConfigError(f"key '{key}' must be set for this command", self.origin(key))
        return Path(os.path.expanduser(value)).absolute()

    def optional_path(self, key: str) -> Path | None:
        value = getattr(self, key)
        return None if value in (None, "") else Path(os.path.expanduser(value)).absolute()

    def is_set(self, key: str) -> bool:
        """Whether a (dotted) key was given, in the file or with ``--set``, rather than defaulted."""
        node: BaseModel = self
        *sections, last = key.split(".")
        for part in sections:
            if part not in node.model_fields_set:
                return False
            node = getattr(node, part)
        return last in node.model_fields_set

    def check_output_folder(self, folder: Path, what: str = "prediction_folder") -> None:
        """Refuse an output folder that is ``data_folder`` or ``instances_mask_folder`` (symlinks
        resolved): our MRC and HDF5 outputs there would be read back as tomograms or masks, and a
        re-run's clean-up would work among the inputs. A folder inside or around them is fine
        (tomograms and masks are listed without descending into subfolders)."""
        out = Path(folder).resolve()
        for key in ("data_folder", "instances_mask_folder"):
            given = self.optional_path(key)
            if given is not None and given.resolve() == out:
                raise ConfigError(
                    f"{what} {folder} is the {key}: outputs there would be read back as inputs; "
                    "use a folder of its own",
                    self.origin(key),
                )

    @property
    def instances_suffix(self) -> str:
        """CryoSiam's suffix for instance files made with centre-distance filtering."""
        if self.instances is None:
            return ""
        return f"_min-{self.instances.min_center_distance}_max-{self.instances.max_center_distance}"

    def stem(self, filename: str) -> str:
        """Tomogram stem as CryoSiam computes it: the name before ``file_extension``."""
        name = os.path.basename(filename)
        return name[: -len(self.file_extension)] if name.endswith(self.file_extension) else Path(name).stem

    @property
    def max_particle_bound(self) -> int | None:
        return self.max_particle_size or None  # null or 0: no bound

    @property
    def min_particle_bound(self) -> int | None:
        return self.min_particle_size or None


# --------------------------------------------------------------------------------------------
# overrides, validation, loading


def _origin(key: str, overrides: dict[str, str], source: str) -> str:
    """``--set K=V`` when K is ``key`` or a section holding it; the file when no override touches
    ``key``; both when an override set a value inside ``key`` (a whole section found wrong)."""
    for given, text in overrides.items():
        if key == given or key.startswith(given + "."):
            return text
    inside = [text for given, text in overrides.items() if given.startswith(key + ".")]
    return f"{source} with {', '.join(inside)}" if inside else source


def _set_dotted(raw: dict, dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, dict):
            child = node[part] = dict(child)  # never change the caller's dict
        else:
            raise ConfigError(f"'{part}' is not a section", origin)
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` → (``key.sub``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE with a key like 'section.key', got '{text}'")
    try:
        parsed = read_yaml(value, f"--set {text}") if value != "" else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def _drop_ignored_keys(raw: dict, source: str) -> dict:
    """``raw`` without :data:`IGNORED_CRYOSIAM_KEYS` (each dropped with a warning); ``raw`` is not changed."""
    raw = dict(raw)
    for section, key in IGNORED_CRYOSIAM_KEYS:
        part = raw.get(section)
        if isinstance(part, dict) and key in part:
            raw[section] = {k: v for k, v in part.items() if k != key}
            log.warning(
                "%s: ignoring CryoSiam's key '%s.%s' (not used by subtomo-embed; docs/config.md)", source, section, key
            )
    return raw


def _format_validation_error(err: ValidationError, cfg_origin) -> str:
    """One line: each problem after the file or ``--set`` it came from (``cfg_origin(dotted key)``)."""
    by_origin: dict[str, list[str]] = {}
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            text = f"unknown key '{key}'"
        elif e["type"] == "missing":
            text = f"missing key '{key}'"
        else:
            got = e.get("input")
            got_text = "" if isinstance(got, (dict, list)) and len(str(got)) > 60 else f" (got {got!r})"
            text = f"key '{key}': {e['msg'].removeprefix('Value error, ')}{got_text}"
        by_origin.setdefault(cfg_origin(key), []).append(text)
    return "; ".join(f"{origin}: {'; '.join(texts)}" for origin, texts in by_origin.items())


def config_from_dict(raw: dict | None, source: str = "<defaults>", overrides: list[str] | None = None) -> Config:
    raw = _drop_ignored_keys(raw or {}, source)
    given: dict[str, str] = {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, f"--set {text}")
        given[key] = f"--set {text}"
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, lambda key: _origin(key, given, source))) from None
    cfg._source = source
    cfg._overrides = given
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read and validate a config file (or the defaults when ``path`` is None)."""
    if path is None:
        return config_from_dict({}, "<defaults>", overrides)
    path = Path(path)
    text = read_config_text(path, MAX_CONFIG_BYTES)
    try:
        raw = read_yaml(text, str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", path) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping of keys to values", path)
    return config_from_dict(raw, str(path), overrides)
