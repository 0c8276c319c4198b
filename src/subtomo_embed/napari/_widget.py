"""The save-selection widget: the selected points of an instances layer, or one cluster, as a STAR file
with the columns of the per-cluster STAR files (see ``_data.selection_star``)."""

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
