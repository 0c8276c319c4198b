"""Volumes on disk: MRC tomograms and label volumes, and instance masks (CryoSiam's HDF5
``instances`` or an MRC label volume). Inputs are opened read-only, outputs written through
:func:`.io.atomic_output`; a volume's shape and data type are checked before its data are read.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from . import layout
from .errors import InputDataError
from .io import _short, atomic_output, dataset, open_h5

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# MRC


def open_mrc_volume(path: str | Path) -> tuple[np.ndarray, float]:
    """Open a 3D MRC/REC volume memory-mapped and read-only; return (data z,y,x, voxel size in Å).

    The header is validated; a corrupt or truncated file, 2D data or an unsupported mode
    is an :class:`InputDataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError("file does not exist", path)
    if not os.access(path, os.R_OK):
        raise InputDataError("file is not readable", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except (ValueError, OSError, EOFError) as err:
        raise InputDataError(f"not a readable MRC file ({_short(err)})", path) from None
    if mrc.data is None:
        raise InputDataError("MRC header is corrupt or the file is truncated (no data block)", path)
    try:
        expected = int(mrc.header.nx) * int(mrc.header.ny) * int(mrc.header.nz)
    except (ValueError, TypeError):
        expected = -1
    data = mrc.data
    if data.size != expected:
        raise InputDataError(
            f"MRC data has {data.size} voxels but the header promises {expected}: truncated or corrupt", path
        )
    if data.ndim != 3 or min(data.shape) < 1 or (mrc.header.nz <= 1):
        raise InputDataError(f"expected a 3D volume, got shape {tuple(data.shape)}", path)
    if data.dtype.kind not in "iuf":
        raise InputDataError(f"unsupported MRC data type {data.dtype} (mode {int(mrc.header.mode)})", path)
    _check_mrc_layout(path, mrc.header, data)
    x = float(mrc.voxel_size.x)
    voxel = x if np.isfinite(x) and x > 0 else 1.0  # never inf or NaN into an output's header
    return data, voxel


def _check_mrc_layout(path: Path, header, data: np.ndarray) -> None:
    """The facts mrcfile's validator checks that the reader does not: the file is exactly header +
    extended header + data (a mode that disagrees with the data makes it larger), and the axis map
    (mapc, mapr, maps) is a permutation of 1, 2, 3."""
    described = 1024 + int(header.nsymbt) + int(data.nbytes)
    size = path.stat().st_size
    if size != described:
        raise InputDataError(
            f"MRC file is {size} bytes but its header (mode {int(header.mode)}, {data.dtype}, "
            f"{'x'.join(str(n) for n in data.shape[::-1])} voxels) describes {described}: the mode does not "
            "match the data, or the file is corrupt",
            path,
        )
    axes = sorted(int(header[k]) for k in ("mapc", "mapr", "maps"))
    if axes != [1, 2, 3]:
        found = ", ".join(str(int(header[k])) for k in ("mapc", "mapr", "maps"))
        raise InputDataError(f"MRC axis map (mapc, mapr, maps) is {found}, not a permutation of 1, 2, 3", path)


def mrc_voxel_size(path: str | Path) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x, Å) in an MRC header, or None (with a warning) when it is not one:
    0 (unset), negative, NaN or Inf on an axis. Never a made-up 1 Å: Å coordinates computed from
    it would be silently wrong."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                v = mrc.voxel_size
                values = (float(v.z), float(v.y), float(v.x))
    except (ValueError, OSError, EOFError) as err:
        raise InputDataError(f"not a readable MRC file ({_short(err)})", path) from None
    if not all(np.isfinite(v) and v > 0 for v in values):
        log.warning(
            "%s: the MRC header's voxel size (%s Å) is not a size: nothing is converted to Å with it",
            path,
            ", ".join(f"{v:g}" for v in values),
        )
        return None
    z, y, x = values
    return z, y, x


def write_mrc(path: str | Path, data: np.ndarray, voxel_size: float = 1.0) -> None:
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = voxel_size


# --------------------------------------------------------------------------------------------
# instance masks


def find_mask(mask_folder: Path, stem: str, file_extension: str, suffix: str = "") -> Path | None:
    for candidate in layout.mask_candidates(mask_folder, stem, file_extension, suffix):
        if candidate.is_file():
            return candidate
    return None


def read_instance_mask(path: str | Path, tomogram: tuple[tuple[int, ...], Path] | None = None) -> np.ndarray:
    """Read an instance mask (CryoSiam HDF5 dataset ``instances``, or an MRC label volume).

    Returns the labels in memory as a non-negative integer array. A float mask, negative
    labels or a non-3D mask is an :class:`InputDataError`; so is a mask whose shape differs from
    ``tomogram`` (its shape, its path). Shape and data type are checked from the header, before any
    data is read: a small file that declares a huge volume is refused without allocating it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError("mask file does not exist", path)
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        with open_h5(path) as f:
            if "instances" not in f:
                raise InputDataError("HDF5 mask has no dataset 'instances'", path)
            found = dataset(f, "instances")
            _check_mask_layout(path, tuple(found.shape), found.dtype, tomogram)
            mask = found[()]
    else:
        data, _ = open_mrc_volume(path)
        _check_mask_layout(path, tuple(data.shape), data.dtype, tomogram)
        mask = np.asarray(data)
    if mask.dtype.kind == "i" and mask.size and mask.min() < 0:
        raise InputDataError(f"mask has negative labels (minimum {int(mask.min())})", path)
    if mask.dtype == np.uint64 and mask.size and int(mask.max()) > np.iinfo(np.int64).max:
        raise InputDataError(
            f"mask has labels beyond a 64-bit signed integer (maximum {int(mask.max())}); relabel from 1", path
        )
    return mask


def _check_mask_layout(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, tomogram: tuple[tuple[int, ...], Path] | None
) -> None:
    """A mask's declared shape and data type, checked before its data are read."""
    if len(shape) != 3:
        raise InputDataError(f"mask must be a 3D label volume, got shape {shape}", path)
    if tomogram is not None and shape != tuple(tomogram[0]):
        raise InputDataError(
            f"mask shape {shape} differs from its tomogram's {tuple(tomogram[0])} ({Path(tomogram[1]).name})", path
        )
    if dtype.kind == "f":
        raise InputDataError(f"mask has a float data type ({dtype}); expected integer instance labels", path)
    if dtype.kind not in "iub":
        raise InputDataError(f"mask has an unsupported data type {dtype}", path)
