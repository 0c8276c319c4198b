"""The napari plugin on the outputs of a small real run (predict, kmeans, spectral, visualize through
the CLI, in-process), in a real napari viewer on a headless X server.

Qt's ``offscreen`` platform has no OpenGL, so napari's canvas cannot draw there (vispy finds no GL
context); these tests start Xvfb (Mesa's software OpenGL) and use Qt's ``xcb`` platform instead.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import starfile
from real_run import small_run
from relion_labels import check_relion_star
from tools import require_executable, require_module

pytestmark = pytest.mark.slow  # napari and Qt on a virtual display


@pytest.fixture(scope="module", autouse=True)
def x_display():
    """A private Xvfb display for this module's Qt application (started here, stopped at the end)."""
    require_module("napari")
    xvfb = require_executable("Xvfb")
    read, write = os.pipe()
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    assert number, "Xvfb did not start"
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ.update(DISPLAY=f":{number}", QT_QPA_PLATFORM="xcb")
    yield
    server.terminate()
    server.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("napari_run"))


@pytest.fixture
def viewer(run):
    import napari

    v = napari.Viewer(show=True)  # on the Xvfb display: a hidden canvas is never drawn
    yield v
    v.close()


def layers_by_type(viewer) -> dict[str, list]:
    out: dict[str, list] = {}
    for layer in viewer.layers:
        out.setdefault(type(layer).__name__, []).append(layer)
    return out


def test_reader_opens_one_tomogram_of_a_prediction_folder(run, viewer):

    viewer.open(str(run["out"]), plugin="subtomo-embed")
    layers = layers_by_type(viewer)
    assert [len(layers.get(t, [])) for t in ("Image", "Labels", "Points")] == [1, 1, 1]  # TS_01 only
    check_tomogram_layers(run, "TS_01", layers["Image"][0], layers["Labels"][0], layers["Points"][0])


def check_tomogram_layers(run, stem, image, labels, points) -> None:
    from subtomo_embed.core import io, volumes

    volume, _ = volumes.open_mrc_volume(run["data"] / f"{stem}.mrc")
    np.testing.assert_array_equal(np.asarray(image.data), volume)
    mask = volumes.read_instance_mask(run["masks"] / f"{stem}_instance_preds.h5")
    np.testing.assert_array_equal(np.asarray(labels.data), mask)

    regions = pd.read_csv(run["out"] / f"{stem}_instance_regions.csv")
    np.testing.assert_allclose(points.data, regions[["centroid-0", "centroid-1", "centroid-2"]].to_numpy())
    f = points.features
    assert f["label"].tolist() == regions["label"].tolist()
    assert f["area"].tolist() == regions["area"].tolist()
    kmeans = io.read_h5_dataset(run["out"] / f"{stem}_clusters_kmeans.h5", "predictions")
    spectral = io.read_h5_dataset(run["out"] / f"{stem}_clusters_spectral.h5", "predictions")
    assert f["kmeans_cluster"].tolist() == kmeans.tolist()
    assert f["spectral_cluster"].tolist() == spectral.tolist()
    for column in ("kmeans_cluster", "spectral_cluster"):  # groups, not numbers
        assert isinstance(f[column].dtype, pd.CategoricalDtype), f[column].dtype
        assert f[column].cat.categories.tolist() == sorted(set(f[column].tolist()))
    umap = pd.read_csv(run["out"] / "vis" / "all_tomograms_umap.csv")
    umap = umap[umap["tomogram"] == stem].set_index("label").loc[f["label"]]
    np.testing.assert_allclose(f[["umap_x", "umap_y"]].to_numpy(), umap[["x", "y"]].to_numpy())

    # the mask's instances carry their cluster's colour; the points too, as hollow rings
    colour_of = {int(label): tuple(np.round(labels.colormap.map(label), 3)) for label in f["label"]}
    by_cluster: dict[int, set] = {}
    for label, c in zip(f["label"], f["kmeans_cluster"]):
        by_cluster.setdefault(int(c), set()).add(colour_of[int(label)])
    assert all(len(colours) == 1 for colours in by_cluster.values())
    assert len({next(iter(c)) for c in by_cluster.values()}) == len(by_cluster)
    assert (points.face_color[:, 3] == 0).all()  # hollow: the particle shows inside its marker
    assert (points.border_width > 0).all()
    for i, c in enumerate(f["kmeans_cluster"]):
        np.testing.assert_allclose(points.border_color[i], next(iter(by_cluster[int(c)])), atol=2e-3)


def test_choose_tomogram_shows_another_in_place_of_the_first(run, viewer):
    from subtomo_embed.napari._widget import choose_tomogram

    viewer.open(str(run["out"]), plugin="subtomo-embed")
    widget = choose_tomogram()
    widget.reset_choices()
    assert list(widget.tomogram.choices) == ["TS_01", "TS_02"]
    widget(viewer=viewer, tomogram="TS_02")
    assert [layer.name for layer in viewer.layers] == ["TS_02", "TS_02 instances by kmeans cluster", "TS_02 instances"]
    layers = layers_by_type(viewer)
    check_tomogram_layers(run, "TS_02", layers["Image"][0], layers["Labels"][0], layers["Points"][0])
    with pytest.raises(ValueError, match="not a tomogram"):
        widget(viewer=viewer, tomogram="TS_09")


def test_reader_opens_one_embeds_file_and_a_config(run, viewer):
    viewer.open(str(run["out"] / "TS_02_embeds.h5"), plugin="subtomo-embed")
    assert [layer.name for layer in viewer.layers] == ["TS_02", "TS_02 instances by kmeans cluster", "TS_02 instances"]
    viewer.layers.clear()
    viewer.open(str(run["config"]), plugin="subtomo-embed")
    assert [layer.name for layer in viewer.layers] == ["TS_01", "TS_01 instances by kmeans cluster", "TS_01 instances"]


def test_reader_declines_other_paths(run, tmp_path):
    from subtomo_embed.napari._reader import get_reader

    assert get_reader(str(run["data"] / "TS_01.mrc")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without embeddings
    assert get_reader(str(run["out"])) is not None


def test_screenshot_shows_the_data(run, viewer):
    viewer.open(str(run["out"] / "TS_01_embeds.h5"), plugin="subtomo-embed")
    points = viewer.layers["TS_01 instances"]
    viewer.dims.set_point(0, float(points.data[0, 0]))
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 50
    rgb = shot[..., :3].reshape(-1, 3)
    assert rgb.std() > 10, "blank canvas"
    assert len(np.unique(rgb // 32, axis=0)) > 8  # grey tomogram and coloured instances, not one flat colour


def test_widget_saves_selected_points_and_clusters_as_star(run, viewer, tmp_path):
    from subtomo_embed.napari._widget import save_selection

    viewer.open(str(run["out"] / "TS_01_embeds.h5"), plugin="subtomo-embed")
    points = viewer.layers["TS_01 instances"]
    widget = save_selection()
    clustered = starfile.read(run["out"] / "TS_01_instance_regions_kmeans_clustered.star")["particles"]

    points.selected_data = {0, 2, 3}
    widget(points=points, which="selected points", method="kmeans", cluster=0, path=tmp_path / "picked.star")
    picked = starfile.read(tmp_path / "picked.star")["particles"]
    assert picked["rlnLabel"].tolist() == points.features["label"].to_numpy()[[0, 2, 3]].tolist()
    cluster_0 = starfile.read(run["out"] / "kmeans_cluster_0_particles.star")["particles"]
    assert list(picked.columns) == list(cluster_0.columns)
    pd.testing.assert_frame_equal(picked, clustered.iloc[[0, 2, 3]].reset_index(drop=True))
    check_relion_star(tmp_path / "picked.star", clustered=True, pixel_size=10.0)  # RELION 5's blocks, 10 Å voxels

    c = int(points.features["kmeans_cluster"].iloc[0])
    widget(points=points, which="cluster", method="kmeans", cluster=c, path=tmp_path / "cluster.star")
    cluster = starfile.read(tmp_path / "cluster.star")["particles"]
    pd.testing.assert_frame_equal(cluster, clustered[clustered["rlnClass"] == c].reset_index(drop=True))

    points.selected_data = set()
    with pytest.raises(ValueError, match="nothing chosen"):
        widget(points=points, which="selected points", method="kmeans", cluster=0, path=tmp_path / "none.star")
    assert not (tmp_path / "none.star").exists()


def test_reader_on_picks_has_no_mask_layer(viewer, tmp_path):
    """Embeddings of picks: their labels are pick ids, so the mask (other labels) is not shown as their instances."""
    from real_run import inner_picks, run_cli
    from synthetic import make_checkpoint, make_dataset, write_config

    data, masks = make_dataset(tmp_path, n_instances=9)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=out,
        trained_model=make_checkpoint(tmp_path / "model.ckpt"),
        centers_file=inner_picks(tmp_path / "picks.star", masks, 9),
        centers_patch_size=9,
    )
    run_cli("predict-centers", "--config_file", config)
    viewer.open(str(out / "TS_01_embeds.h5"), plugin="subtomo-embed")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Points"]
    regions = pd.read_csv(out / "TS_01_instance_regions.csv")
    np.testing.assert_allclose(
        viewer.layers["TS_01 instances"].data, regions[["centroid-0", "centroid-1", "centroid-2"]].to_numpy()
    )


def test_clusters_plotter_offers_and_colours_the_cluster_categories(run, viewer):
    """napari-clusters-plotter on the reader's instances layer: the cluster columns are categories it
    offers as colourings; colouring by one paints each cluster's points its own colour, and a
    rectangle drawn in its plot around one cluster's points picks out exactly those particles."""
    require_module("napari_clusters_plotter")
    from types import SimpleNamespace

    from napari_clusters_plotter import PlotterWidget

    viewer.open(str(run["out"] / "TS_01_embeds.h5"), plugin="subtomo-embed")
    points = viewer.layers["TS_01 instances"]
    viewer.layers.selection.active = points
    plotter = PlotterWidget(viewer)
    viewer.window.add_dock_widget(plotter, area="right")
    assert plotter.layers == [points]
    categorical = list(plotter.categorical_columns)
    assert {"kmeans_cluster", "spectral_cluster"} <= set(categorical)  # groups, not numbers
    assert "log_area" not in categorical and "umap_x" not in categorical
    hue = plotter._selectors["hue"]
    offered = [hue.itemText(i) for i in range(hue.count())]
    for column in ("kmeans_cluster", "spectral_cluster"):
        assert column in offered
        assert hue.itemData(offered.index(column), 3) == "Categorical Column"  # Qt.ToolTipRole: marked as one
    x_axes = [plotter._selectors["x"].itemText(i) for i in range(plotter._selectors["x"].count())]
    assert "umap_x" in x_axes and "kmeans_cluster" not in x_axes  # categories are not axes

    plotter.x_axis, plotter.y_axis, plotter.hue_axis = "umap_x", "umap_y", "kmeans_cluster"
    plotter.plotting_widget.show_color_overlay = True  # the plot's "show overlay" button: the layer takes the hue
    clusters = points.features["kmeans_cluster"].to_numpy(np.int64)
    colours = np.round(np.asarray(points.face_color), 4)
    colour_of = {c: {tuple(colours[i]) for i in np.flatnonzero(clusters == c)} for c in set(clusters.tolist())}
    assert all(len(found) == 1 for found in colour_of.values()), colour_of  # one colour per cluster
    assert len({next(iter(found)) for found in colour_of.values()}) == len(colour_of)  # a colour each

    # a selection in the plot: the rectangle around one cluster's UMAP points (the one whose box
    # holds no other point), applied as the plotter applies a drawn one (its right click)
    xy = points.features[["umap_x", "umap_y"]].to_numpy(np.float64)
    inside = {}
    for c in sorted(set(clusters.tolist())):
        low, high = xy[clusters == c].min(axis=0) - 1e-6, xy[clusters == c].max(axis=0) + 1e-6
        inside[c] = (low, high, np.flatnonzero(((xy >= low) & (xy <= high)).all(axis=1)))
    pure = [
        c for c, (_, _, rows) in inside.items() if set(rows.tolist()) == set(np.flatnonzero(clusters == c).tolist())
    ]
    assert pure, "no cluster is alone in its box in this UMAP"
    low, high, rows = inside[pure[0]]
    plotter.control_widget.reset_button.click()  # the plotter's Reset: a fresh manual selection over the same plot
    selector = plotter.plotting_widget.selectors["RECTANGLE"]
    selector.create_selector()
    selector.on_select(SimpleNamespace(xdata=low[0], ydata=low[1]), SimpleNamespace(xdata=high[0], ydata=high[1]))
    selector.apply_selection()
    assert plotter.hue_axis == "MANUAL_CLUSTER_ID"
    manual = points.features["MANUAL_CLUSTER_ID"].to_numpy(np.int64)
    assert np.flatnonzero(manual).tolist() == rows.tolist()  # exactly the cluster's particles
    colours = np.round(np.asarray(points.face_color), 4)
    assert len({tuple(colours[i]) for i in rows}) == 1
    others = np.setdiff1d(np.arange(len(points.data)), rows)
    assert not {tuple(colours[i]) for i in rows} & {tuple(colours[i]) for i in others}  # highlighted


def test_the_manifest_reads_the_embeddings_files_layout_names():
    """napari.yaml keeps its own text of the embeddings file pattern (a manifest cannot import): it is
    core/layout.py's suffix."""
    from importlib.resources import files

    import yaml

    from subtomo_embed.core import layout

    manifest = yaml.safe_load(files("subtomo_embed.napari").joinpath("napari.yaml").read_text())
    (reader,) = manifest["contributions"]["readers"]
    assert f"*{layout.EMBEDS_SUFFIX}" in reader["filename_patterns"]
