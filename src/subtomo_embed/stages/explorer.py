"""The explorer stage: gather what ``embeddings_explorer.html`` shows and write it into the vis folder.

``visualize`` calls :func:`write_explorer` after its projections (which it caches, so they are
read back here, not recomputed). The page itself is built by ``core.explorer``. Thumbnails are the
masked patches cut as ``predict`` cuts them, from ``data_folder``'s tomograms and
``instances_mask_folder``'s masks; without those, the page has text-only hover.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import explorer as E
from ..core import io, layout, volumes
from ..core.config import Config
from ..core.errors import InputDataError
from ..core.progress import logged
from .context import Folders
from .merging import Merged

log = logging.getLogger(__name__)


def write_explorer(
    cfg: Config, folders: Folders, merged: Merged, clusterings: dict[str, np.ndarray]
) -> dict[str, Path]:
    """``<vis>/embeddings_explorer.html`` from the (cached) projections, the clusterings found, the
    STAR rows of every instance and the thumbnails; ``{}`` when no projection is configured."""
    from .figures import axis_name, global_projection, log_area, projection_name

    if projection_name(cfg) is None:
        log.info("no explorer: no projection configured (visualize_umap false, no pca_components)")
        return {}
    tomograms = merged.table["tomogram"].astype(str).to_numpy()
    first_clusters = next(iter(clusterings.values()), None)
    strata = (
        tomograms if first_clusters is None else np.char.add(np.char.add(tomograms, "/"), first_clusters.astype(str))
    )
    bound = min(cfg.visualization.explorer_max_points, E.MAX_POINTS)
    shown = np.sort(E.thumbnail_rows(strata, bound, cfg.seed))  # every row up to the bound
    if shown.size < merged.n:
        log.info(
            "explorer: a stratified sample of %d of the %d instances (visualization.explorer_max_points %d)",
            shown.size,
            merged.n,
            bound,
        )
    table = merged.table.iloc[shown]
    projections = []
    for dims in [2, 3] if cfg.visualization.umap_3d else [2]:
        coords, method = global_projection(cfg, folders, merged, dims)
        projections.append(E.Projection(f"{method.upper()} {dims}D", coords[shown], axis_name(method)))
    colourings = [
        E.Colouring(f"{layout.CLUSTER_METHODS[m]} cluster", c[shown], cluster=True) for m, c in clusterings.items()
    ]
    colourings += [
        E.Colouring("tomogram", tomograms[shown]),
        E.Colouring("instance size", log_area(table), categorical=False, label="log2 area (voxels)"),
    ]
    instances = E.Instances(
        tomograms[shown],
        table["label"].to_numpy(np.int64),
        table["area"].to_numpy(),
        table[["centroid-0", "centroid-1", "centroid-2"]].to_numpy(np.float64),
        voxel_sizes(cfg, merged.stems),
        row=shown,
    )
    # thumbnails: a stratified sample of the shown points, in priority order (positions in the page)
    wanted = E.thumbnail_rows(strata[shown], cfg.visualization.explorer_thumbnails, cfg.seed)
    pngs = dict(particle_thumbnails(cfg, merged, shown[wanted]))
    kept = [int(i) for i in wanted if int(shown[i]) in pngs]
    thumbnails = E.encode_thumbnails(kept, (pngs[int(shown[i])] for i in kept))
    star = selection_star(cfg, folders, merged, clusterings).iloc[shown].reset_index(drop=True)
    title = f"Embeddings explorer: {merged.n} instances of {len(merged.stems)} tomograms"
    title += f" ({shown.size} shown)" if shown.size < merged.n else ""
    log.info("explorer: writing the page (%d points, %d thumbnails)", shown.size, len(thumbnails))
    html = E.explorer_html(E.page_data(instances, projections, colourings, star, thumbnails, title, cfg.seed))
    path = layout.explorer(folders.vis_dir)
    with io.atomic_output(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info(
        "wrote %s (%.1f MB: %d points, %d thumbnails)", path, path.stat().st_size / 2**20, shown.size, len(thumbnails)
    )
    return {"explorer": path}


def voxel_sizes(cfg: Config, stems: list[str]) -> dict[str, tuple[float, float, float] | None]:
    """Each tomogram's voxel size (z, y, x, Å) from its MRC header in ``data_folder``; None where not found."""
    data_folder = cfg.optional_path("data_folder")
    out: dict[str, tuple[float, float, float] | None] = {}
    for stem in stems:
        path = data_folder / f"{stem}{cfg.file_extension}" if data_folder else None
        try:
            out[stem] = volumes.mrc_voxel_size(path) if path is not None and path.is_file() else None
        except InputDataError:
            out[stem] = None
    return out


def selection_star(cfg: Config, folders: Folders, merged: Merged, clusterings: dict[str, np.ndarray]) -> pd.DataFrame:
    """One STAR row per instance, in merged order, with the columns of the per-cluster STAR files
    (``rlnClass`` of the first clustering found); without clusterings, the same rows without it."""
    from .clustering import clustered_star, particles_table

    method = next(iter(clusterings), None)
    classes = clusterings[method] if method else np.zeros(merged.n, np.int64)
    stars = []
    for i, stem in enumerate(merged.stems):
        rows = merged.rows(i)
        source = layout.TomogramOutputs(folders.input_dir, stem).regions_star
        stars.append(clustered_star(source, merged.regions(i), classes[rows]))
    if stars and all("rlnTomoName" in s.columns for s in stars):
        star = pd.concat(stars, ignore_index=True)
    else:
        star = particles_table(cfg, merged.table, classes)
    return star if method else star.drop(columns=["rlnClass"])


def particle_thumbnails(cfg: Config, merged: Merged, rows: np.ndarray):
    """Yield (row, PNG bytes) for the given rows, tomogram by tomogram, each the patch its embedding
    was made from: masked regions as ``predict`` cuts them, or, for embeddings of picks (regions
    columns ``pick:...``), the boxes ``predict-centers`` cuts. Tomograms whose volume (or mask) is
    not found or unreadable are skipped with a log line."""
    if rows.size == 0:
        return
    picks = any(str(c).startswith("pick:") for c in merged.table.columns)
    needed = ["data_folder"] if picks else ["data_folder", "instances_mask_folder"]
    folders = {key: cfg.optional_path(key) for key in needed}
    if any(f is None or not f.is_dir() for f in folders.values()):
        log.info(
            "explorer without thumbnails: %s must be folders (%s)",
            " and ".join(needed),
            ", ".join(f"{k} {v}" for k, v in folders.items()),
        )
        return
    data_folder, mask_folder = folders["data_folder"], folders.get("instances_mask_folder")
    assert data_folder is not None and (picks or mask_folder is not None)  # checked above
    tomogram_of = merged.table["tomogram"].astype(str).to_numpy()
    log.info("explorer: cutting %d thumbnails", rows.size)
    for stem in logged(merged.stems, "explorer thumbnails, by tomogram", log):
        mine = np.sort(rows[tomogram_of[rows] == stem])
        if mine.size == 0:
            continue
        tomogram = data_folder / f"{stem}{cfg.file_extension}"
        mask_path = (
            None
            if picks or mask_folder is None
            else volumes.find_mask(mask_folder, stem, cfg.file_extension, cfg.instances_suffix)
        )
        if not tomogram.is_file() or (not picks and mask_path is None):
            missing = "tomogram" if not tomogram.is_file() else "mask"
            log.info("explorer: no thumbnails for %s (%s not found)", stem, missing)
            continue
        try:
            patches = _patches(cfg, tomogram, mask_path, merged.table.iloc[mine])
            for row, patch in zip(mine, patches):
                yield int(row), E.thumbnail_png(patch)
        except InputDataError as err:
            log.info("explorer: no thumbnails for %s: %s", stem, err)


def _patches(cfg: Config, tomogram: Path, mask_path: Path | None, regions: pd.DataFrame):
    """The patches of ``regions`` in ``tomogram``: masked regions (with ``mask_path``) or picked boxes."""
    from ..core.patch_contract import patch_contract

    contract = patch_contract(cfg)
    volume, _ = volumes.open_mrc_volume(tomogram)
    if mask_path is None:
        return E.picked_patches(volume, regions, contract, cfg.centers.mask_radius, str(tomogram))
    mask = volumes.read_instance_mask(mask_path)
    if mask.shape != volume.shape:
        raise InputDataError(f"mask shape {mask.shape} differs from the tomogram's {volume.shape}", mask_path)
    return E.masked_patches(volume, mask, regions, contract)
