"""Embeddings beyond memory (issue 15): row chunks, the streamed PCA, and the analysis steps out of core.

Out of core is forced on small data with ``scale.memory_gb=0``; the results must equal the
in-memory path's (ARI >= 0.99), which is what makes the 10^7-row path trustworthy.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
from conftest_analysis import grouped_embeddings, make_prediction_folder
from inprocess import run_cli
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from subtomo_embed.core import chunked, cluster, h5files
from subtomo_embed.core import visualize as V
from subtomo_embed.core.errors import InputDataError


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few hundred rows, so that every streamed function crosses chunk boundaries."""
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * 16 * 300)


def _h5_rows(tmp_path, x: np.ndarray) -> h5files.MergedRows:
    path = tmp_path / "embeddings.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=x, chunks=(min(64, len(x)), x.shape[1]))
    return h5files.MergedRows(path)


def test_streamed_pca_equals_scikit_learn_despite_a_large_offset(small_chunks):
    rng = np.random.default_rng(0)
    scales = np.linspace(3.0, 0.1, 16)  # distinct variances: unique axes
    x = (rng.standard_normal((2000, 16)) * scales + 50.0).astype(np.float32)  # mean far from 0
    pca = chunked.StreamedPCA.fit(x, 5)
    ref = PCA(n_components=5, svd_solver="full").fit(x.astype(np.float64))
    assert np.allclose(np.abs(pca.components @ ref.components_.T), np.eye(5), atol=1e-4)
    assert np.allclose(pca.explained_variance, ref.explained_variance_, rtol=1e-4)
    scores = pca.transform(x)
    ref_scores = ref.transform(x.astype(np.float64))
    signs = np.sign((scores * ref_scores).sum(axis=0))
    assert np.allclose(scores, ref_scores * signs, atol=2e-3)
    # the sign convention: each axis' largest loading is positive
    assert (pca.components[np.arange(5), np.abs(pca.components).argmax(axis=1)] > 0).all()


def test_streamed_pca_of_unit_rows_orders_as_cosine(small_chunks):
    x, _ = grouped_embeddings(600, 16, 3, seed=1)
    pca = chunked.StreamedPCA.fit(x, 16, normalize=True)
    z = pca.transform(x)  # all axes: a rotation of the unit rows
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    d_z = np.linalg.norm(z[:50, None] - z[None, :50], axis=2)
    d_unit = np.linalg.norm(unit[:50, None] - unit[None, :50], axis=2)
    assert np.allclose(d_z, d_unit, atol=1e-4)


def test_rows_on_demand_read_like_an_array(tmp_path, small_chunks):
    x = np.random.default_rng(2).standard_normal((1500, 16)).astype(np.float32)
    rows = _h5_rows(tmp_path, x)
    assert rows.shape == x.shape and len(rows) == 1500
    wanted = np.array([1499, 3, 3, 700, 0, 1024, 3])  # unsorted, repeated
    assert np.array_equal(chunked.take_rows(rows, wanted), x[wanted])
    assert np.array_equal(np.concatenate([c for _, c in chunked.iter_chunks(rows)]), x)
    starts = [s for s, _ in chunked.iter_chunks(rows)]
    assert len(starts) > 3 and starts == sorted(starts)


def test_nonfinite_rows_are_counted_across_chunks(small_chunks):
    x = np.zeros((1000, 16), dtype=np.float32)
    x[[410, 10, 999], 3] = [np.nan, np.inf, -np.inf]
    assert chunked.nonfinite_rows(x) == (3, 10)
    assert chunked.nonfinite_rows(np.ones((5, 2))) == (0, None)


def test_cluster_means_and_nearest_members_in_chunks_equal_the_direct_computation(small_chunks):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1200, 16)).astype(np.float32)
    labels = rng.integers(1, 5, 1200)
    labels[[5, 900]] = 7  # a small cluster split across chunks
    ids = np.array([1, 2, 3, 4, 7, 9])  # 9 is empty
    means = cluster.cluster_means(x, labels, ids)
    for i, c in enumerate(ids):
        expect = x[labels == c].mean(axis=0, dtype=np.float64) if (labels == c).any() else np.zeros(16)
        assert np.allclose(means[i], expect, atol=1e-5)
    nearest = cluster.nearest_to_centres(x, labels, ids, means, 10)
    for i, c in enumerate(ids):
        members = np.flatnonzero(labels == c)
        d = np.linalg.norm(x[members].astype(np.float64) - means[i], axis=1)
        assert np.array_equal(nearest[int(c)], members[np.argsort(d, kind="stable")[:10]])
    assert nearest[9].size == 0 and nearest[7].tolist() in ([5, 900], [900, 5])


def test_kmeans_seeded_on_a_sample_finds_the_same_clusters():
    x, truth = grouped_embeddings(3000, 16, 6, seed=5, spread=0.3)
    full, centres_full = cluster.kmeans(x.copy(), 6, seed=0)
    sampled, centres_sampled = cluster.kmeans(x.copy(), 6, seed=0, init_sample=500)
    assert adjusted_rand_score(full, sampled) >= 0.99 and adjusted_rand_score(truth, sampled) >= 0.99
    assert centres_sampled.shape == (6, 16)


@pytest.mark.slow  # compiling UMAP's and pynndescent's query functions takes most of a minute
def test_umap_fitted_on_a_sample_places_the_others_with_their_group():
    x, truth = grouped_embeddings(1500, 16, 4, seed=4, spread=0.2)
    coords = V.umap_sampled(x, 2, "euclidean", seed=0, sample=400)
    assert coords.shape == (1500, 2) and np.isfinite(coords).all()
    fitted = np.sort(np.random.default_rng(0).choice(1500, size=400, replace=False))
    rest = np.setdiff1d(np.arange(1500), fitted)
    # each placed point's nearest fitted point (in 2D) belongs to its own group
    d = np.linalg.norm(coords[rest][:, None] - coords[fitted][None], axis=2)
    agree = truth[fitted][d.argmin(axis=1)] == truth[rest]
    assert agree.mean() >= 0.98


def _config(root, pred, out, **scale):
    cfg = {
        "prediction_folder": str(pred),
        "clustering_kmeans": {"num_clusters": 4, "visualization": True},
        "clustering_spectral": {"num_clusters": 6, "estimate_num_clusters": True, "visualization": True},
        "visualization": {"prediction_folder": str(out / "vis"), "distance": "cosine"},
        "visualization_files": ["TS_01"],
    }
    if scale:
        cfg["scale"] = scale
    path = root / f"config_{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _clusters(folder, method):
    with h5py.File(folder / f"{method}_clusters.h5") as f:
        return f["clusters"][()], f["centers"][()]


@pytest.mark.slow  # eight analysis commands with UMAP (about a minute)
def test_out_of_core_steps_equal_the_in_memory_steps(tmp_path):
    pred = tmp_path / "pred"
    truth = make_prediction_folder(pred, counts=(150, 170, 160), dim=16, groups=4)["truth"]
    results = {}
    for name, scale in {"memory": {}, "chunked": {"memory_gb": 0, "working_dim": 8, "projection_sample": 300}}.items():
        out = tmp_path / name
        out.mkdir()
        cfg = _config(tmp_path, pred, out, **scale)
        for command in ("merge", "kmeans", "spectral", "visualize"):
            proc = run_cli([command, "-c", cfg, "--output-dir", out])
            assert proc.returncode == 0, proc.stderr
            if name == "chunked" and command == "kmeans":
                assert "read in chunks" in proc.stderr and "peak memory" in proc.stderr
        results[name] = {m: _clusters(out, m) for m in ("kmeans", "spectral")}
        assert (out / "vis" / "all_tomograms_umap.csv").is_file()
        assert (out / "vis" / "kmeans_distance_map.png").is_file()
        assert (out / "vis" / "distance_map_by_spectral.png").is_file()
    for method in ("kmeans", "spectral"):
        (a, centres_a), (b, centres_b) = results["memory"][method], results["chunked"][method]
        assert adjusted_rand_score(a, b) >= 0.99
        assert adjusted_rand_score(truth, b) >= 0.95
        assert centres_b.shape == centres_a.shape == (len(np.unique(b)), 16)  # centres in the embeddings' space
    # out of core the kmeans centres are the cluster means of the full embeddings
    merged = np.concatenate([h5py.File(pred / f"TS_{i:02d}_embeds.h5")["embeddings"][()].T for i in range(3)])
    labels, centres = results["chunked"]["kmeans"]
    for c in range(4):
        assert np.allclose(centres[c], merged[labels == c].mean(axis=0), atol=1e-5)


def test_a_nonfinite_row_out_of_core_is_a_one_line_error_naming_the_file(tmp_path):
    pred = tmp_path / "pred"
    make_prediction_folder(pred, counts=(40, 30), dim=16, groups=2)
    out = tmp_path / "out"
    out.mkdir()
    cfg = _config(tmp_path, pred, out, memory_gb=0)
    assert run_cli(["merge", "-c", cfg, "--output-dir", out]).returncode == 0
    with h5py.File(out / "embeddings.h5", "r+") as f:
        f["embeddings"][55, 2] = np.nan
    proc = run_cli(["kmeans", "-c", cfg, "--input-dir", out, "--output-dir", out])
    assert proc.returncode == 4
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("input error")]
    assert len(lines) == 1 and "embeddings.h5" in lines[0] and "first at row 55" in lines[0], proc.stderr
    assert not (out / "kmeans_clusters.h5").exists()


def test_rows_on_demand_name_the_file_when_a_read_fails(tmp_path):
    rows = _h5_rows(tmp_path, np.zeros((10, 4), dtype=np.float32))
    with pytest.raises(InputDataError, match="embeddings.h5"):
        rows[np.array([3, 1])]  # h5py wants increasing indices: the error names the file
