"""Every file name the package reads from or writes into its folders, in one place.

The per-tomogram names are CryoSiam's (``<stem>_embeds.h5``, ``<stem>_instance_labels.h5``,
``<stem>_instance_regions.csv`` and ``.star``), so its outputs and ours can be mixed in a folder.
A name is built here and nowhere else: a stage asks this module for a path, never formats one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import names

EMBEDS_SUFFIX = "_embeds.h5"
LABELS_SUFFIX = "_instance_labels.h5"
REGIONS_SUFFIX = "_instance_regions.csv"
REGIONS_STAR_SUFFIX = "_instance_regions.star"
PATCHES_SUFFIX = "_patches.h5"

MERGED_NAME = "embeddings.h5"
MERGED_TABLE_NAME = "embeddings_table.csv"
EXPLORER_NAME = "embeddings_explorer.html"
LOG_NAME = "subtomo-embed.log"  # every command's log in log_dir
ALL_TOMOGRAMS = "all_tomograms"  # the projections of every tomogram: all_tomograms_<umap|pca>[_3d].<csv|png>

CLUSTER_METHODS = {"kmeans": "KMeans", "spectral": "Spectral"}  # file name -> display name


def safe_stem(name: object, source: Path | str | None = None) -> str:
    """``name`` as text if it is a tomogram name by the one rule (:func:`.names.check_name`: a plain
    file stem, and nothing that breaks a table, a STAR file, a label or our own output names); else
    an :class:`InputDataError` naming ``source``.

    Every name read from a file (a merged file's ``tomograms``, a patches file's ``stem``) or given
    by a user that becomes part of a path passes here, and every path built here from a stem checks
    it again, so no input can make a command write (or read) outside the folders it was given.
    """
    return names.check_name(name, source)


# --------------------------------------------------------------------------------------------
# per tomogram


@dataclass(frozen=True)
class TomogramOutputs:
    """The four files ``predict``, ``embed`` and ``predict-centers`` write for one tomogram."""

    folder: Path
    stem: str

    def __post_init__(self) -> None:
        safe_stem(self.stem, self.folder)

    @property
    def labels(self) -> Path:
        return self.folder / f"{self.stem}{LABELS_SUFFIX}"

    @property
    def regions_csv(self) -> Path:
        return self.folder / f"{self.stem}{REGIONS_SUFFIX}"

    @property
    def regions_star(self) -> Path:
        return self.folder / f"{self.stem}{REGIONS_STAR_SUFFIX}"

    @property
    def embeds(self) -> Path:
        return self.folder / f"{self.stem}{EMBEDS_SUFFIX}"

    def in_write_order(self) -> list[Path]:
        """``_embeds.h5`` last: it marks the tomogram complete."""
        return [self.labels, self.regions_csv, self.regions_star, self.embeds]


def patches_file(folder: Path, stem: str) -> Path:
    return folder / f"{safe_stem(stem, folder)}{PATCHES_SUFFIX}"


def cryosiam_regions(mask_folder: Path, stem: str, instances_suffix: str) -> Path:
    """CryoSiam's regions table beside an instance mask."""
    return mask_folder / f"{stem}_instance_regions{instances_suffix}.csv"


def instance_mask(mask_folder: Path, stem: str, instances_suffix: str = "") -> Path:
    """CryoSiam's instance mask, ``<stem>_instance_preds<instances_suffix>.h5``."""
    return mask_folder / f"{stem}_instance_preds{instances_suffix}.h5"


def mask_candidates(mask_folder: Path, stem: str, file_extension: str, instances_suffix: str = "") -> list[Path]:
    """Where a tomogram's instance mask may be, in order of preference (the workflow's ``maskOf``
    follows the same order; tests/pipeline/test_head_node.py compares the two)."""
    return [
        instance_mask(mask_folder, stem, instances_suffix),
        mask_folder / f"{stem}{file_extension}",
        mask_folder / f"{stem}.mrc",
        mask_folder / f"{stem}.rec",
    ]


def stem_of(path: Path, suffix: str) -> str | None:
    """``path``'s stem if its name ends with ``suffix`` (``TS_01`` of ``TS_01_embeds.h5``), else None."""
    name = path.name
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def log_file(log_dir: Path) -> Path:
    return log_dir / LOG_NAME


def config_record(folder: Path, step: str) -> Path:
    """``<step>_config.yaml``: the config a step made the folder's outputs with."""
    return Path(folder) / f"{step}_config.yaml"


# --------------------------------------------------------------------------------------------
# merged embeddings and clustering


def merged(folder: Path) -> Path:
    return folder / MERGED_NAME


def merged_table(folder: Path) -> Path:
    return folder / MERGED_TABLE_NAME


def _of_method(pattern: str) -> Callable[[Path, str], Path]:
    """The path ``pattern`` names (``{method}`` filled in) in a folder, for a clustering method."""

    def path(folder: Path, method: str) -> Path:
        return folder / pattern.format(method=method)

    return path


def _of_tomogram(pattern: str) -> Callable[[Path, str, str], Path]:
    """The path ``pattern`` names (``{stem}``, checked, and ``{method}``) in a folder."""

    def path(folder: Path, stem: str, method: str) -> Path:
        return folder / pattern.format(stem=safe_stem(stem, folder), method=method)

    return path


# every instance's cluster, the centres (and spectral's eigenvalues)
clusters = _of_method("{method}_clusters.h5")
particles_star = _of_method("{method}_particles.star")
# the files the last <method> run wrote (the next run removes those it no longer writes)
outputs_record = _of_method(".{method}_outputs.json")
# there only while a <method> run puts its outputs in place
replacing_journal = _of_method(".{method}_replacing.json")

tomogram_clusters = _of_tomogram("{stem}_clusters_{method}.h5")
clustered_regions_csv = _of_tomogram("{stem}_instance_regions_{method}_clustered.csv")
clustered_regions_star = _of_tomogram("{stem}_instance_regions_{method}_clustered.star")
label_volume = _of_tomogram("{stem}_clusters_{method}.mrc")  # the instances painted with their cluster ids


def cluster_particles_star(folder: Path, method: str, cluster: int) -> Path:
    return folder / f"{method}_cluster_{cluster}_particles.star"


def is_visualize_output(name: str) -> bool:
    """Whether ``name`` is a file name ``visualize`` writes into the visualization folder."""
    patterns = (r".+_(umap|pca)(_3d)?\.(csv|png)", r"distance_map_by_\w+\.png", re.escape(EXPLORER_NAME))
    return any(re.fullmatch(p, name) for p in patterns)


def is_cluster_output(name: str, method: str) -> bool:
    """Whether ``name`` is a file name a ``<method>`` clustering run writes (in either folder)."""
    m = re.escape(method)
    patterns = (
        rf"{m}_clusters\.h5",
        rf".+_clusters_{m}\.(h5|mrc)",
        rf".+_instance_regions_{m}_clustered\.(csv|star)",
        rf"{m}_particles\.star",
        rf"{m}_cluster_\d+_(particles\.star|gallery\.png)",
        rf"{m}_clusters_\w+\.(csv|png)",
        rf"{m}_distance_map\.png",
    )
    return any(re.fullmatch(p, name) for p in patterns)


# --------------------------------------------------------------------------------------------
# figures and coordinates (the visualization folder)


def default_vis(output_dir: Path) -> Path:
    """The visualization folder when none is configured: ``<output-dir>/vis``."""
    return output_dir / "vis"


def projection_cache(vis: Path, projection: str, dims: int) -> Path:
    return vis / f".projection_{projection}_{dims}d.h5"


def _dims_tag(dims: int) -> str:
    return "" if dims == 2 else f"_{dims}d"


def all_tomograms(vis: Path, projection: str, dims: int, extension: str) -> Path:
    """``all_tomograms_<umap|pca>[_3d].<csv|png>``."""
    return vis / f"{ALL_TOMOGRAMS}_{projection}{_dims_tag(dims)}.{extension}"


def all_tomograms_tables(vis: Path) -> dict[str, Path]:
    """The coordinates tables :func:`all_tomograms` names in ``vis``, by projection and dimensions
    (``umap``, ``umap_3d``, ``pca``, ``pca_3d``), in the order of their names."""
    prefix = f"{ALL_TOMOGRAMS}_"
    found = sorted(vis.glob(f"{prefix}*.csv")) if vis.is_dir() else []
    return {p.stem[len(prefix) :]: p for p in found}


def tomogram_projection(vis: Path, stem: str, projection: str, dims: int, extension: str) -> Path:
    return vis / f"{safe_stem(stem, vis)}_{projection}{_dims_tag(dims)}.{extension}"


def explorer(vis: Path) -> Path:
    """The interactive page of the embeddings (``visualize``)."""
    return vis / EXPLORER_NAME


def distance_map(vis: Path, ordered_by: str) -> Path:
    return vis / f"distance_map_by_{ordered_by}.png"


def cluster_projection(vis: Path, method: str, projection: str, extension: str) -> Path:
    return vis / f"{method}_clusters_{projection}.{extension}"


def cluster_distance_map(vis: Path, method: str) -> Path:
    return vis / f"{method}_distance_map.png"


def cluster_gallery(vis: Path, method: str, cluster: int) -> Path:
    return vis / f"{method}_cluster_{cluster}_gallery.png"
