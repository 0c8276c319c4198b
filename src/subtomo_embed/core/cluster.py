"""Clustering of embeddings: KMeans and spectral clustering on a sparse k-NN graph.

Array in, array out; no files. Everything is seeded.

Spectral clustering follows CryoSiam (scikit-learn ``SpectralClustering`` with
``affinity='nearest_neighbors'``): a k-NN connectivity graph that includes each point itself,
symmetrized as ``0.5 * (C + C.T)``; the symmetric normalized Laplacian with its diagonal set to
1; its eigenvectors for the smallest eigenvalues divided by the square root of the degree; and
KMeans on those. Unlike ``SpectralClustering`` this never builds a dense N x N matrix, and one
eigen-solve gives both the eigengap estimate of k and the embedding:

- the graph is exact (scikit-learn) up to :data:`EXACT_KNN_MAX` points, approximate
  (pynndescent, seeded) above;
- the Laplacian spectrum is the union of its connected components' spectra, so each component
  is solved on its own: dense ``eigh`` when small, ARPACK's Lanczos (largest eigenvalues of
  ``I - L``, only sparse products, no factorization) when large. Solving per component keeps
  the repeated eigenvalue 0 of a disconnected graph exact, which Lanczos alone cannot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

EXACT_KNN_MAX = 20_000  # above this many points the k-NN graph is approximate (pynndescent)
DENSE_EIGH_MAX = 2_500  # connected components up to this size are solved densely
KMEANS_N_INIT = 10
KMEANS_MAX_ITER = 1000
KMEANS_INIT_SAMPLE = 200_000  # above this many rows, k-means++ seeds on a sample of this many


# --------------------------------------------------------------------------------------------
# KMeans


def kmeans(
    embeddings: np.ndarray,
    num_clusters: int,
    seed: int = 0,
    n_init: int = KMEANS_N_INIT,
    init_sample: int = KMEANS_INIT_SAMPLE,
) -> tuple[np.ndarray, np.ndarray]:
    """KMeans (k-means++ init, ``n_init`` seeded restarts). Returns 0-based labels [N] and centers [k, dim].

    Above ``init_sample`` rows each restart's k-means++ seeding runs on a seeded sample of that
    many rows (seeding costs O(N k) distance passes per restart, the bulk of the time at 10^6);
    Lloyd's iterations then run on every row, and the restart with the lowest inertia wins.
    To spare a copy of the data (4 GB at 10^6 x 1024), scikit-learn centres ``embeddings`` in
    place and restores them afterwards (``copy_x=False``): values may change in the last bit.
    """
    from sklearn.cluster import KMeans, kmeans_plusplus

    x = np.asarray(embeddings)
    n = x.shape[0]
    _check_k(n, num_clusters)

    def lloyd(init, restarts: int, random_state: int) -> KMeans:
        model = KMeans(
            n_clusters=num_clusters,
            init=init,
            n_init=restarts,
            max_iter=KMEANS_MAX_ITER,
            random_state=random_state,
            algorithm="lloyd",
            copy_x=False,
        )
        return model.fit(x)

    if n <= init_sample:
        model = lloyd("k-means++", n_init, seed)
    else:
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, size=init_sample, replace=False))]
        model = None
        for restart in range(n_init):
            centres, _ = kmeans_plusplus(sample, num_clusters, random_state=seed + restart)
            candidate = lloyd(centres, 1, seed + restart)
            if model is None or candidate.inertia_ < model.inertia_:
                model = candidate  # only the best restart's labels are kept
        assert model is not None
        log.info("KMeans: seeded on %d of %d rows, %d restarts", init_sample, n, n_init)
    labels = model.labels_
    log.info("KMeans: k=%d, inertia %.4g, %d iterations", num_clusters, model.inertia_, model.n_iter_)
    return labels.astype(np.int64), model.cluster_centers_.astype(np.float32)


def _check_k(n_samples: int, k: int) -> None:
    if k < 2:
        raise ValueError(f"the number of clusters must be at least 2, got {k}")
    if n_samples < k:
        raise ValueError(f"{n_samples} embeddings cannot make {k} clusters")


# --------------------------------------------------------------------------------------------
# spectral


@dataclass
class SpectralResult:
    labels: np.ndarray  # [N] 0-based cluster ids
    num_clusters: int  # k used (estimated or given)
    eigenvalues: np.ndarray  # smallest eigenvalues of the normalized Laplacian, ascending
    n_components: int  # connected components of the k-NN graph


def knn_affinity(embeddings: np.ndarray, n_neighbors: int = 10, seed: int = 0, exact_max: int = EXACT_KNN_MAX):
    """Sparse symmetric k-NN affinity ``0.5 * (C + C.T)``, with each point its own first neighbour (as scikit-learn)."""
    import scipy.sparse as sp

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    k = min(n_neighbors, n)
    if n <= exact_max:
        from sklearn.neighbors import kneighbors_graph

        conn = kneighbors_graph(x, n_neighbors=k, include_self=True, mode="connectivity")
    else:
        import pynndescent

        log.info("approximate %d-NN graph of %d points (pynndescent)", k, n)
        index = pynndescent.NNDescent(
            x, n_neighbors=max(k, 2 * k), random_state=seed, low_memory=True, n_jobs=-1, verbose=False
        )
        idx, _ = index.neighbor_graph
        idx = _self_first(idx, k)
        rows = np.repeat(np.arange(n), k)
        conn = sp.csr_matrix((np.ones(n * k, dtype=np.float64), (rows, idx.ravel())), shape=(n, n))
        conn.sum_duplicates()
        conn.data[:] = 1.0
    conn = conn.tocsr()
    return (0.5 * (conn + conn.T)).tocsr()


def _self_first(idx: np.ndarray, k: int) -> np.ndarray:
    """Neighbour lists with the point itself first (ties in NN-descent can push it back), cut to k."""
    n = idx.shape[0]
    own = np.arange(n)[:, None]
    valid = (idx != own) & (idx >= 0)
    order = np.argsort(~valid, axis=1, kind="stable")[:, : k - 1]
    others = np.take_along_axis(idx, order, axis=1)
    others = np.where(np.take_along_axis(valid, order, axis=1), others, own)  # too few: repeat self
    return np.concatenate([own, others], axis=1).astype(np.int64)


def normalized_laplacian(affinity):
    """Symmetric normalized Laplacian with unit diagonal, and sqrt-degrees (as scikit-learn's spectral_embedding)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import laplacian

    lap, dd = laplacian(affinity, normed=True, return_diag=True)
    lap = sp.csr_matrix(lap)
    lap.setdiag(1.0)
    return lap, dd


def laplacian_eigs(affinity, n_eigs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The ``n_eigs`` smallest eigenvalues (ascending) and eigenvectors [N, n_eigs] of the normalized Laplacian.

    Solved per connected component; returns (eigenvalues, eigenvectors, sqrt-degrees, number of components).
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    lap, dd = normalized_laplacian(affinity)
    n = lap.shape[0]
    n_comp, comp = connected_components(affinity, directed=False)
    if n_comp > 1:
        log.info("the k-NN graph has %d connected components", n_comp)
    rng = np.random.default_rng(seed)
    values: list[np.ndarray] = []
    vectors: list[tuple[np.ndarray, np.ndarray]] = []  # (indices, [n_c, m_c])
    order = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[order], np.arange(n_comp + 1))
    for c in range(n_comp):
        members = order[bounds[c] : bounds[c + 1]]
        m = min(n_eigs, members.size)
        sub = lap if n_comp == 1 else lap[members][:, members]
        if members.size <= DENSE_EIGH_MAX:
            from scipy.linalg import eigh

            w, v = eigh(sub.toarray(), subset_by_index=(0, m - 1))
        else:
            from scipy.sparse.linalg import eigsh

            # largest eigenvalues of I - L (spectrum in [-1, 1]); no factorization needed
            shifted = sp.identity(members.size, format="csr") - sub
            v0 = rng.uniform(-1, 1, members.size)
            w, v = eigsh(shifted, k=m, which="LA", v0=v0, tol=1e-8, maxiter=max(5000, 20 * members.size))
            w = 1.0 - w
            keep = np.argsort(w)
            w, v = w[keep], v[:, keep]
        values.append(w)
        vectors.append((members, v))
    all_values = np.concatenate(values)
    owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(values)])
    column = np.concatenate([np.arange(len(w)) for w in values])
    pick = np.argsort(all_values, kind="stable")[:n_eigs]
    eigvec = np.zeros((n, len(pick)), dtype=np.float64)
    for j, p in enumerate(pick):
        members, v = vectors[owner[p]]
        eigvec[members, j] = v[:, column[p]]
    return np.clip(all_values[pick], 0.0, None), eigvec, dd, n_comp


def eigengap_k(eigenvalues: np.ndarray, max_k: int) -> int:
    """k at the largest gap between consecutive smallest eigenvalues, 2 <= k <= max_k.

    ``eigenvalues`` ascending, at least ``max_k + 1`` of them so that k = max_k can be chosen
    (CryoSiam looks at ``max_k`` values only and so can never return ``max_k``). A largest gap
    after the first eigenvalue (k = 1, one cluster) is skipped: clustering needs two.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)[: max_k + 1]
    if ev.size < 3:
        return min(2, max_k)
    gaps = np.diff(ev)  # gaps[i] = ev[i+1] - ev[i]  -> k = i + 1
    if int(np.argmax(gaps)) == 0:
        log.warning("largest eigengap says one cluster; taking the best k >= 2 instead")
    k = int(np.argmax(gaps[1:])) + 2
    return min(k, max_k)


def spectral_embedding_maps(eigvec: np.ndarray, dd: np.ndarray, k: int) -> np.ndarray:
    """scikit-learn's spectral embedding: eigenvectors / sqrt-degree, deterministic signs."""
    maps = eigvec[:, :k] / dd[:, None]
    signs = np.sign(maps[np.argmax(np.abs(maps), axis=0), np.arange(maps.shape[1])])
    signs[signs == 0] = 1
    return maps * signs


def spectral(
    embeddings: np.ndarray,
    num_clusters: int,
    estimate_num_clusters: bool = False,
    n_neighbors: int = 10,
    seed: int = 0,
    exact_max: int = EXACT_KNN_MAX,
) -> SpectralResult:
    """Spectral clustering on a sparse k-NN graph; with ``estimate_num_clusters`` k is chosen by the eigengap.

    ``num_clusters`` is k, or its upper bound when estimating. Labels are 0-based here.
    """
    from sklearn.cluster import k_means

    x = np.asarray(embeddings)
    n = x.shape[0]
    _check_k(n, num_clusters)
    affinity = knn_affinity(x, n_neighbors=n_neighbors, seed=seed, exact_max=exact_max)
    n_eigs = min(n, num_clusters + 1) if estimate_num_clusters else num_clusters
    eigenvalues, eigvec, dd, n_comp = laplacian_eigs(affinity, n_eigs, seed=seed)
    k = eigengap_k(eigenvalues, num_clusters) if estimate_num_clusters else num_clusters
    if estimate_num_clusters:
        log.info("eigengap estimate: k=%d (smallest eigenvalues %s)", k, " ".join(f"{v:.4g}" for v in eigenvalues))
    maps = spectral_embedding_maps(eigvec, dd, k)
    _, labels, _ = k_means(maps, k, random_state=seed, n_init=KMEANS_N_INIT)
    return SpectralResult(labels.astype(np.int64), k, eigenvalues, n_comp)


# --------------------------------------------------------------------------------------------
# helpers for outputs


def cluster_means(embeddings, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean embedding of each cluster id in ``ids`` (rows in that order), in one pass over row chunks
    (``embeddings``: an array or rows read on demand)."""
    from .chunked import iter_chunks

    labels, ids = np.asarray(labels), np.asarray(ids)
    sums = np.zeros((len(ids), int(embeddings.shape[1])), dtype=np.float64)
    counts = np.zeros(len(ids), dtype=np.int64)
    for start, chunk in iter_chunks(embeddings):
        part = labels[start : start + len(chunk)]
        for i, c in enumerate(ids):
            sel = part == c
            if sel.any():
                sums[i] += chunk[sel].sum(axis=0, dtype=np.float64)
                counts[i] += int(sel.sum())
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def nearest_to_centres(
    embeddings, labels: np.ndarray, ids: np.ndarray, centres: np.ndarray, n: int
) -> dict[int, np.ndarray]:
    """For each cluster id, the row indices of its (up to) ``n`` members nearest its centre, nearest
    first (ties: lower row first); one pass over row chunks, at most ``n`` candidates kept per cluster."""
    from .chunked import iter_chunks

    labels = np.asarray(labels)
    best = {int(c): (np.zeros(0), np.zeros(0, dtype=np.int64)) for c in ids}
    for start, chunk in iter_chunks(embeddings):
        part = labels[start : start + len(chunk)]
        for c, centre in zip(ids, centres):
            sel = np.flatnonzero(part == c)
            if sel.size == 0:
                continue
            d = np.linalg.norm(chunk[sel].astype(np.float64) - np.asarray(centre, dtype=np.float64)[None, :], axis=1)
            dist = np.concatenate([best[int(c)][0], d])
            rows = np.concatenate([best[int(c)][1], start + sel])
            keep = np.argsort(dist, kind="stable")[:n]
            best[int(c)] = (dist[keep], rows[keep])
    return {c: rows for c, (_, rows) in best.items()}
