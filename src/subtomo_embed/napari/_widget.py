"""The plugin's widgets: *Save selection as STAR* (the selected points of an instances layer, or one
cluster, with the columns of the per-cluster STAR files, see ``_data.selection_star``; RELION 5's
``data_optics`` and ``data_particles`` blocks, as every STAR file of the package) and
*Choose tomogram* (the reader shows one tomogram at a time; this replaces it by another)."""

from pathlib import Path

import napari
from magicgui import magic_factory

from . import _data


@magic_factory(
    call_button="Save STAR",
    which={"choices": ["selected points", "cluster"], "label": "instances"},
    method={"choices": list(_data.CLUSTER_METHODS)},
    cluster={"min": 0, "max": 10_000},
    path={"mode": "w", "filter": "*.star", "label": "STAR file"},
)
def save_selection(
    points: napari.layers.Points,
    which: str = "selected points",
    method: str = "kmeans",
    cluster: int = 0,
    path: Path = Path("selected_particles.star"),
) -> None:
    """Write the chosen instances of ``points`` (a layer opened by this plugin) to ``path``."""
    from napari.utils.notifications import show_info

    meta = (points.metadata or {}).get("subtomo_embed") if points is not None else None
    if meta is None:
        raise ValueError("choose an instances layer opened by the subtomo-embed reader")
    labels = _data.chosen_labels(points.features, which, method, cluster, set(points.selected_data))
    n = _data.write_selection_star(Path(meta["prediction_folder"]), meta["stem"], labels, method, Path(path))
    show_info(f"wrote {n} particles to {path}")


def _opened(viewer) -> dict | None:
    """The subtomo-embed metadata of the viewer's first layer opened by this plugin."""
    for layer in viewer.layers if viewer is not None else []:
        meta = (layer.metadata or {}).get("subtomo_embed")
        if meta:
            return meta
    return None


def _tomogram_choices(_widget=None) -> list[str]:
    meta = _opened(napari.current_viewer())
    if meta is None:
        return []
    return _data.sources_of(meta["opened"])[1]


@magic_factory(call_button="Show", tomogram={"choices": _tomogram_choices})
def choose_tomogram(viewer: napari.Viewer, tomogram: str) -> None:
    """Replace the shown tomogram's layers (opened by this plugin) with those of ``tomogram``."""
    from napari.layers import Layer

    from ._reader import tomogram_layers

    meta = _opened(viewer)
    if meta is None:
        raise ValueError("open a prediction folder, an embeds file or a config with the subtomo-embed reader first")
    sources, stems = _data.sources_of(meta["opened"])
    if tomogram not in stems:
        raise ValueError(f"{tomogram!r} is not a tomogram of {meta['opened']}")
    for layer in [layer for layer in viewer.layers if (layer.metadata or {}).get("subtomo_embed")]:
        viewer.layers.remove(layer)
    for data, kwargs, kind in tomogram_layers(sources, tomogram, meta["opened"]):
        viewer.add_layer(Layer.create(data, kwargs, kind))
