"""Cluster galleries (issue 29 point 5): the average of a cluster's particles aligned by centroid, as
slab projections, with a scale bar in nm and a few members; core.galleries and the clustering step."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from subtomo_embed.core import galleries as G


def torus(size: int = 16, major: float = 4.5, minor: float = 1.6) -> np.ndarray:
    """A ring in the xy plane (z, y, x): the cluster the issue saw as noise in single slices."""
    c = (size - 1) / 2
    z, y, x = np.ogrid[:size, :size, :size]
    ring = (np.sqrt((y - c) ** 2 + (x - c) ** 2) - major) ** 2 + (z - c) ** 2 <= minor**2
    return ring.astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_centred_box_cuts_around_the_centroid_and_pads_at_edges():
    volume = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    box = G.centred_box(volume, (5.2, 6.0, 6.9), (4, 4, 4))
    np.testing.assert_array_equal(box, volume[3:7, 4:8, 5:9])
    edge = G.centred_box(volume, (0, 0, 13), (4, 4, 4))
    assert edge.shape == (4, 4, 4)
    np.testing.assert_array_equal(edge[2:, 2:, :3], volume[:2, :2, 11:])  # x 11..14, 14 outside
    assert (edge[:2] == 0).all() and (edge[:, :, 3] == 0).all()
    assert (G.centred_box(volume, (50, 50, 50), (4, 4, 4)) == 0).all()  # entirely outside


def test_the_average_of_noisy_particles_shows_the_ring_a_slice_does_not():
    rng = np.random.default_rng(0)
    size, n = 16, 48
    truth = torus(size)
    volume = rng.normal(0, 1.5, (24, 24 + 20 * n, 24)).astype(np.float32)
    centroids = []
    for i in range(n):
        y0 = 4 + 20 * i
        volume[4:20, y0 : y0 + 16, 4:20] += truth
        centroids.append((4 + 8 + rng.uniform(-0.4, 0.4), y0 + 8 + rng.uniform(-0.4, 0.4), 12.0))
    boxes = [G.centred_box(volume, c, (size,) * 3) for c in centroids]
    mean = G.average(boxes)
    xy_truth = G.slab_projections(truth, 2)[0]
    single = boxes[0][size // 2]  # what the old gallery showed: one z slice of one particle
    assert correlation(G.slab_projections(mean, 2)[0], xy_truth) > 0.9
    assert correlation(single, xy_truth) < 0.6
    # xz and yz show the ring's cross-section: two blobs either side of the centre, z vertical
    xz, xz_truth = G.slab_projections(mean, 2)[1], G.slab_projections(truth, 2)[1]
    assert xz.shape == (size, size) and correlation(xz, xz_truth) > 0.8
    assert correlation(boxes[0][:, size // 2, :], xz_truth) < 0.5


def test_slab_projections_take_the_central_planes_along_each_axis():
    box = np.zeros((8, 10, 12), np.float32)
    box[3:5, :, :] = 1.0  # the central two z planes
    xy, xz, yz = G.slab_projections(box, 2)
    assert xy.shape == (10, 12) and xz.shape == (8, 12) and yz.shape == (8, 10)
    assert (xy == 1).all()
    assert (xz[3:5] == 1).all() and (np.delete(xz, [3, 4], axis=0) == 0).all()
    assert (yz[3:5] == 1).all()


@pytest.mark.parametrize(
    "width, voxel, expected",
    [
        (32, 10.0, (10.0, 10.0)),
        (64, 13.48, (20.0, 20 / 1.348)),
        (16, 2.0, (1.0, 5.0)),
        (32, None, None),
        (30, 0.01, None),
        (30, 0.0, None),
    ],
)
def test_scale_bar_is_a_round_length_at_most_a_third_of_the_view(width, voxel, expected):
    bar = G.scale_bar(width, voxel)
    if expected is None:
        assert bar is None
    else:
        assert bar == pytest.approx(expected)
        assert bar[1] <= width / 3 and bar[1] * voxel / 10 == pytest.approx(bar[0])


def test_gallery_figure_has_the_average_the_members_and_the_bar(tmp_path):
    rng = np.random.default_rng(1)
    boxes = [torus() + rng.normal(0, 0.5, (16, 16, 16)).astype(np.float32) for _ in range(6)]
    fig = G.gallery_figure(G.average(boxes), boxes[:3], ["TS_01:1", "TS_01:2", "TS_02:7"], "cluster 0", 10.0)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["average: xy", "xz", "yz"] and titles[3] == "TS_01:1: xy" and len(fig.axes) == 12
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["5 nm"] * 12  # 16 voxels of 1 nm: a third is 5.3 nm
    fig.savefig(tmp_path / "g.png")
    bare = G.gallery_figure(G.average(boxes), [], [], "cluster 0", None)
    assert len(bare.axes) == 3 and not [t for ax in bare.axes for t in ax.texts]


def test_the_clustering_step_writes_average_galleries(tmp_path):
    from conftest_analysis import make_prediction_folder
    from real_run import run_cli
    from synthetic import write_config

    out = tmp_path / "out"
    make_prediction_folder(out, counts=(30, 40), volumes=tmp_path / "volumes")
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=tmp_path / "volumes" / "tomograms",
        prediction_folder=out,
        clustering_kmeans__visualization=True,
    )
    output = run_cli("kmeans", "--config_file", config)
    from PIL import Image

    for c in range(3):
        png = out / "vis" / f"kmeans_cluster_{c}_gallery.png"
        width, height = Image.open(png).size
        assert height > width  # the average and four members below it, three views each
    assert "KMeans cluster galleries: 3 done" in output and "wrote 3 cluster galleries" in output
