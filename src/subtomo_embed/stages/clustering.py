"""The clustering steps (KMeans, spectral) and what they write.

The numerical work is in ``core.cluster``. Into the output folder: ``<method>_clusters.h5`` (every
instance's cluster, the centres), per tomogram ``<stem>_clusters_<method>.h5``, the clustered
regions CSV and STAR and a label volume (``<stem>_clusters_<method>.mrc``, where the masks are
found), and RELION particles STAR files (all, and one per cluster). With
``clustering_<method>.visualization``, the figures of :mod:`.figures`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import io, layout, records, tables, volumes
from ..core.config import Config
from ..core.errors import ConfigError, InputDataError
from ..core.picks import PICK_PREFIX
from ..core.star import relion_blocks
from .context import Folders
from .figures import cluster_figures
from .merging import Merged, load_merged, plan_merged
from .provenance import keep_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clustering:
    """One clustering run's result, as its outputs are written from it."""

    method: str  # "kmeans" or "spectral"
    labels: np.ndarray  # every merged row's cluster id
    ids: np.ndarray  # the cluster ids, ascending (spectral's are 1-based)
    centers: np.ndarray  # each cluster's centre in the embeddings' space
    datasets: dict  # what <method>_clusters.h5 holds
    attrs: dict = field(default_factory=dict)  # and its attributes besides the common ones


def run_kmeans(cfg: Config, folders: Folders) -> dict[str, Path]:
    from ..core import cluster as C

    section = cfg.clustering_kmeans
    merged = _load_checked(cfg, folders, "clustering_kmeans", section.num_clusters, 0, section.visualization)
    k = section.num_clusters
    working = merged.working()
    log.info("KMeans with k=%d on %d embeddings (dim %d)", k, merged.n, working.shape[1])
    labels, centers = C.kmeans(working, k, seed=cfg.seed)
    ids = np.arange(k)
    if not merged.in_memory:  # the centres of the clusters in the embeddings' own space
        centers = C.cluster_means(merged.embeddings, labels, ids)
    log_peak_memory("KMeans")
    datasets = {"clusters": labels, "centers": centers}
    return write_cluster_outputs(cfg, folders, merged, Clustering("kmeans", labels, ids, centers, datasets))


def run_spectral(cfg: Config, folders: Folders) -> dict[str, Path]:
    from ..core import cluster as C

    sc = cfg.clustering_spectral
    merged = _load_checked(cfg, folders, "clustering_spectral", sc.num_clusters, sc.n_neighbors, sc.visualization)
    k = sc.num_clusters
    log.info(
        "spectral clustering (%s k=%d, %d neighbours) on %d embeddings",
        "at most" if sc.estimate_num_clusters else "",
        k,
        sc.n_neighbors,
        merged.n,
    )
    result = C.spectral(merged.working(), k, sc.estimate_num_clusters, n_neighbors=sc.n_neighbors, seed=cfg.seed)
    log_peak_memory("spectral clustering")
    labels = result.labels + 1  # CryoSiam's spectral ids are 1-based
    ids = np.arange(1, result.num_clusters + 1)
    centers = C.cluster_means(merged.embeddings, labels, ids)
    datasets = {"clusters": labels, "centers": centers, "eigenvalues": result.eigenvalues}
    attrs = {"estimated": bool(sc.estimate_num_clusters), "graph_components": int(result.n_components)}
    log.info("spectral: %d clusters", result.num_clusters)
    return write_cluster_outputs(cfg, folders, merged, Clustering("spectral", labels, ids, centers, datasets, attrs))


def log_peak_memory(what: str) -> None:
    from ..core.chunked import peak_memory_gb

    log.info("%s done: peak memory of this process %.2f GB", what, peak_memory_gb())


def _load_checked(cfg: Config, folders: Folders, section: str, k: int, n_neighbors: int, figures: bool) -> Merged:
    """The merged embeddings, once every check has passed: the settings, then (before anything is
    written, not even the merge) the number of instances and the output folders."""
    if k < 2:
        raise ConfigError(f"key '{section}.num_clusters' must be at least 2 to cluster (got {k})", cfg.source)
    source = plan_merged(cfg, folders)
    n = source.n
    if n < k:
        raise InputDataError(f"{n} instances cannot make {k} clusters ({section}.num_clusters)", source.about)
    if n_neighbors >= n:
        raise InputDataError(
            f"{n} instances are too few for a {n_neighbors}-neighbour graph (clustering_spectral.n_neighbors)",
            source.about,
        )
    for folder in [folders.output_dir, folders.vis_dir] if figures else [folders.output_dir]:
        io.check_writable_folder(folder, create=False)
    return load_merged(cfg, folders, source)


def write_cluster_outputs(cfg: Config, folders: Folders, merged: Merged, result: Clustering) -> dict[str, Path]:
    """Every output of a clustering run, replaced together (:func:`io.outputs_together`): a run that
    fails midway (a full disk) leaves the previous run's outputs as they were, all of them."""
    out, method = folders.output_dir, result.method
    everything: list[Path] = []
    with io.outputs_together(
        layout.replacing_journal(out, method),
        method,
        finish=lambda: remove_previous_outputs(folders, method, everything),
    ):
        written, also_written = _write_cluster_files(cfg, folders, merged, result)
        everything += [layout.particles_star(out, method), *written.values(), *also_written]
    return written


def _write_cluster_files(
    cfg: Config, folders: Folders, merged: Merged, result: Clustering
) -> tuple[dict[str, Path], list[Path]]:
    out, method, labels, ids = folders.output_dir, result.method, result.labels, result.ids
    written: dict[str, Path] = {}
    also_written: list[Path] = []  # the per-tomogram and per-cluster files (issue 13: the next run's record)
    sizes = {int(c): int((labels == c).sum()) for c in ids}
    log.info("%s cluster sizes: %s", layout.CLUSTER_METHODS[method], sizes)
    path = layout.clusters(out, method)
    io.write_h5(
        path,
        {k: np.asarray(v) for k, v in result.datasets.items()},
        {"num_clusters": int(len(ids)), "seed": int(cfg.seed), "embeddings_key": merged.key, **result.attrs},
    )
    written["clusters"] = path
    stars = []
    for i, stem in enumerate(io.progress(merged.stems, f"{method} tables")):
        pred = labels[merged.rows(i)]
        io.write_h5(layout.tomogram_clusters(out, stem, method), {"predictions": np.asarray(pred, dtype=np.int64)})
        regions = merged.regions(i)
        regions["semantic_class"] = pred
        tables.write_regions_csv(layout.clustered_regions_csv(out, stem, method), regions)
        star = clustered_star(layout.TomogramOutputs(folders.input_dir, stem).regions_star, regions, pred)
        tables.write_star(layout.clustered_regions_star(out, stem, method), star, exact=True)
        stars.append(star)
        also_written += [
            layout.tomogram_clusters(out, stem, method),
            layout.clustered_regions_csv(out, stem, method),
            layout.clustered_regions_star(out, stem, method),
        ]
    if all("rlnTomoName" in star.columns for star in stars):
        particles = pd.concat(stars, ignore_index=True)  # the rows predict wrote, in their convention
    else:
        particles = particles_table(cfg, merged.table, labels)
    classes = particles["rlnClass"].to_numpy()
    # once, not again for each cluster's file; one optics table for all of them (a group has the
    # same number and name in every file of the clustering, whichever tomograms a cluster holds)
    optics, particles = relion_blocks(tables.exact_floats(particles))
    tables.write_star(layout.particles_star(out, method), particles, optics=optics)
    for c in ids:
        one = particles[classes == c].reset_index(drop=True)
        tables.write_star(layout.cluster_particles_star(out, method, int(c)), one, optics=optics)
        also_written.append(layout.cluster_particles_star(out, method, int(c)))
    log.info("wrote %s, per-tomogram tables and per-cluster STAR files to %s", path.name, out)

    volume_ids = labels + 1 if ids.min() == 0 else labels  # background stays 0
    also_written += write_label_volumes(cfg, merged, volume_ids, out, method)
    section = getattr(cfg, f"clustering_{method}")
    if section.visualization:
        written.update(cluster_figures(cfg, folders, merged, method, labels, ids, result.centers))
    for folder in [out, folders.vis_dir] if section.visualization else [out]:
        keep_config(cfg, folder, method)
    return written, also_written


# --- issue 13, class 4: a re-run leaves exactly its own outputs ---------------------------------------------


def remove_previous_outputs(folders: Folders, method: str, written: list[Path]) -> None:
    """What the previous ``method`` run wrote and this one did not (``kmeans_cluster_5_*`` after a
    re-run with k=3) is removed (:func:`records.replace_outputs_record`), names of ours only."""
    records.replace_outputs_record(
        layout.outputs_record(folders.output_dir, method),
        written,
        [folders.output_dir, folders.vis_dir],
        lambda name: layout.is_cluster_output(name, method),
        f"the previous {method} run",
    )


def clustered_star(source: Path, regions: pd.DataFrame, classes: np.ndarray) -> pd.DataFrame:
    """A tomogram's clustered STAR: the rows of its ``predict`` STAR (``source``: every column, in
    its convention, and its optics group's columns; for picks, the picks' own rows) with ``rlnClass``
    (the writer adds RELION's ``rlnClassNumber``, in place of one the picks had); without that
    file, CryoSiam's columns from the regions table."""
    labels = regions["label"].to_numpy(np.int64)
    if source.is_file():
        star = tables.read_particles(source)  # with its optics group's columns (the pixel size), kept
        if isinstance(star, pd.DataFrame) and "rlnLabel" in star.columns and not star["rlnLabel"].duplicated().any():
            indexed = star.set_index(star["rlnLabel"].to_numpy(np.int64))
            if np.isin(labels, indexed.index.to_numpy()).all():
                # a picks file's own rlnClassNumber (an earlier RELION classification) is not this
                # clustering's: the writer writes rlnClass again as RELION's rlnClassNumber
                rows = indexed.loc[labels].reset_index(drop=True).drop(columns=["rlnClassNumber"], errors="ignore")
                return rows.assign(rlnClass=np.asarray(classes, dtype=np.int64))
        log.info("%s does not describe the embedded instances: clustered STAR made from the regions table", source.name)
    star = tables.regions_to_star_table(regions.drop(columns=["semantic_class"], errors="ignore"))
    return star.assign(rlnClass=np.asarray(classes, dtype=np.int64))


def particles_table(cfg: Config, table: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """RELION-style particles: tomogram name, coordinates (x, y, z in voxels), label, class, and the
    voxel size of each tomogram (``rlnImagePixelSize``, an optics column) where its MRC header has one."""
    tomograms = table["tomogram"].astype(str)
    particles = pd.DataFrame(
        {
            "rlnTomoName": tomograms.to_numpy(),
            "rlnMicrographName": (tomograms + cfg.file_extension).to_numpy(),
            "rlnCoordinateX": table["centroid-2"].to_numpy(np.float64),
            "rlnCoordinateY": table["centroid-1"].to_numpy(np.float64),
            "rlnCoordinateZ": table["centroid-0"].to_numpy(np.float64),
            "rlnLabel": table["label"].to_numpy(np.int64),
            "rlnArea": table["area"].to_numpy(),
            "rlnClass": np.asarray(labels, dtype=np.int64),
        }
    )
    sizes = {t: _header_voxel_size(cfg, t) for t in tomograms.unique()}
    if any(v is not None for v in sizes.values()):
        particles["rlnImagePixelSize"] = tomograms.map(sizes).to_numpy(np.float64)
    return particles


def _header_voxel_size(cfg: Config, stem: str) -> float | None:
    """The voxel size (x, Å) in the MRC header of tomogram ``stem`` in ``data_folder``, or None."""
    data_folder = cfg.optional_path("data_folder")
    path = data_folder / f"{stem}{cfg.file_extension}" if data_folder else None
    if path is None or not path.is_file():
        return None
    try:
        size = volumes.mrc_voxel_size(path)
    except InputDataError:
        return None
    return None if size is None else float(size[-1])


def write_label_volumes(cfg: Config, merged: Merged, volume_ids: np.ndarray, out: Path, method: str) -> list[Path]:
    """Per tomogram ``<stem>_clusters_<method>.mrc``: each instance's voxels carry its (1-based) cluster id.

    Not for picks: a pick's id is not a label of the mask (painting the mask by it would be wrong).
    """
    mask_folder = cfg.optional_path("instances_mask_folder")
    if mask_folder is None or not mask_folder.is_dir():
        log.info(
            "no cluster label volumes: instances_mask_folder is %s",
            "not set" if mask_folder is None else f"not a folder ({mask_folder})",
        )
        return []
    if any(str(c).startswith(PICK_PREFIX) for c in merged.table.columns):
        log.info(
            "no cluster label volumes: the embeddings come from picks, whose ids are not labels of the masks "
            "(the clustered STAR files carry each pick's class)"
        )
        return []
    data_folder = cfg.optional_path("data_folder")
    done: list[Path] = []
    all_labels = merged.table["label"].to_numpy(np.int64)
    for i, stem in enumerate(io.progress(merged.stems, f"{method} label volumes")):
        mask_path = volumes.find_mask(mask_folder, stem, cfg.file_extension, cfg.instances_suffix)
        if mask_path is None:
            log.info("no mask for %s in %s: label volume skipped", stem, mask_folder)
            continue
        mask = volumes.read_instance_mask(mask_path)
        lab, cls = all_labels[merged.rows(i)], volume_ids[merged.rows(i)]
        tomogram = data_folder / f"{stem}{cfg.file_extension}" if data_folder else None
        volumes.write_mrc(
            layout.label_volume(out, stem, method), paint_labels(mask, lab, cls), _voxel_size([mask_path, tomogram])
        )
        done.append(layout.label_volume(out, stem, method))
    log.info("wrote %d cluster label volumes", len(done))
    return done


_DENSE_TABLE_LIMIT = 2**24  # labels up to this go through a dense lookup table (at most 64 MiB)


def label_volume_dtype(top: int) -> np.dtype:
    """The smallest MRC data type that holds cluster ids 0..top exactly (MRC has no 32-bit integers)."""
    for dtype in (np.int8, np.int16, np.uint16):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.float32)  # exact up to 2^24 ids


def paint_labels(mask: np.ndarray, labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A volume of ``mask``'s shape: ``values[i]`` where ``mask == labels[i]``, 0 elsewhere.

    The table from label to value is sized by the labels present, never by the largest label
    value (a label just above 2^53 must not ask for petabytes): a dense table when every label is
    small, else a sorted lookup (``searchsorted``), one z slice at a time.
    """
    labels = np.asarray(labels, dtype=np.int64)
    dtype = label_volume_dtype(int(np.max(values, initial=0)))
    if labels.size == 0:
        return np.zeros(mask.shape, dtype=dtype)
    top = int(max(mask.max(initial=0), labels.max()))
    if top <= _DENSE_TABLE_LIMIT:
        table = np.zeros(top + 1, dtype=dtype)
        table[labels] = values
        return table[mask]
    order = np.argsort(labels, kind="stable")
    keys, ordered = labels[order], np.asarray(values)[order].astype(dtype)
    out = np.zeros(mask.shape, dtype=dtype)
    for z in range(mask.shape[0]):
        plane = mask[z].astype(np.int64, copy=False)
        at = np.minimum(np.searchsorted(keys, plane), keys.size - 1)
        hit = keys[at] == plane
        out[z][hit] = ordered[at[hit]]
    return out


def _voxel_size(candidates: list[Path | None]) -> float:
    """The voxel size of the first MRC among ``candidates`` that has one; else 1 Å."""
    for p in candidates:
        if p is not None and p.suffix.lower() in (".mrc", ".rec", ".map") and p.is_file():
            try:
                return volumes.open_mrc_volume(p)[1]
            except InputDataError:
                pass
    return 1.0
