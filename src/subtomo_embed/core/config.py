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
from pydantic import BaseModel, PrivateAttr, ValidationError, field_validator, model_validator

from .config_sections import (
    DISTANCES,  # noqa: F401  (the metrics a config may name; imported from here)
    FIGURES,
    MASKS,
    MAX_COUNT,
    MERGE,
    NETWORK_RUNS,
    PICKS,
    ROTATION_GROUP_ORDERS,
    TRAIN,
    CentersConfig,
    HyperParametersConfig,
    InstancesConfig,
    KMeansConfig,
    NetworkConfig,  # noqa: F401
    ParametersConfig,
    ScaleConfig,
    SpectralConfig,
    VisualizationConfig,
    _Section,
    config_key,
    plain_name,
)
from .errors import ConfigError
from .yaml_bounded import read_config_text, read_yaml

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 4 * 2**20  # a config is a few kilobytes; a long test_files list a few hundred
# Keys of CryoSiam's own embedding-step configs that do nothing here: dropped with a warning
# (docs/config.md, "Keys ignored on purpose"). Every other unknown key stops the command.
IGNORED_CRYOSIAM_KEYS = (
    ("visualization", "visualize_3d_mask"),  # CryoSiam's first example config: 3D masks of the clusters
    ("visualization", "3d_mask_extension"),  # ... and their file type (.mrc or .h5)
)


class Config(_Section):
    """CryoSiam's subtomogram-embedding config plus our extensions: every key, its default, its bounds, its
    help text and the pipeline steps that read it (with the sections of :mod:`.config_sections`)."""

    data_folder: str | None = config_key(
        help="Folder of tomograms (raw or denoised). Required by `predict`, `extract` and the pipeline.",
        group="input_output",
        path="directory",
    )
    instances_mask_folder: str | None = config_key(
        help="Folder of instance masks: `<stem>_instance_preds.h5` (dataset `instances`, CryoSiam's instance "
        "step) or an MRC label volume `<stem><file_extension>`. An optional `<stem>_instance_regions.csv` beside "
        "the mask supplies the boxes. Needed unless the pipeline's `picks` is given.",
        group="input_output",
        path="directory",
    )
    log_dir: str | None = config_key(
        help="Where `subtomo-embed.log` is written (every command appends to it, a failed command its one-line "
        "error too; a log file that is a symbolic link is an error). If `trained_model` is null, "
        "`<log_dir>/model/last.ckpt` is used, as in CryoSiam.",
        group="input_output",
    )
    prediction_folder: str | None = config_key(
        help="Output folder of the per-tomogram embeddings and of the merge and clustering results.",
        group="input_output",
        path="directory",
    )
    trained_model: str | None = config_key(
        help="The SimSiam checkpoint (`.ckpt`, CryoSiam's Lightning layout).", group="input_output"
    )
    contrastive: bool = config_key(
        True,
        help="true: the architecture comes from the checkpoint's `hyper_parameters['backbone_config']` and the "
        "embedding is the L2-normalized predictor output; false: from `hyper_parameters['config']`, the "
        "embedding is the projector output.",
        steps=(*NETWORK_RUNS, TRAIN),
        group="input_output",
        path="file",
    )
    file_extension: str = config_key(
        ".mrc",
        help="Tomograms are the files of `data_folder` ending with it (others are ignored); the stem is the name "
        "without it.",
        steps=(*MASKS, *PICKS, *FIGURES),
        group="input_output",
    )

    test_files: list[str] | None = config_key(
        help="Tomogram file names to process; null = all. (`--filename X.mrc` processes one.)", group="input_output"
    )
    train_files: list[str] | None = config_key(
        help="CryoSiam appends these to the files to predict; so do we.", group="input_output"
    )
    clustering_files: list[str] | None = config_key(
        help="Tomograms (stems or file names) whose embeddings are merged for clustering; null = all found.",
        steps=(MERGE,),
        group="input_output",
    )
    visualization_files: list[str] | None = config_key(
        help="Tomograms drawn individually by `visualize`; null = all.", steps=FIGURES, group="input_output"
    )

    min_particle_size: int | None = config_key(
        help="Keep instances with area ≥ this (voxels, measured after `expand_labels`). null or 0 = no bound.",
        steps=MASKS,
        group="extraction",
        ge=0,
        lt=2**63,
    )
    max_particle_size: int | None = config_key(
        help="Keep instances with area ≤ this. null or 0 = no bound.", steps=MASKS, group="extraction", ge=0, lt=2**63
    )
    masking_type: Literal[0, 1, 2] = config_key(
        1,
        help="0: the whole box; 1: voxels outside the instance's 3D convex hull set to 0; 2: voxels outside the "
        "instance set to 0.",
        steps=MASKS,
        group="extraction",
    )
    expand_labels: int = config_key(
        0,
        help="Grow every label by this many voxels into background only (skimage `expand_labels`) before "
        "measuring and masking.",
        steps=MASKS,
        group="extraction",
        ge=0,
        le=MAX_COUNT,
    )
    skip_missing_masks: bool = config_key(
        False,
        help="*Extension*: a tomogram without a mask is skipped with a warning instead of failing "
        "(`--skip-missing-masks`).",
        group="extraction",
    )

    instances: InstancesConfig | None = config_key(
        help="CryoSiam's optional `min_center_distance`/`max_center_distance`: selects "
        "`<stem>_instance_preds_min-A_max-B.h5`.",
        steps=(TRAIN, *FIGURES),
        group="input_output",
    )

    # CryoSiam's centres-based prediction (simsiam_embeddings_from_centers_predict)
    centers_file: str | None = config_key(
        help="Picks for `predict-centers`: STAR (RELION 3/4/5), CSV or copick JSON; one file or a folder of "
        "per-tomogram files ([picks.md](picks.md)). The pipeline takes them from `picks`.",
        group="input_output",
    )
    centers_patch_size: int | None = config_key(
        help="Edge of the cubic box cut around each pick (voxels).",
        steps=PICKS,
        group="input_output",
        ge=1,
        le=MAX_COUNT,
    )
    centers: CentersConfig = config_key(
        help="*Extension*: how picks are read: every coordinate conversion, explicit ([picks.md](picks.md)).",
        group="input_output",
        default_factory=CentersConfig,
    )

    clustering_kmeans: KMeansConfig = config_key(help="KMeans.", group="analysis", default_factory=KMeansConfig)
    clustering_spectral: SpectralConfig = config_key(
        help="Spectral clustering on a k-NN graph.", group="analysis", default_factory=SpectralConfig
    )
    visualization: VisualizationConfig = config_key(
        help="Projections, figures and the explorer.", group="analysis", default_factory=VisualizationConfig
    )
    seed: int = config_key(
        0,
        help="*Extension*: seed of KMeans, spectral clustering, UMAP, plot subsampling and training (0 … 2³²−1: "
        "NumPy's and scikit-learn's seeds are 32-bit).",
        steps=(TRAIN, *FIGURES),
        group="analysis",
        ge=0,
        lt=2**32,
    )
    scale: ScaleConfig = config_key(
        help='*Extension*: more embeddings than memory (docs/analysis.md, "At scale").',
        group="analysis",
        default_factory=ScaleConfig,
    )

    parameters: ParametersConfig = config_key(
        help="Data and network parameters.", group="model", default_factory=ParametersConfig
    )
    hyper_parameters: HyperParametersConfig = config_key(
        help="The batch size of embedding, and the settings of `train` (the pipeline's `--train true`).",
        group="model",
        default_factory=HyperParametersConfig,
    )
    mixed_precision: bool = config_key(
        False,
        help="*Extension*: run the network under autocast (bf16 on CPU, fp16 on GPU). Off by default: results then "
        "equal full precision.",
        steps=NETWORK_RUNS,
        group="model",
    )
    embedding_rotations: int = config_key(
        1,
        help="*Extension*: average each embedding over a rotation group of the cube: 1 none (CryoSiam's "
        "embedding), 4 (half turns about z, y, x), 12 (and the turns that cycle the axes), 24 (every 90° turn; "
        "12 and 24 need a cubic `patch_size`). The network runs that many times per patch "
        "([embedding.md](embedding.md#rotation-averaged-embeddings)).",
        steps=NETWORK_RUNS,
        group="model",
    )

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


def dotted_value(tree: Any, dotted: str, absent: Any = None) -> Any:
    """The value at a dotted key (``visualization.distance``) of nested dicts, or ``absent``."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return absent
        node = node[part]
    return node


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
