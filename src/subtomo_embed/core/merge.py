"""Merging per-tomogram embeddings: validation and the tidy instance table.

Array in, array out (the file loop lives in ``stages.merging``, the file format in ``core.io``).
The merged layout is CryoSiam's ``embeddings.h5`` (``embeddings`` [N_total, dim],
``number_of_samples`` per tomogram, tomograms in sorted stem order) plus ``tomograms``, ``labels``
and a fingerprint of the inputs in the root attributes, so a merge is rebuilt whenever an input
changes (CryoSiam reused any ``embeddings.h5`` it found, even a stale one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .chunked import nonfinite_rows

TABLE_KEYS = ["tomogram", "label", "row"]


class MergeInputError(ValueError):
    """An input is inconsistent; the caller names the file (``about``: which input is wrong)."""

    def __init__(self, message: str, about: str = "embeddings"):
        super().__init__(message)
        self.about = about


def embedding_rows(embeds: np.ndarray, dim: int | None = None) -> np.ndarray:
    """CryoSiam's per-tomogram ``embeddings`` [dim, N] as float32 rows [N, dim], validated.

    Raises :class:`MergeInputError` for a wrong shape, a dimension other than ``dim``, or
    non-finite values.
    """
    arr = np.asarray(embeds)
    if arr.ndim != 2:
        raise MergeInputError(f"dataset 'embeddings' must be 2D [dim, N], got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise MergeInputError(f"embedding dimension {arr.shape[0]} differs from the other tomograms' {dim}")
    if arr.dtype.kind not in "fiu":
        raise MergeInputError(f"dataset 'embeddings' has a non-numeric type {arr.dtype}")
    rows = np.ascontiguousarray(arr.T, dtype=np.float32)
    check_finite(rows)
    return rows


def check_finite(rows) -> None:
    """Rows [N, dim] (an array, or rows read on demand) hold only finite values."""
    n_rows, first = nonfinite_rows(rows)
    if n_rows:
        raise MergeInputError(f"embeddings contain NaN or infinite values ({n_rows} instances, first at row {first})")


def align_regions(regions: pd.DataFrame, labels: np.ndarray | None, n: int) -> pd.DataFrame:
    """Regions rows in embedding order: row i describes embedding i.

    With the instance labels (``<stem>_instance_labels.h5``) the rows are looked up by label;
    without, the table's own order is taken (the engine's contract). The number of rows must
    match the number of embeddings.
    """
    if labels is None:
        if len(regions) != n:
            raise MergeInputError(f"regions table has {len(regions)} rows but there are {n} embeddings", "regions")
        return regions.reset_index(drop=True)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if labels.size != n:
        raise MergeInputError(f"{labels.size} instance labels but {n} embeddings", "labels")
    if len(regions) == n and np.array_equal(regions["label"].to_numpy(np.int64), labels):
        return regions.reset_index(drop=True)
    if regions["label"].duplicated().any():
        raise MergeInputError("regions table has duplicate labels", "regions")
    indexed = regions.set_index("label", drop=False)
    missing = np.setdiff1d(labels, indexed.index.to_numpy())
    if missing.size:
        raise MergeInputError(f"regions table lacks labels {missing[:5].tolist()} of the embedded instances", "regions")
    return indexed.loc[labels].reset_index(drop=True)


def tidy_table(stems: Sequence[str], regions: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per instance: tomogram, label, row (index into the merged embeddings), regions columns."""
    parts = []
    start = 0
    for stem, reg in zip(stems, regions):
        n = len(reg)
        part = pd.DataFrame({"tomogram": [stem] * n, "label": reg["label"].to_numpy(np.int64)})
        part["row"] = np.arange(start, start + n, dtype=np.int64)
        rest = reg.drop(columns=["label"]).reset_index(drop=True)
        parts.append(pd.concat([part, rest], axis=1))
        start += n
    if not parts:
        return pd.DataFrame(columns=TABLE_KEYS)
    return pd.concat(parts, ignore_index=True)


def offsets(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Start row of each tomogram (and the total at the end)."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
