"""The package's own HDF5 containers: ``<stem>_patches.h5`` (extract -> embed), whose patches the
extraction workers write straight into the file, and the merged ``embeddings.h5``.

The generic HDF5 reading (and its one error translation) is :func:`.io.open_h5`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from . import layout
from .errors import InputDataError
from .io import FINGERPRINT_ATTR, atomic_output, dataset, open_h5, open_h5_file, read_sized

if TYPE_CHECKING:
    import pandas as pd


# --------------------------------------------------------------------------------------------
# datasets written from outside h5py


def create_contiguous_dataset(group: h5py.Group, name: str, shape: tuple[int, ...], dtype) -> int | None:
    """A contiguous, uncompressed dataset whose space is allocated now (not filled); returns the
    byte offset of its data in the file, where other processes may write it directly (little-endian,
    C order), or None when it holds no data."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dataset = group.create_dataset(name, shape=shape, dtype=np.dtype(dtype).newbyteorder("<"), dcpl=dcpl)
    return dataset.id.get_offset()


def write_into_file(path: str | os.PathLike, at: int, data: np.ndarray) -> None:
    """Write ``data``'s bytes at byte ``at`` of ``path`` (a contiguous dataset's data block, from
    :func:`create_contiguous_dataset`), from any process."""
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_NOFOLLOW)
    try:
        if os.pwrite(fd, np.ascontiguousarray(data).data.cast("B"), at) != data.nbytes:
            raise OSError(errno.ENOSPC, "short write")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# patches files (extract -> embed)


@dataclass
class PatchesFile:
    """What a ``<stem>_patches.h5`` holds, but the patches themselves."""

    path: Path
    stem: str
    table: pd.DataFrame  # the regions rows, one per patch
    count: int
    stamp: str  # the extraction's fingerprint
    tomogram_shape: tuple[int, ...] | None
    voxel_size: tuple[float, ...] | None
    patch_shape: tuple[int, ...] = ()  # z, y, x of every patch


def write_patches_file(
    path: Path,
    shape: tuple[int, ...],
    columns: dict[str, np.ndarray],
    attrs: dict,
    fill: Callable[[Path, int | None], None],
) -> None:
    """``patches`` [N, z, y, x] float32 + ``regions/<column>``. The dataset is contiguous and its space
    allocated up front, so ``fill(file, byte offset)`` (other processes) writes each patch straight to
    its place in the file; the rest is written after it."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            offset = create_contiguous_dataset(f, "patches", shape, np.float32)
            if shape[0]:
                f.flush()
                fill(tmp, offset)
            group = f.create_group("regions")
            for column, values in columns.items():
                group.create_dataset(column, data=values)
            f.attrs["columns"] = json.dumps(list(columns))
            for k, v in attrs.items():
                f.attrs[k] = v


def read_patches_file(path: Path) -> PatchesFile:
    import pandas as pd

    with open_h5(path) as f:
        if "patches" not in f or "regions" not in f or "columns" not in f.attrs:
            raise InputDataError("not a patches file (needs datasets 'patches' and group 'regions')", path)
        if not isinstance(f["regions"], h5py.Group):
            raise InputDataError("'regions' is an HDF5 dataset, not a group", path)
        count = dataset(f, "patches").shape[0]
        names = json.loads(f.attrs["columns"])
        short = [c for c in names if len(dataset(f["regions"], c).shape) != 1 or dataset(f["regions"], c).size != count]
        if short:  # checked before anything is read
            raise InputDataError(f"regions column '{short[0]}' does not have one value per patch ({count})", path)
        columns = {c: dataset(f["regions"], c)[()] for c in names}
        table = pd.DataFrame(columns)
        stem = layout.safe_stem(f.attrs.get("stem", ""), path)
        shape = tuple(int(n) for n in f.attrs["tomogram_shape"]) if "tomogram_shape" in f.attrs else None
        voxel = tuple(float(v) for v in f.attrs["voxel_size"]) if "voxel_size" in f.attrs else None
        patches = dataset(f, "patches")
        if patches.ndim != 4:
            raise InputDataError(f"dataset 'patches' must be 4D [N, z, y, x], got shape {patches.shape}", path)
        return PatchesFile(
            path,
            stem,
            table,
            patches.shape[0],
            str(f.attrs.get(FINGERPRINT_ATTR, "")),
            shape,
            voxel,
            tuple(patches.shape[1:]),
        )


def iter_patches_file(path: Path, chunk: int = 32) -> Iterator[np.ndarray]:
    """The patches of a patches file in order, read ``chunk`` at a time."""
    with open_h5(path) as f:
        ds = dataset(f, "patches")
        for start in range(0, ds.shape[0], chunk):
            yield from ds[start : start + chunk]


# --------------------------------------------------------------------------------------------
# merged embeddings (CryoSiam's embeddings.h5, rows instead of columns, + names and labels)

MAX_TOMOGRAMS = 10**6  # entries of number_of_samples a merged file may hold


class MergedRows:
    """The rows of ``embeddings.h5``'s ``embeddings``, read on demand (the file stays open): for
    merged embeddings larger than memory. Indexing returns float32 arrays; a read that fails is an
    :class:`InputDataError` naming the file."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open_h5_file(path)
        self._rows = dataset(self._file, "embeddings")
        self.shape: tuple[int, ...] = tuple(self._rows.shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        try:
            return np.asarray(self._rows[key], dtype=np.float32)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputDataError(f"cannot read the embeddings ({err})", self.path) from None


@dataclass
class MergedContents:
    embeddings: np.ndarray | MergedRows  # [N, dim] float32; rows read on demand when larger than memory
    counts: np.ndarray  # number_of_samples: instances per tomogram
    stems: list[str] | None  # None in CryoSiam's files
    labels: np.ndarray | None
    key: str | None  # the fingerprint of the merge's inputs


def write_merged_embeddings(
    path: Path,
    tomogram_rows: Iterable[np.ndarray],
    counts: Sequence[int],
    dim: int,
    stems: list[str],
    labels: np.ndarray,
    attrs: dict,
    then: Callable[[], None] | None = None,
) -> None:
    """``embeddings.h5`` streamed from each tomogram's rows [n, dim]; ``then`` (the table) is written
    inside the same atomic block, so when either fails neither file is left."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            total = int(sum(counts))
            ds = f.create_dataset("embeddings", shape=(total, dim), dtype=np.float32, chunks=(min(total, 4096), dim))
            start = 0
            for rows in tomogram_rows:
                ds[start : start + len(rows)] = rows
                start += len(rows)
            f.create_dataset("number_of_samples", data=np.asarray(counts, dtype=np.int64))
            f.create_dataset("tomograms", data=np.asarray(stems, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("labels", data=labels)
            for k, v in attrs.items():
                f.attrs[k] = v
        if then is not None:
            then()


def read_merged_embeddings(path: Path, max_bytes: float = float("inf")) -> MergedContents:
    """Everything in ``embeddings.h5``; the embeddings themselves as :class:`MergedRows` when their
    float32 size exceeds ``max_bytes``."""
    with open_h5(path) as f:
        emb = dataset(f, "embeddings")
        counts = dataset(f, "number_of_samples")
        if emb.ndim != 2:
            raise InputDataError(f"dataset 'embeddings' must be 2D [N, dim], got shape {emb.shape}", path)
        if counts.ndim != 1 or counts.size > MAX_TOMOGRAMS:  # checked before anything is read
            raise InputDataError(
                f"dataset 'number_of_samples' has shape {counts.shape}: one count per tomogram, at most "
                f"{MAX_TOMOGRAMS:,}",
                path,
            )
        names = read_sized(f, "tomograms", counts.size, "counts in number_of_samples") if "tomograms" in f else None
        stems = None if names is None else [layout.safe_stem(s, path) for s in np.ravel(names)]
        key = f.attrs.get(FINGERPRINT_ATTR)
        in_memory = 4.0 * emb.shape[0] * emb.shape[1] <= max_bytes
        return MergedContents(
            np.asarray(emb[()], dtype=np.float32) if in_memory else MergedRows(path),
            np.asarray(counts[()], dtype=np.int64).ravel(),
            stems,
            np.asarray(read_sized(f, "labels", emb.shape[0]), dtype=np.int64) if "labels" in f else None,
            None if key is None else (key.decode() if isinstance(key, bytes) else str(key)),
        )
