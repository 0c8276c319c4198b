"""The sections of the config (``clustering_kmeans``, ``visualization``, ``parameters``, ...): every key with
its default, its bounds, its help text and the pipeline steps that read it.

This module and :class:`.config.Config` are the one place a key is written. ``make settings``
(:mod:`.config_contract`) generates from them nextflow_schema.json's key groups, the pipeline's
params defaults (conf/config_params.config), the keys each pipeline step is passed
(workflows/settings.nf) and the key tables of docs/config.md; a test fails when one is stale.

A key is declared with :func:`key`: ``steps`` names the pipeline processes that read it (the workflow
passes it to them as ``--set key=value``), ``when_given`` marks a key whose meaning depends on being
given at all (the pipeline then has no default for it, so that it is passed only when the user sets it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

# the orders of the rotation groups of the cube that embedding_rotations can name (core.model.cube_rotations)
ROTATION_GROUP_ORDERS = (1, 4, 12, 24)

MAX_COUNT = 2**31 - 1  # the largest size or count a key may ask for (NumPy, torch and scikit-learn take int32s)
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

# The pipeline's processes, as the settings name them (workflows/subtomo_embed.nf maps them to processes).
EXTRACT, EMBED, CENTERS, TRAIN, MERGE = "extract", "embed", "predict_centers", "train", "merge"
KMEANS, SPECTRAL, VISUALIZE = "kmeans", "spectral", "visualize"
STEPS = (EXTRACT, EMBED, CENTERS, TRAIN, MERGE, KMEANS, SPECTRAL, VISUALIZE)
FIGURES = (KMEANS, SPECTRAL, VISUALIZE)  # the steps that project and draw
NORMALIZING = (EXTRACT, CENTERS, TRAIN)  # the steps that cut and normalize patches
NETWORK_RUNS = (EMBED, CENTERS)  # the steps that run the network for embeddings
MASKS = (EXTRACT, TRAIN)  # the steps that read instance masks
PICKS = (CENTERS, TRAIN)  # the steps that read picks


# The groups of the top-level keys (nextflow_schema.json's sections and docs/config.md's tables), in order.
GROUPS = {
    "input_output": "Input and output",
    "extraction": "Extraction",
    "analysis": "Clustering and visualization",
    "model": "Model, inference and training",
}


def config_key(
    default: Any = None,
    *,
    help: str,
    steps: tuple[str, ...] = (),
    when_given: bool = False,
    group: str | None = None,
    path: Literal["file", "directory"] | None = None,
    **field: Any,
) -> Any:
    """A config key: ``Field(default, description=help, **field)`` with the steps that read it (and, for a
    top-level key, its group; for a path, whether it names a file or a directory)."""
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown pipeline steps {sorted(unknown)}")
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    extra: dict[str, JsonValue] = {
        "steps": list(dict.fromkeys(steps)),
        "when_given": when_given,
        "group": group,
        "path": path,
    }
    if "default_factory" in field:
        return Field(description=help, json_schema_extra=extra, **field)
    return Field(default, description=help, json_schema_extra=extra, **field)


def plain_name(value: str, what: str = "a file name") -> str:
    """``value`` if it is a plain file name: no folder part, not ``.``/``..``, no NUL, not empty."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError(f"must be {what} without a folder part")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class KMeansConfig(_Section):
    """KMeans clustering of the merged embeddings (docs/analysis.md)."""

    num_clusters: int = config_key(6, help="k for KMeans.", steps=(KMEANS,), ge=1, le=MAX_COUNT)
    visualization: bool = config_key(True, help="Draw the clusters (figures and galleries).", steps=(KMEANS,))


class SpectralConfig(_Section):
    """Spectral clustering on a k-nearest-neighbour graph of the merged embeddings (docs/analysis.md)."""

    num_clusters: int = config_key(
        6, help="k for spectral clustering (the upper bound when estimating).", steps=(SPECTRAL,), ge=1, le=MAX_COUNT
    )
    estimate_num_clusters: bool = config_key(False, help="Pick k by the largest eigengap.", steps=(SPECTRAL,))
    visualization: bool = config_key(True, help="Draw the clusters (figures and galleries).", steps=(SPECTRAL,))
    n_neighbors: int = config_key(
        10, help="*Extension*: neighbours of the k-NN affinity graph.", steps=(SPECTRAL,), ge=2, le=MAX_COUNT
    )


class VisualizationConfig(_Section):
    """Projections, figures and the explorer (docs/analysis.md)."""

    prediction_folder: str | None = config_key(
        help="Folder of figures and projections (null: `<prediction_folder>/vis`). The pipeline publishes there."
    )
    distance: Literal[DISTANCES] = config_key(  # type: ignore[valid-type]
        "euclidean",
        help="Metric for UMAP and the distance maps: one of those both UMAP and scikit-learn compute on real "
        "vectors without further parameters.",
        steps=FIGURES,
    )
    pca_components: int | None = config_key(
        help="Project with PCA to this many components instead of UMAP.", steps=FIGURES, ge=1, le=MAX_COUNT
    )
    visualization_suffix: str = config_key(
        "instance_regions.csv", help="The per-tomogram table joined to the projections.", steps=FIGURES
    )
    visualize_umap: bool = config_key(True, help="Compute the 2D UMAP.", steps=FIGURES)
    umap_3d: bool = config_key(False, help="Also a 3D UMAP.", steps=FIGURES, alias="3d_umap")
    max_plot_points: int = config_key(
        20000,
        help="*Extension*: plots subsample to this many points (never the clustering).",
        steps=FIGURES,
        ge=100,
        le=MAX_COUNT,
    )
    explorer_thumbnails: int = config_key(
        20000,
        help="*Extension*: instances (a stratified sample by tomogram and cluster) with a particle thumbnail in "
        "`embeddings_explorer.html`; the others show text only on hover. 0: none.",
        steps=FIGURES,
        ge=0,
        le=MAX_COUNT,
    )
    explorer_max_points: int = config_key(
        200_000,
        help="*Extension*: instances drawn in `embeddings_explorer.html` (a stratified sample by tomogram and "
        "cluster above it; 100 to 200,000, the page's bound). Thin a large set (e.g. 30000) where the page is slow "
        "to zoom in a browser without GPU WebGL.",
        steps=FIGURES,
        ge=100,
        le=200_000,
    )

    @field_validator("visualization_suffix")
    @classmethod
    def _plain_suffix(cls, v: str) -> str:
        return plain_name(v, "the end of a file name")


class ScaleConfig(_Section):
    """Extension: how the analysis steps handle more embeddings than memory (docs/analysis.md, "At scale")."""

    memory_gb: float = config_key(
        4.0,
        help="Merged embeddings larger than this (N × dim × 4 bytes) are never read whole: the analysis steps "
        "read them in chunks and cluster and project their first `scale.working_dim` principal components. "
        "0: always; `.inf`: never.",
        steps=FIGURES,
        ge=0,
    )
    working_dim: int = config_key(
        64,
        help="Out of core: principal components (of the embeddings; of their unit-length rows for "
        "`visualization.distance: cosine`) that KMeans, the spectral graph and UMAP use. Centres, galleries and "
        "distance maps still use the full embeddings.",
        steps=FIGURES,
        ge=2,
        le=MAX_COUNT,
    )
    projection_sample: int = config_key(
        100_000,
        help="UMAP is fitted on at most this many embeddings (a seeded sample); the others are placed at the "
        "distance-weighted mean of their 10 nearest fitted neighbours.",
        steps=FIGURES,
        ge=100,
        le=MAX_COUNT,
    )


class DataConfig(_Section):
    """What the network is fed (docs/model.md, "Input contract")."""

    patch_size: list[int] = config_key(
        help="Patch fed to the network, [z, y, x]: boxes are zero-padded (centred) or centre-cropped to it, "
        "never resized.",
        steps=(*NORMALIZING, *FIGURES),
        default_factory=lambda: [64, 64, 64],
    )
    patch_overlap: Any = config_key(help="Accepted for compatibility; unused by the embedding step.")
    min: float = config_key(
        0.0, help="Intensities are scaled by `clip((x - min)/(max - min), 0, 1)` ...", steps=NORMALIZING
    )
    max: float = config_key(1.0, help="... with this ceiling (greater than `min`) ...", steps=NORMALIZING)
    mean: float = config_key(0.0, help="... then standardized by `(x - mean)/std`.", steps=NORMALIZING)
    std: float = config_key(1.0, help="The standardization's std (positive).", steps=NORMALIZING)

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


_TRAIN_ARCHITECTURE = "Architecture used by `train`; `predict` always takes the architecture from the checkpoint."


class NetworkConfig(_Section):
    """Network shape. ``predict`` takes the architecture from the checkpoint; ``train`` uses all of it. These
    defaults are also the ones a checkpoint's stored config falls back to for a key it leaves out."""

    spatial_dims: int = config_key(3, help="Network input dimensions.")
    in_channels: int = config_key(1, help="Network input channels.")
    dim: int = config_key(
        1024,
        help="Embedding dimension; when set, it must equal the checkpoint's (else a config error naming both); "
        "`train` builds a network of this size.",
        steps=NETWORK_RUNS,
        when_given=True,
        ge=1,
        le=MAX_COUNT,
    )
    block_type: Literal["basic", "bottleneck"] = config_key("bottleneck", help=_TRAIN_ARCHITECTURE)
    num_layers: list[int] = config_key(
        help="Blocks per ResNet stage (four positive integers). " + _TRAIN_ARCHITECTURE,
        default_factory=lambda: [1, 1, 1, 1],
    )
    num_filters: list[int] = config_key(
        help="Filters per ResNet stage (four positive integers). " + _TRAIN_ARCHITECTURE,
        default_factory=lambda: [64, 128, 256, 512],
    )
    no_max_pool: bool = config_key(True, help=_TRAIN_ARCHITECTURE)
    pred_dim: int = config_key(512, help="The predictor's hidden size. " + _TRAIN_ARCHITECTURE, ge=1, le=MAX_COUNT)
    conv1_t_size: int = config_key(7, help="The stem's kernel size. " + _TRAIN_ARCHITECTURE, ge=1, le=MAX_COUNT)
    conv1_t_stride: int = config_key(1, help="The stem's stride. " + _TRAIN_ARCHITECTURE, ge=1, le=MAX_COUNT)

    @field_validator("num_layers", "num_filters")
    @classmethod
    def _four_positive(cls, v: list[int]) -> list[int]:
        if len(v) != 4 or any(not 1 <= n <= MAX_COUNT for n in v):
            raise ValueError("must be four positive integers (one per ResNet stage)")
        return v


class ParametersConfig(_Section):
    """Data and network parameters (CryoSiam's ``parameters``)."""

    gpu_devices: Any = config_key(
        0,
        help="GPU index to use (≥ 0; the first of a list); null = CPU. Without CUDA the CPU is used with a "
        "warning; `--device` overrides. The pipeline gives each GPU task the GPU its scheduler assigned.",
    )
    data: DataConfig = config_key(help="What the network is fed.", default_factory=DataConfig)
    network: NetworkConfig = config_key(help="The network's shape.", default_factory=NetworkConfig)

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
    """The batch size of embedding and the settings of `train` (and of the pipeline's `--train true`)."""

    batch_size: int = config_key(
        10,
        help="Patches per forward pass (embedding) and pairs per step (`train`). The pipeline passes it to EMBED "
        "and PREDICT_CENTERS outside their task hash and halves it on a GPU out-of-memory retry.",
        steps=(TRAIN,),
        ge=1,
        le=MAX_COUNT,
    )
    learning_rate: float = config_key(
        0.0003,
        help="*Extension*: `train` (AdamW, warm-up then cosine decay to 0 at `max_steps`). The default is "
        "fine-tuning's (`--from-data`, with `contrast_weight` 0.5 and `rehearsal_fraction` 0.5: "
        "[training.md](training.md#does-fine-tuning-help-benchmarksbench_finetunepy)); the demo model was "
        "trained from scratch with 0.001.",
        steps=(TRAIN,),
        gt=0,
    )
    max_steps: int = config_key(1000, help="*Extension*: `train`'s steps.", steps=(TRAIN,), ge=1, le=MAX_COUNT)
    assembly_fraction: float = config_key(
        0.5,
        help="*Extension*: simulated `train` (and fine-tuning's rehearsed pairs): the share of simulated pairs "
        "that are sub-unit assemblies instead of envelope shapes, as the demo model was trained "
        "([training.md](training.md#simulated-training)).",
        steps=(TRAIN,),
        ge=0.0,
        le=1.0,
    )
    family_set_fraction: float = config_key(
        0.0,
        help="*Extension*: simulated `train` (and fine-tuning's rehearsed pairs): the share of assembly pairs drawn "
        "from a class set of one family (rings of 3-8 sub-units, or double rings of 4-6 a ring) at one outer "
        "diameter and one mass, whose classes differ only in order "
        "([training.md](training.md#order-within-one-envelope)). 0: every class set mixes families.",
        steps=(TRAIN,),
        ge=0.0,
        le=1.0,
    )
    contrast_weight: float = config_key(
        0.5,
        help="*Extension*: `train`: the weight of a supervised-contrastive term (SupCon) added to SimSiam's loss. "
        "The batch's views of one class are each other's positives, all its other views negatives: simulated "
        "pairs are labelled by the simulator, real particles (`--from-data`) each by itself (SimCLR's NT-Xent). "
        "0: SimSiam alone, as CryoSiam trains ([training.md](training.md#the-class-terms)); the default 0.5 is "
        "fine-tuning's.",
        steps=(TRAIN,),
        ge=0.0,
        le=100.0,
    )
    contrast_temperature: float = config_key(
        0.2,
        help="*Extension*: `train`: the supervised-contrastive term's temperature.",
        steps=(TRAIN,),
        gt=0.0,
        le=10.0,
    )
    rehearsal_fraction: float = config_key(
        0.5,
        help="*Extension*: `train --from-data`: the share of each batch that is the simulator's pairs (envelope "
        "shapes, and assemblies at `assembly_fraction`) instead of the user's particles, so that fine-tuning "
        "keeps what the starting model learned ([training.md](training.md#fine-tuning-on-your-own-tomograms)). "
        "0: the user's particles only.",
        steps=(TRAIN,),
        ge=0.0,
        le=0.9,
    )
    finetuned_share: float = config_key(
        0.5,
        help="*Extension*: `train --from-data --export` (and the pipeline's `finetuned.ckpt`): the fine-tuned "
        "weights' share of the exported checkpoint, the rest the starting checkpoint's (weight-space averaging, "
        "WiSE-FT), which kept fine-tuning from lowering what the starting model separated "
        "([training.md](training.md#averaging-with-the-starting-weights)). 1: the fine-tuned weights as trained.",
        steps=(TRAIN,),
        ge=0.0,
        le=1.0,
    )
    class_weight: float = config_key(
        0.0,
        help="*Extension*: simulated `train`: the weight of the cross-entropy of a linear classifier of the "
        "simulator's classes on the projector output, added to SimSiam's loss; the classifier is kept in the "
        "training checkpoint beside CryoSiam's network. Not for `--from-data` (a config error).",
        ge=0.0,
        le=100.0,
    )


class InstancesConfig(_Section):
    """CryoSiam's optional instance-step section: selects ``<stem>_instance_preds_min-A_max-B.h5``."""

    min_center_distance: Any = config_key(help="A number: part of the instance files' names (`_min-A`).")
    max_center_distance: Any = config_key(help="A number: part of the instance files' names (`_max-B`).")

    @field_validator("min_center_distance", "max_center_distance")
    @classmethod
    def _number(cls, v):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError("must be a number or null")
        return v


class CentersConfig(_Section):
    """Extension: how ``predict-centers`` reads picks: every coordinate conversion, explicit (docs/picks.md)."""

    units: Literal["auto", "voxels", "angstrom"] = config_key(
        "auto", help="The picks' coordinate units; auto: by the file's convention.", steps=PICKS
    )
    origin: Literal["auto", "corner", "centered"] = config_key(
        "auto", help="The picks' origin (RELION 5: centred); auto: by the file's convention.", steps=PICKS
    )
    voxel_size: Any = config_key(help="Å per tomogram voxel (number or [z, y, x]); null: each MRC header.", steps=PICKS)
    picks_voxel_size: Any = config_key(
        help="Å per voxel of voxel-unit picks (another binning); null: the tomogram's.", steps=PICKS
    )
    tomogram_column: str | None = config_key(
        help="The column naming each pick's tomogram; null: rlnTomoName, rlnMicrographName, tomo, tomogram, "
        "tomo_name, run_name.",
        steps=PICKS,
    )
    mask_radius: float | None = config_key(
        help="Voxels: zero everything farther from the pick (a sphere mask); null: none.", steps=PICKS, gt=0
    )
    border: Literal["pad", "skip"] = config_key(
        "pad", help="pad: boxes crossing the tomogram's edge are zero-padded; skip: dropped.", steps=PICKS
    )

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
