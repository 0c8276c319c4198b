"""Figures shared by the analysis steps: the cached projection of every embedding, saving a figure,
and the clustering steps' own figures (projection by cluster, distance map, galleries).

The drawing is in ``core.visualize``; this module decides what to draw and where it goes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import io, layout, tables, volumes
from ..core.config import Config
from ..core.errors import InputDataError, SubtomoError
from ..core.progress import logged
from .context import Folders
from .merging import Merged

log = logging.getLogger(__name__)

AVERAGE_SIZE = 64  # instances per cluster averaged in its gallery: those nearest its centre
MEMBERS_SHOWN = 4  # of them shown beside the average


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    return path


def projection_name(cfg: Config) -> str | None:
    """``pca`` with ``pca_components``, else ``umap`` unless ``visualize_umap`` is off (None)."""
    v = cfg.visualization
    if v.pca_components is not None:
        return "pca"
    return "umap" if v.visualize_umap else None


def axis_name(projection: str) -> str:
    return "UMAP" if projection == "umap" else "PC"


def log_area(table: pd.DataFrame) -> np.ndarray:
    area = table["area"].to_numpy(np.float64)
    return np.log2(np.clip(area, 1, None))


def shown(drawn: int, n: int) -> str:
    """How many instances a figure shows."""
    return f"{drawn} of {n} instances" if drawn < n else f"{n} instances"


# --------------------------------------------------------------------------------------------
# the projection of every embedding: one per merged set and settings, computed once, cached beside
# the merge, used by visualize, kmeans, spectral and the explorer

PROJECTIONS = ("umap", "pca")  # the closed set of a cache's ``method`` (it becomes part of file names)


def projection_rows(cfg: Config, merged: Merged) -> tuple[np.ndarray | Any, str]:
    """What the projections of ``merged`` are made of, and the metric: the embeddings; out of core
    (UMAP) their working principal components, Euclidean (of unit rows for ``distance: cosine``)."""
    v = cfg.visualization
    if merged.in_memory or v.pca_components is not None:  # PCA streams over the rows themselves
        return merged.embeddings, v.distance
    if v.distance not in ("euclidean", "cosine"):
        log.warning("out of core, UMAP uses Euclidean distances of principal components, not %s", v.distance)
    return merged.working(unit_rows=v.distance == "cosine"), "euclidean"


def project_rows(cfg: Config, merged: Merged, dims: int) -> tuple[np.ndarray, str]:
    """Coordinates (UMAP or PCA, as configured) of every embedding, and the method."""
    from ..core import visualize as V

    x, metric = projection_rows(cfg, merged)
    v = cfg.visualization
    return V.project(x, dims, metric, v.pca_components, seed=cfg.seed, fit_sample=cfg.scale.projection_sample)


def _projection_cache(cfg: Config, merged: Merged, dims: int) -> tuple[Path, str]:
    """``.projection_<method>_<dims>d.h5`` beside the merged embeddings, and the key of these settings."""
    v = cfg.visualization
    key = io.fingerprint(
        [],
        embeddings=merged.key,
        dims=dims,
        metric=v.distance,
        pca=v.pca_components,
        seed=cfg.seed,
        sample=cfg.scale.projection_sample if merged.n > cfg.scale.projection_sample else None,
        working=None if merged.in_memory else cfg.scale.working_dim,
    )
    return layout.projection_cache(merged.path.parent, projection_name(cfg) or "umap", dims), key


def cached_projection(cfg: Config, merged: Merged, dims: int = 2) -> tuple[np.ndarray, str] | None:
    """The projection that :func:`global_projection` made for these embeddings and settings, if any.
    The cache is untrusted input: a method outside :data:`PROJECTIONS`, another shape or a
    non-finite coordinate makes it no cache (it is recomputed)."""
    cache, key = _projection_cache(cfg, merged, dims)
    if not cache.is_file() or cache.is_symlink():
        return None
    try:
        if io.read_h5_attr(cache, "key") != key:
            return None
        method = io.read_h5_attr(cache, "method")
        coords = io.read_h5_dataset(cache, "coords")
    except InputDataError as err:
        log.warning("projection cache not used: %s", err)
        return None
    if method not in PROJECTIONS or coords.shape != (merged.n, dims) or not np.isfinite(coords).all():
        log.warning("projection cache %s is malformed (method %r, shape %s): recomputed", cache, method, coords.shape)
        return None
    return coords.astype(np.float64), method


def global_projection(cfg: Config, folders: Folders, merged: Merged, dims: int = 2) -> tuple[np.ndarray, str]:
    """Coordinates of every embedding (UMAP or PCA) and the method, cached beside the merge."""
    cached = cached_projection(cfg, merged, dims)
    if cached is not None:
        log.info("reusing the %dD projection of %s", dims, merged.path.name)
        return cached
    from ..core.chunked import peak_memory_gb

    start = time.monotonic()
    log.info("projecting %d embeddings to %dD (%s)", merged.n, dims, projection_name(cfg) or "umap")
    coords, method = project_rows(cfg, merged, dims)
    log.info("projected in %.1f s (peak memory %.2f GB)", time.monotonic() - start, peak_memory_gb())
    cache, key = _projection_cache(cfg, merged, dims)
    try:
        io.write_h5(cache, {"coords": coords}, {"key": key, "method": method})
    except (OSError, SubtomoError) as err:  # a read-only merge folder: the projection is made again next time
        log.info("projection not cached beside %s (%s)", merged.path, err)
    return coords, method


# --------------------------------------------------------------------------------------------
# the clustering steps' figures


def cluster_figures(
    cfg: Config, folders: Folders, merged: Merged, method: str, labels: np.ndarray, ids: np.ndarray, centers: np.ndarray
) -> dict[str, Path]:
    """The clustering step's own figures: projection coloured by cluster, distance map, galleries."""
    from ..core import visualize as V

    vis = folders.vis_dir
    v = cfg.visualization
    written: dict[str, Path] = {}
    name = layout.CLUSTER_METHODS[method]
    counts = {int(c): int((labels == c).sum()) for c in ids}
    draw = V.plot_subsample(merged.n, v.max_plot_points, cfg.seed)
    coords, proj = global_projection(cfg, folders, merged)  # the one map of these embeddings
    table = merged.table
    csv = table[["tomogram", "label", "row"]].copy()
    csv["x"], csv["y"] = coords[:, 0], coords[:, 1]
    csv["cluster"] = labels
    written["coords"] = layout.cluster_projection(vis, method, proj, "csv")
    tables.write_regions_csv(written["coords"], csv)

    panels = [
        V.Panel(labels[draw], f"{name} clusters", "cluster", counts=counts),
        V.Panel(table["tomogram"].to_numpy()[draw], "tomogram", "tomogram"),
    ]
    title = f"{name} clustering, k={len(ids)} ({shown(len(draw), merged.n)})"
    fig = V.projection_figure(coords[draw], panels, title, axis_name(proj))
    written["projection"] = save_figure(fig, layout.cluster_projection(vis, method, proj, "png"))

    dist, _, groups = V.distance_map(merged.embeddings, labels, v.distance, seed=cfg.seed)
    fig = V.distance_map_figure(
        dist, groups, f"Pairwise distances ordered by {name} cluster", v.distance, f"{name} cluster"
    )
    written["distance_map"] = save_figure(fig, layout.cluster_distance_map(vis, method))
    written.update(cluster_galleries(cfg, folders, merged, method, labels, ids, centers))
    log.info("wrote %s figures to %s", name, vis)
    return written


def cluster_galleries(
    cfg: Config, folders: Folders, merged: Merged, method: str, labels: np.ndarray, ids: np.ndarray, centers: np.ndarray
) -> dict[str, Path]:
    """Per cluster, the average of the (up to :data:`AVERAGE_SIZE`) instances nearest its centre,
    aligned by centroid, as xy/xz/yz slab projections with a scale bar in nm, and
    :data:`MEMBERS_SHOWN` of them beside it (:mod:`core.galleries`)."""
    from ..core import cluster as C
    from ..core import galleries as G

    data_folder = cfg.optional_path("data_folder")
    if data_folder is None or not data_folder.is_dir():
        log.info(
            "no cluster galleries: data_folder is %s",
            "not set" if data_folder is None else f"not a folder ({data_folder})",
        )
        return {}
    nearest = C.nearest_to_centres(merged.embeddings, labels, ids, centers, AVERAGE_SIZE)
    size = tuple(int(s) for s in cfg.parameters.data.patch_size)
    loaded: dict[str, tuple[np.ndarray, float | None] | None] = {}
    written = {}
    for c in logged(ids, f"{layout.CLUSTER_METHODS[method]} cluster galleries", log):
        boxes, titles, spacings = [], [], set()
        for r in nearest[int(c)]:
            row = merged.table.iloc[int(r)]
            stem = str(row["tomogram"])
            if stem not in loaded:
                loaded[stem] = _gallery_volume(data_folder / f"{stem}{cfg.file_extension}")
            found = loaded[stem]
            if found is None:
                continue
            centroid = [row["centroid-0"], row["centroid-1"], row["centroid-2"]]
            boxes.append(G.centred_box(found[0], centroid, size))
            titles.append(f"{stem}:{int(row['label'])}")
            spacings.add(found[1])
        if not boxes:
            continue
        voxel = spacings.pop() if len(spacings) == 1 else None  # no scale bar over mixed voxel sizes
        n_c = int((labels == c).sum())
        fig = G.gallery_figure(
            G.average(boxes),
            boxes[:MEMBERS_SHOWN],
            titles[:MEMBERS_SHOWN],
            f"{layout.CLUSTER_METHODS[method]} cluster {int(c)} ({n_c} instances): average of the {len(boxes)} "
            f"nearest its centre (aligned by centroid), slab projections" + ("" if voxel else "; voxel size unknown"),
            voxel,
        )
        written[f"gallery_{int(c)}"] = save_figure(fig, layout.cluster_gallery(folders.vis_dir, method, int(c)))
    log.info("wrote %d cluster galleries", len(written))
    return written


def _gallery_volume(path: Path) -> tuple[np.ndarray, float | None] | None:
    """A tomogram (memory-mapped) and its x voxel size in Å (None if unknown); None, logged, if unreadable."""
    try:
        volume = volumes.open_mrc_volume(path)[0]
        spacing = volumes.mrc_voxel_size(path)
    except InputDataError as err:
        log.info("gallery skips tomogram %s: %s", path.name, err)
        return None
    return volume, (float(spacing[2]) if spacing is not None else None)
