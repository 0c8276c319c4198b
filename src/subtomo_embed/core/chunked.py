"""Embeddings too large for memory: row chunks of an array or an HDF5 dataset, and a streamed PCA.

The merged embeddings are ``[N, dim]`` rows. Up to a memory budget they are one NumPy array;
beyond it they stay in ``embeddings.h5`` (an ``h5py.Dataset``) and every step reads them in row
chunks of about :data:`CHUNK_BYTES`. Both kinds go through the same functions here, so a step has
one code path whatever the size.

:class:`StreamedPCA` is exact PCA in one pass: the column sums and the Gram matrix are
accumulated chunk by chunk (rows shifted by the first chunk's mean, so that float32 products
lose nothing to a large common offset), the covariance is eigendecomposed, and the signs follow
scikit-learn's convention (the largest loading of each component positive). The clustering and
the projections of a 10^7-row file then run on ``[N, working_dim]`` scores, 16 times smaller at
1024 -> 64.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 2**20  # rows read at a time (64 MiB of float32)
MAX_POINT_READ = 1024  # rows per HDF5 point selection (h5py selects each listed row on its own)


def rows_per_chunk(dim: int) -> int:
    return max(256, CHUNK_BYTES // (4 * max(1, dim)))


def iter_chunks(x: Any, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, float32 rows)`` of ``x`` (array or HDF5 dataset) in order, about 64 MiB at a time."""
    n = int(x.shape[0])
    step = rows or rows_per_chunk(int(x.shape[1]))
    for start in range(0, n, step):
        yield start, np.asarray(x[start : start + step], dtype=np.float32)


def take_rows(x: Any, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` as float32, in the order of ``rows``, for an array or an HDF5 dataset."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(x, np.ndarray):
        return np.asarray(x[rows], dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    unique, inverse = np.unique(ordered, return_inverse=True)
    parts = [np.asarray(x[unique[s : s + MAX_POINT_READ]]) for s in range(0, unique.size, MAX_POINT_READ)]
    block = np.concatenate(parts) if parts else np.zeros((0, int(x.shape[1])), dtype=np.float32)
    out = np.empty((rows.size, int(x.shape[1])), dtype=np.float32)
    out[order] = block[inverse]
    return out


def normalized_rows(chunk: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): Euclidean distance then orders as cosine does."""
    norms = np.linalg.norm(chunk, axis=1, keepdims=True)
    return chunk / np.where(norms > 0, norms, 1.0)


@dataclass
class StreamedPCA:
    """PCA fitted in one pass over row chunks; ``transform`` streams too."""

    mean: np.ndarray  # [dim] float64
    components: np.ndarray  # [d, dim] float64, rows are principal axes
    explained_variance: np.ndarray  # [d]
    explained_variance_ratio: np.ndarray  # [d]
    normalize: bool = False  # rows scaled to unit length first (cosine)

    @classmethod
    def fit(cls, x: Any, n_components: int, normalize: bool = False) -> StreamedPCA:
        n, dim = int(x.shape[0]), int(x.shape[1])
        if n < 2:
            raise ValueError("PCA needs at least two rows")
        shift: np.ndarray | None = None
        total = np.zeros(dim, dtype=np.float64)
        gram = np.zeros((dim, dim), dtype=np.float64)
        for _, chunk in iter_chunks(x):
            if normalize:
                chunk = normalized_rows(chunk)
            if shift is None:
                shift = chunk.mean(axis=0, dtype=np.float64).astype(np.float32)
            centred = chunk - shift
            total += centred.sum(axis=0, dtype=np.float64)
            gram += (centred.T @ centred).astype(np.float64)
        assert shift is not None
        offset = total / n
        cov = (gram - n * np.outer(offset, offset)) / (n - 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
        d = max(1, min(n_components, dim))
        components = vectors[:, :d].T
        signs = np.sign(components[np.arange(d), np.argmax(np.abs(components), axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]
        total_var = values.sum()
        ratio = values[:d] / total_var if total_var > 0 else np.zeros(d)
        return cls(shift.astype(np.float64) + offset, components, values[:d], ratio, normalize)

    def transform_rows(self, chunk: np.ndarray) -> np.ndarray:
        rows = normalized_rows(chunk) if self.normalize else chunk
        return (rows.astype(np.float64) - self.mean) @ self.components.T

    def transform(self, x: Any) -> np.ndarray:
        """Scores ``[N, d]`` float32 of every row of ``x``, chunk by chunk."""
        out = np.empty((int(x.shape[0]), self.components.shape[0]), dtype=np.float32)
        for start, chunk in iter_chunks(x):
            out[start : start + len(chunk)] = self.transform_rows(chunk)
        return out


def reduce(x: Any, n_components: int, normalize: bool = False) -> np.ndarray:
    """``x`` projected on its first ``n_components`` principal axes (float32), fitted and applied in chunks."""
    pca = StreamedPCA.fit(x, n_components, normalize)
    kept = float(pca.explained_variance_ratio.sum())
    log.info(
        "PCA of %d x %d embeddings to %d dimensions: %.1f %% of the variance kept",
        x.shape[0],
        x.shape[1],
        pca.components.shape[0],
        100 * kept,
    )
    return pca.transform(x)


def nonfinite_rows(x: Any) -> tuple[int, int | None]:
    """How many rows hold NaN or infinity, and the first of them (None when all are finite)."""
    count, first = 0, None
    for start, chunk in iter_chunks(x):
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            first = start + int(np.argmax(bad)) if first is None else first
    return count, first


def peak_memory_gb() -> float:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
