"""The YAML config of CryoSiam's subtomogram-embedding step, validated once.

Every key of the documented config (``docs/config.md``) is accepted with its documented
meaning; an unknown key or a value of the wrong type is a :class:`ConfigError` naming the key
and the file. Relative paths resolve against the directory the command runs in (as CryoSiam
and Nextflow do). The same file works as ``--config_file`` for the CLI and as
``-params-file`` for Nextflow.

Overrides (``--set key.sub=value``) are applied to the raw YAML before validation, so they
obey exactly the same rules as the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class KMeansConfig(_Section):
    num_clusters: int = Field(6, ge=1)
    visualization: bool = True


class SpectralConfig(_Section):
    num_clusters: int = Field(6, ge=1)
    estimate_num_clusters: bool = False
    visualization: bool = True
    n_neighbors: int = Field(10, ge=2)  # extension: neighbours of the affinity graph


class VisualizationConfig(_Section):
    prediction_folder: str | None = None
    distance: str = "euclidean"
    pca_components: int | None = Field(None, ge=1)
    visualization_suffix: str = "instance_regions.csv"
    visualize_umap: bool = True
    umap_3d: bool = Field(False, alias="3d_umap")
    max_plot_points: int = Field(20000, ge=100)  # extension: subsample for plots only
    explorer_thumbnails: int = Field(20000, ge=0)
    """Extension: at most this many instances (a stratified sample) get a particle thumbnail in
    ``embeddings_explorer.html``; the others show text only on hover. 0: no thumbnails."""


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
        if len(v) != 3 or any(int(s) < 1 for s in v):
            raise ValueError(f"must be three positive integers [z, y, x], got {v}")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> "DataConfig":
        if not self.max > self.min:
            raise ValueError(f"max ({self.max}) must be greater than min ({self.min})")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class NetworkConfig(_Section):
    """Network shape. ``predict`` takes the architecture from the checkpoint; ``train`` uses all of it."""

    spatial_dims: int = 3
    in_channels: int = 1
    dim: int = Field(1024, ge=1)
    block_type: Literal["basic", "bottleneck"] = "bottleneck"
    num_layers: list[int] = Field(default_factory=lambda: [1, 1, 1, 1])
    num_filters: list[int] = Field(default_factory=lambda: [64, 128, 256, 512])
    no_max_pool: bool = True
    pred_dim: int = Field(512, ge=1)
    conv1_t_size: int = Field(7, ge=1)
    conv1_t_stride: int = Field(1, ge=1)


class ParametersConfig(_Section):
    gpu_devices: int | list[int] | None = 0
    data: DataConfig = Field(default_factory=DataConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)


class HyperParametersConfig(_Section):
    batch_size: int = Field(10, ge=1)
    # extensions used by `train`
    learning_rate: float = Field(0.001, gt=0)
    max_steps: int = Field(1000, ge=1)


class InstancesConfig(_Section):
    """CryoSiam's optional instance-step section: selects ``<stem>_instance_preds_min-A_max-B.h5``."""

    min_center_distance: Any = None
    max_center_distance: Any = None


class CentersConfig(_Section):
    """Extension: how ``predict-centers`` reads picks (docs/centers.md)."""

    units: Literal["auto", "voxels", "angstrom"] = "auto"
    origin: Literal["auto", "corner", "centered"] = "auto"
    voxel_size: float | list[float] | None = None  # Å per tomogram voxel (number or [z, y, x]); null: MRC header
    picks_voxel_size: float | list[float] | None = None  # Å per voxel of voxel-unit picks; null: the tomogram's
    tomogram_column: str | None = None  # the column naming each pick's tomogram; null: rlnTomoName, ...
    mask_radius: float | None = Field(None, gt=0)  # voxels; null: no sphere mask
    border: Literal["pad", "skip"] = "pad"


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

    min_particle_size: int | None = Field(None, ge=0)
    max_particle_size: int | None = Field(None, ge=0)
    masking_type: Literal[0, 1, 2] = 1
    expand_labels: int = Field(0, ge=0)

    instances: InstancesConfig | None = None

    # CryoSiam's centres-based prediction (simsiam_embeddings_from_centers_predict)
    centers_file: str | None = None
    centers_patch_size: int | None = Field(None, ge=1)
    centers: CentersConfig = Field(default_factory=CentersConfig)

    clustering_kmeans: KMeansConfig = Field(default_factory=KMeansConfig)
    clustering_spectral: SpectralConfig = Field(default_factory=SpectralConfig)
    visualization: VisualizationConfig = Field(default_factory=VisualizationConfig)
    parameters: ParametersConfig = Field(default_factory=ParametersConfig)
    hyper_parameters: HyperParametersConfig = Field(default_factory=HyperParametersConfig)

    # extensions (documented in docs/config.md)
    seed: int = 0
    skip_missing_masks: bool = False
    mixed_precision: bool = False

    # where the config came from, for error messages (not a YAML key)
    source: str = Field("<defaults>", exclude=True)

    @field_validator("file_extension")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        return v if v.startswith(".") else "." + v

    # --- helpers -------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        """The resolved path of a top-level path key, or a ConfigError if it is not set."""
        value = getattr(self, key)
        if value is None or value == "":
            raise ConfigError(f"key '{key}' must be set for this command", self.source)
        return Path(os.path.expanduser(value)).absolute()

    def optional_path(self, key: str) -> Path | None:
        value = getattr(self, key)
        return None if value in (None, "") else Path(os.path.expanduser(value)).absolute()

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


def _set_dotted(raw: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section", source)
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` → (``key.sub``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        elif e["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            got = e.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            parts.append(f"key '{key}': {e['msg']}{got_text}")
    return "; ".join(parts)


def config_from_dict(raw: dict | None, source: str = "<defaults>", overrides: list[str] | None = None) -> Config:
    raw = dict(raw or {})
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, source)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err), source) from None
    cfg.source = source
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read and validate a config file (or the defaults when ``path`` is None)."""
    if path is None:
        return config_from_dict({}, "<defaults>", overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file does not exist", path)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file: {err}", path) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", path) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping of keys to values", path)
    return config_from_dict(raw, str(path), overrides)


def dump_config(cfg: Config) -> str:
    """The config as YAML with CryoSiam's key names."""
    return yaml.safe_dump(cfg.model_dump(by_alias=True), sort_keys=False)
