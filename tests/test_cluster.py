"""core.cluster: KMeans and sparse spectral clustering recover known groups; the eigengap finds k."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest_analysis import grouped_embeddings
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score

from subtomo_embed.core import cluster as C


@pytest.fixture(scope="module")
def blobs():
    x, truth = grouped_embeddings(600, 24, 5, seed=3, spread=0.2)
    return x, truth


@pytest.fixture(scope="module")
def touching():
    """Overlapping groups: one connected k-NN graph, so the solver works on a single component."""
    x, truth = make_blobs(1200, centers=4, n_features=32, cluster_std=6.0, random_state=7)
    return x.astype(np.float32), truth


def test_kmeans_recovers_groups(blobs):
    x, truth = blobs
    labels, centers = C.kmeans(x, 5, seed=0)
    assert adjusted_rand_score(truth, labels) >= 0.95
    assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(5))  # 0-based
    assert centers.shape == (5, x.shape[1])
    again, _ = C.kmeans(x, 5, seed=0)
    assert np.array_equal(labels, again)


def test_spectral_recovers_groups_and_is_deterministic(touching):
    x, truth = touching
    result = C.spectral(x, 4, seed=0)
    assert result.n_components == 1
    assert adjusted_rand_score(truth, result.labels) >= 0.95
    assert set(np.unique(result.labels)) == set(range(4))
    assert np.array_equal(result.labels, C.spectral(x, 4, seed=0).labels)


def test_spectral_agrees_with_sklearn_nearest_neighbors(touching):
    """CryoSiam's clustering is sklearn SpectralClustering(affinity='nearest_neighbors', n_neighbors=10)."""
    from sklearn.cluster import SpectralClustering

    x, _ = touching
    theirs = SpectralClustering(n_clusters=4, affinity="nearest_neighbors", n_neighbors=10, random_state=1).fit_predict(
        x
    )
    ours = C.spectral(x, 4, n_neighbors=10, seed=0).labels
    assert adjusted_rand_score(theirs, ours) >= 0.95


def test_spectral_separates_non_convex_groups():
    x, truth = make_moons(800, noise=0.05, random_state=0)
    x = np.hstack([x, np.zeros((800, 3))]).astype(np.float32)
    assert adjusted_rand_score(truth, C.spectral(x, 2, seed=0).labels) >= 0.95


@pytest.mark.parametrize("groups", [3, 5])
def test_eigengap_estimates_k(groups):
    x, truth = grouped_embeddings(500, 16, groups, seed=groups, spread=0.25)
    result = C.spectral(x, 8, estimate_num_clusters=True, seed=0)
    assert result.num_clusters == groups
    assert adjusted_rand_score(truth, result.labels) >= 0.95
    assert result.eigenvalues.shape == (9,)  # upper bound + 1
    assert np.all(np.diff(result.eigenvalues) >= -1e-9)


def test_eigengap_estimate_on_one_connected_graph(touching):
    x, _ = touching
    assert C.spectral(x, 8, estimate_num_clusters=True, seed=0).num_clusters == 4


def test_eigengap_k_rules():
    ev = np.array([0, 0.01, 0.02, 0.5, 0.55, 0.6])
    assert C.eigengap_k(ev, 5) == 3
    # the upper bound itself can be chosen when max_k + 1 eigenvalues are given
    assert C.eigengap_k(np.array([0, 0.01, 0.02, 0.03, 0.9]), 4) == 4
    # a largest gap after the first eigenvalue (one cluster) is skipped
    assert C.eigengap_k(np.array([0, 0.9, 0.95, 1.3, 1.31]), 4) == 3


def test_affinity_is_sparse_and_symmetric(touching):
    x, _ = touching
    a = C.knn_affinity(x, 10)
    assert sp.issparse(a)
    assert a.nnz <= 2 * 10 * x.shape[0]
    assert abs(a - a.T).max() == 0
    assert np.allclose(a.diagonal(), 1.0)  # each point its own neighbour, as sklearn


def test_laplacian_of_disconnected_graph_has_one_zero_per_component(blobs):
    x, _ = blobs
    a = C.knn_affinity(x, 10)
    values, vectors, dd, n_comp = C.laplacian_eigs(a, 8)
    assert n_comp == 5
    assert np.allclose(values[:5], 0, atol=1e-8) and values[5] > 0.05
    assert vectors.shape == (x.shape[0], 8)


def test_large_component_uses_sparse_solver(monkeypatch, touching):
    x, truth = touching
    monkeypatch.setattr(C, "DENSE_EIGH_MAX", 100)  # force ARPACK on the 1200-node component
    assert adjusted_rand_score(truth, C.spectral(x, 4, seed=0).labels) >= 0.95


@pytest.mark.slow  # ~1 min: pynndescent on enough points to leave the exact graph
def test_approximate_knn_graph_clusters_the_same(touching):
    x, truth = touching
    result = C.spectral(x, 4, seed=0, exact_max=100)  # pynndescent path
    assert adjusted_rand_score(truth, result.labels) >= 0.95


def test_self_first_repairs_neighbour_lists():
    idx = np.array([[1, 0, 2], [1, 2, 0], [2, 2, 2]])
    out = C._self_first(idx, 3)
    assert out[:, 0].tolist() == [0, 1, 2]
    assert out[0].tolist() == [0, 1, 2] and out[1].tolist() == [1, 2, 0]
    assert out[2].tolist() == [2, 2, 2]


@pytest.mark.parametrize("n, k", [(10, 1), (3, 5)])
def test_bad_cluster_counts(n, k):
    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    with pytest.raises(ValueError):
        C.kmeans(x, k)
    with pytest.raises(ValueError):
        C.spectral(x, k)


def test_cluster_means_and_nearest(blobs):
    x, truth = blobs
    ids = np.arange(5)
    means = C.cluster_means(x, truth, ids)
    assert np.allclose(means[2], x[truth == 2].mean(axis=0), atol=1e-5)
    nearest = C.nearest_to_centres(x, truth, ids, means, 4)
    for c in ids:
        rows = nearest[int(c)]
        assert len(rows) == 4 and np.all(truth[rows] == c)
        d = np.linalg.norm(x[truth == c] - means[c], axis=1)
        assert np.isclose(np.linalg.norm(x[rows[0]] - means[c]), d.min(), atol=1e-5)
