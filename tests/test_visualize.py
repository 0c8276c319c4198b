"""core.visualize: projections, subsampling, distance maps and figures (no files needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from conftest_analysis import grouped_embeddings

from subtomo_embed.core import visualize as V


def drawn(fig, path) -> np.ndarray:
    """The figure as its PNG holds it (RGB, 0..1), once it shows something: ink away from the white
    background on more than 2 % of the pixels, in more than 20 colours (a blank or single-colour image
    is not a figure)."""
    import matplotlib.image as mpimg

    fig.savefig(path)
    rgb = mpimg.imread(path)[..., :3]
    ink = np.any(rgb < 0.9, axis=-1)
    assert ink.mean() > 0.02, f"{path.name}: {ink.mean():.1%} of the pixels drawn"
    assert len(np.unique(np.round(rgb[ink] * 255).astype(np.uint8), axis=0)) > 20, path.name
    return rgb


@pytest.fixture(scope="module")
def data():
    return grouped_embeddings(240, 12, 3, seed=5, spread=0.2)


def test_pca_projection(data):
    x, truth = data
    coords, method = V.project(x, 2, pca_components=5)
    assert method == "pca" and coords.shape == (240, 2)
    assert np.var(coords[:, 0]) >= np.var(coords[:, 1])  # first PC first
    coords3, _ = V.project(x, 3, pca_components=2)  # at least as many components as asked for
    assert coords3.shape == (240, 3)


def test_umap_projection_is_seeded_and_separates_groups(data):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x, truth = data
    a, method = V.project(x, 2, metric="cosine", seed=3)
    b, _ = V.project(x, 2, metric="cosine", seed=3)
    assert method == "umap" and a.shape == (240, 2)
    assert np.array_equal(a, b)
    labels = KMeans(3, n_init=5, random_state=0).fit_predict(a)
    assert adjusted_rand_score(truth, labels) >= 0.95


def test_tiny_sets_fall_back_to_pca():
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    coords, method = V.project(x, 3)
    assert method == "pca" and coords.shape == (5, 3)
    coords, _ = V.project(x[:2], 3)  # rank-deficient: zero-filled, no error
    assert coords.shape == (2, 3)


def test_plot_subsample():
    rows = V.plot_subsample(100, 1000, seed=1)
    assert sorted(rows.tolist()) == list(range(100)) and rows.tolist() != list(range(100))  # shuffled draw order
    rows = V.plot_subsample(100_000, 500, seed=1)
    assert rows.size == 500 and np.unique(rows).size == 500
    assert np.array_equal(rows, V.plot_subsample(100_000, 500, seed=1))


def test_stratified_subsample_keeps_every_group():
    groups = np.array([0] * 5000 + [1] * 20 + [2] * 3)
    rows = V.stratified_subsample(groups, 200, seed=0)
    assert rows.size <= 203
    assert set(groups[rows]) == {0, 1, 2}


def test_distance_map_ordered_by_group(data):
    x, truth = data
    dist, rows, groups = V.distance_map(x, truth, "euclidean", max_points=90)
    assert dist.shape == (rows.size, rows.size) and rows.size <= 93
    assert np.all(np.diff(groups) >= 0)  # ordered by group
    assert np.allclose(dist, dist.T) and np.allclose(np.diag(dist), 0, atol=1e-4)
    within = dist[groups[:, None] == groups[None, :]].mean()
    between = dist[groups[:, None] != groups[None, :]].mean()
    assert within < between
    cos, _, _ = V.distance_map(x, truth, "cosine", max_points=90)
    assert cos.max() <= 2.0 + 1e-6


def test_marker_style_shrinks_with_n():
    small, large = V.marker_style(200), V.marker_style(100_000)
    assert large["s"] < small["s"] and large["alpha"] < small["alpha"] and large["rasterized"]


def test_projection_figure_has_labels_and_legends(tmp_path, data):
    x, truth = data
    xy = x[:, :2]
    panels = [
        V.Panel(truth, "clusters", "cluster", counts={0: 1, 1: 2, 2: 3}),
        V.Panel(np.log2(np.arange(1, 241)), "size", "log2 area (voxels)", categorical=False),
        V.Panel(np.array([f"T{i % 30:02d}" for i in range(240)]), "tomogram", "tomogram"),
    ]
    fig = V.projection_figure(xy, panels, "title", "UMAP")
    axes = fig.axes
    assert axes[0].get_xlabel() == "UMAP 1" and axes[0].get_ylabel() == "UMAP 2"
    legend = axes[0].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["0 (n=1)", "1 (n=2)", "2 (n=3)"]
    # continuous panel and > 20 categories get colour bars instead of legends
    assert any(ax.get_ylabel() == "log2 area (voxels)" for ax in axes)
    assert any("tomogram index" in ax.get_ylabel() for ax in axes)
    # every panel draws every instance where the projection puts it
    for ax in axes[: len(panels)]:
        np.testing.assert_array_equal(ax.collections[0].get_offsets(), xy)
    assert [ax.get_title() for ax in axes[: len(panels)]] == ["clusters", "size", "tomogram"]
    assert fig._suptitle.get_text() == "title"
    drawn(fig, tmp_path / "p.png")


def test_distance_map_figure_shows_the_distances_ordered_by_group(tmp_path, data):
    x, truth = data
    dist, _, groups = V.distance_map(x, truth)
    fig = V.distance_map_figure(dist, groups, "d", "euclidean", "cluster")
    ax, colour_bar = fig.axes
    np.testing.assert_array_equal(ax.images[0].get_array(), dist)
    assert ax.get_xlabel() == ax.get_ylabel() == "instances, ordered by cluster"
    assert ax.get_title() == f"d\n{dist.shape[0]} instances"
    names = [str(g) for g in dict.fromkeys(groups.tolist())]
    assert [t.get_text() for t in ax.get_xticklabels()] == names == [t.get_text() for t in ax.get_yticklabels()]
    assert colour_bar.get_ylabel() == "euclidean distance"
    drawn(fig, tmp_path / "d.png")


def test_3d_figure_has_its_axes_legend_and_points(tmp_path, data):
    x, truth = data
    fig = V.projection3d_figure(x[:, :3], truth, "t", "UMAP", "cluster", True)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel(), ax.get_title()) == ("UMAP 1", "UMAP 2", "UMAP 3", "t")
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "cluster"
    assert [t.get_text() for t in legend.get_texts()] == [str(c) for c in sorted(set(truth.tolist()))]
    colours = np.unique(np.round(ax.collections[0].get_facecolors()[:, :3], 3), axis=0)
    assert len(colours) == len(set(truth.tolist()))  # a colour a cluster
    drawn(fig, tmp_path / "3d.png")
