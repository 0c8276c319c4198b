"""The visualize step: projections of the embeddings (all tomograms together and each tomogram),
their coordinates as CSV, PNG figures, and distance maps; coloured by the clusterings found in the
output (or input) folder that belong to these embeddings.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import numpy as np

from ..core import io, layout, records, tables
from ..core.config import Config
from ..core.errors import InputDataError
from ..core.progress import logged
from .context import Folders
from .explorer import write_explorer
from .figures import axis_name, global_projection, log_area, projection_name, save_figure, shown
from .merging import Merged, load_merged
from .provenance import keep_config

log = logging.getLogger(__name__)


def run_visualize(cfg: Config, folders: Folders) -> dict[str, Path]:
    """Projections (all tomograms together and per tomogram), CSV coordinates, PNGs and distance maps."""
    merged = load_merged(cfg, folders)
    io.check_writable_folder(folders.vis_dir)
    written: dict[str, Path] = {}
    clusterings = existing_clusterings(folders, merged, cfg)
    if clusterings:
        log.info("colouring by existing clusters: %s", ", ".join(clusterings))
    if projection_name(cfg) is None:
        log.info("visualization.visualize_umap is false and no pca_components: no projections")
    else:
        for dims in _dimensions(cfg):
            written.update(all_tomograms_projection(cfg, folders, merged, clusterings, dims))
        written.update(per_tomogram_projections(cfg, folders, merged, clusterings))
        written.update(write_explorer(cfg, folders, merged, clusterings))  # embeddings_explorer.html
    written.update(distance_maps(cfg, folders, merged, clusterings))
    log.info("wrote %d visualization files to %s", len(written), folders.vis_dir)
    records.replace_outputs_record(
        layout.outputs_record(folders.vis_dir, "visualize"),
        written.values(),
        [folders.vis_dir],
        layout.is_visualize_output,
        "the previous visualize run",
    )  # e.g. fewer tomograms
    keep_config(cfg, folders.vis_dir, "visualize")
    return written


def _dimensions(cfg: Config) -> list[int]:
    return [2, 3] if cfg.visualization.umap_3d else [2]


def existing_clusterings(folders: Folders, merged: Merged, cfg: Config | None = None) -> dict[str, np.ndarray]:
    """Each method's clusters (``<method>_clusters.h5``, output folder first) made of these embeddings.
    A clusters file made of other embeddings is not used, and said so once, with the command that
    refreshes it (given ``cfg``)."""
    found = {}
    for method in layout.CLUSTER_METHODS:
        stale = None
        for folder in (folders.output_dir, folders.input_dir):
            path = layout.clusters(folder, method)
            if path.is_file():
                try:  # its declared size first: a small file declaring a huge dataset is not read (issue 31, 4)
                    clusters = io.read_h5_dataset(path, "clusters", merged.n).ravel()
                except InputDataError:
                    stale = stale or path
                    continue
                if io.read_h5_attr(path, "embeddings_key") in (None, merged.key):
                    found[method] = clusters.astype(np.int64)
                    break
                stale = stale or path
        if method not in found and stale is not None and cfg is not None:
            log.warning(
                "%s was made from other embeddings than %s (they changed since): not used; refresh it with: %s",
                stale,
                merged.path.name,
                refresh_command(cfg, method),
            )
    return found


def refresh_command(cfg: Config, step: str) -> str:
    """The command line that remakes ``step``'s outputs with this config."""
    config = f" --config_file {shlex.quote(cfg.source)}" if cfg.source != "<defaults>" else ""
    return f"subtomo-embed {step}{config}"


def _cluster_panels(
    clusterings: dict[str, np.ndarray], draw: np.ndarray, rows: slice = slice(None), counted: bool = True
) -> list:
    from ..core.visualize import Panel

    panels = []
    for method, clusters in clusterings.items():
        counts = {int(c): int((clusters == c).sum()) for c in np.unique(clusters)} if counted else None
        panels.append(
            Panel(clusters[rows][draw], f"{layout.CLUSTER_METHODS[method]} clusters", "cluster", counts=counts)
        )
    return panels


def all_tomograms_projection(
    cfg: Config, folders: Folders, merged: Merged, clusterings: dict[str, np.ndarray], dims: int
) -> dict[str, Path]:
    """``all_tomograms_<method>[_3d].csv`` (every instance) and ``.png`` (a subsample if large)."""
    from ..core import visualize as V

    vis, tag = folders.vis_dir, "" if dims == 2 else "_3d"
    coords, method = global_projection(cfg, folders, merged, dims)
    sizes = log_area(merged.table)
    csv = merged.table.copy()
    csv["log_area"] = sizes
    for name, clusters in clusterings.items():
        csv[f"{name}_cluster"] = clusters
    for j, axis in enumerate("xyz"[:dims]):
        csv[axis] = coords[:, j]
    written = {f"all{tag}_csv": layout.all_tomograms(vis, method, dims, "csv")}
    tables.write_regions_csv(written[f"all{tag}_csv"], csv)

    draw = V.plot_subsample(merged.n, cfg.visualization.max_plot_points, cfg.seed)
    title = f"All tomograms, {method.upper()} of the embeddings ({shown(len(draw), merged.n)})"
    if dims == 2:
        panels = [
            V.Panel(merged.table["tomogram"].to_numpy()[draw], "tomogram", "tomogram"),
            V.Panel(sizes[draw], "instance size", "log2 area (voxels)", categorical=False),
            *_cluster_panels(clusterings, draw),
        ]
        fig = V.projection_figure(coords[draw], panels, title, axis_name(method))
    elif clusterings:
        first = next(iter(clusterings))
        fig = V.projection3d_figure(
            coords[draw],
            clusterings[first][draw],
            title,
            axis_name(method),
            f"{layout.CLUSTER_METHODS[first]} cluster",
            True,
        )
    else:
        fig = V.projection3d_figure(coords[draw], sizes[draw], title, axis_name(method), "log2 area (voxels)", False)
    written[f"all{tag}_png"] = save_figure(fig, layout.all_tomograms(vis, method, dims, "png"))
    return written


def per_tomogram_projections(
    cfg: Config, folders: Folders, merged: Merged, clusterings: dict[str, np.ndarray]
) -> dict[str, Path]:
    """Per tomogram (``visualization_files``, else all), its own projection as CSV and PNG."""
    from ..core import visualize as V

    v = cfg.visualization
    wanted = merged.stems
    if cfg.visualization_files:
        listed = sorted({cfg.stem(f) for f in cfg.visualization_files})
        missing = [s for s in listed if s not in merged.stems]
        if missing:
            log.warning("visualization_files not among the merged tomograms, skipped: %s", ", ".join(missing))
        wanted = [s for s in listed if s in merged.stems]
    sizes = log_area(merged.table)
    written = {}
    sample = cfg.scale.projection_sample
    for stem in logged(io.progress(wanted, "per-tomogram projections"), "per-tomogram projections", log, len(wanted)):
        i = merged.stems.index(stem)
        rows = merged.rows(i)
        n = rows.stop - rows.start
        if n < 3:
            log.info("%s has %d instances: no projection", stem, n)
            continue
        table = merged.regions(i)
        table.insert(0, "tomogram", stem)
        table.insert(2, "row", np.arange(rows.start, rows.stop))
        table["log_area"] = sizes[rows]
        extra = _suffix_table(cfg, folders, stem, table["label"].to_numpy(np.int64))
        for col, values in extra.items():
            table[col] = values
        for name, clusters in clusterings.items():
            table[f"{name}_cluster"] = clusters[rows]
        for dims in _dimensions(cfg):
            x = merged.embeddings[rows]
            coords, method = V.project(x, dims, v.distance, v.pca_components, cfg.seed, fit_sample=sample)
            csv = table.copy()
            for j, axis in enumerate("xyz"[:dims]):
                csv[axis] = coords[:, j]
            coords_csv = layout.tomogram_projection(folders.vis_dir, stem, method, dims, "csv")
            tables.write_regions_csv(coords_csv, csv)
            written[f"{stem}{'' if dims == 2 else '_3d'}_csv"] = coords_csv
            draw = V.plot_subsample(n, v.max_plot_points, cfg.seed)
            title = f"{stem}: {method.upper()} of {n} instances"
            if dims == 2:
                panels = [
                    V.Panel(
                        table["log_area"].to_numpy()[draw], "instance size", "log2 area (voxels)", categorical=False
                    ),
                    *[V.Panel(table[col].to_numpy()[draw], col, col) for col in extra],
                    *_cluster_panels(clusterings, draw, rows, counted=False),
                ]
                fig = V.projection_figure(coords[draw], panels, title, axis_name(method))
            else:
                fig = V.projection3d_figure(
                    coords[draw],
                    table["log_area"].to_numpy()[draw],
                    title,
                    axis_name(method),
                    "log2 area (voxels)",
                    False,
                )
            tag = "" if dims == 2 else "_3d"
            png = layout.tomogram_projection(folders.vis_dir, stem, method, dims, "png")
            written[f"{stem}{tag}_png"] = save_figure(fig, png)
    return written


def _suffix_table(cfg: Config, folders: Folders, stem: str, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Extra colourings from ``<stem>_<visualization_suffix>`` (e.g. a clustered regions CSV's semantic_class)."""
    suffix = cfg.visualization.visualization_suffix
    if suffix in ("instance_regions.csv", ""):
        return {}
    for folder in (folders.input_dir, folders.output_dir):
        path = folder / f"{stem}_{suffix}"
        if path.is_file():
            df = tables.read_regions_csv(path)
            cols = [c for c in df.columns if c in ("semantic_class", "semantic_class_2")]
            if not cols:
                return {}
            indexed = df.drop_duplicates("label").set_index("label")
            return {c: indexed[c].reindex(labels).to_numpy() for c in cols}
    log.info("no %s_%s: per-tomogram plots without it", stem, suffix)
    return {}


def distance_maps(cfg: Config, folders: Folders, merged: Merged, clusterings: dict[str, np.ndarray]) -> dict[str, Path]:
    """Pairwise distances of the embeddings, ordered by tomogram and by each clustering present."""
    from ..core import visualize as V

    metric = cfg.visualization.distance
    orderings = {"tomogram": ("tomogram", merged.table["tomogram"].to_numpy())}
    orderings.update({m: (f"{layout.CLUSTER_METHODS[m]} cluster", c) for m, c in clusterings.items()})
    written = {}
    for tag, (group_name, groups) in orderings.items():
        dist, _, g = V.distance_map(merged.embeddings, groups, metric, seed=cfg.seed)
        fig = V.distance_map_figure(dist, g, f"Pairwise {metric} distances of the embeddings", metric, group_name)
        written[f"distance_map_{tag}"] = save_figure(fig, layout.distance_map(folders.vis_dir, tag))
    return written
