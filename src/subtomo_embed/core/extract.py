"""Instance regions and masked patches, with CryoSiam's semantics and without its cost.

CryoSiam grows the labels over the whole tomogram and then compares the whole volume with each
label in turn (cost: instances × volume). Here every step works inside one region's box: label
boxes from one ``find_objects`` pass, each label grown inside its box widened by ``2·d``, measured
on the grown region, and only the part of the box that survives the final centre crop read from
the tomogram; the cost is the mask once plus the sum of the boxes. Why the result is exactly
CryoSiam's is written out in docs/embedding.md ("Why the fast extraction is exact"); the hull
mask is in :mod:`.hull`, the workers in :mod:`.parallel`.

A patch is cut by its :class:`~.patch_contract.PatchContract` (what the network was trained on,
see ``docs/model.md``): ``clip((x - min) / (max - min), 0, 1)``, then ``(x - mean) / std``, then voxels outside the
region (``masking_type`` 2) or its convex hull (1) are set to 0, then the box is fitted to
``patch_size`` by MONAI's constant-0 ``SpatialPad`` followed by ``CenterSpatialCrop``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputDataError
from .h5files import write_into_file
from .hull import convex_hull, zero_padded
from .parallel import default_workers, fork_map, thread_map
from .patch_contract import Normalization, PatchContract
from .tables import REGION_COLUMNS

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

log = logging.getLogger(__name__)

Box = tuple[slice, ...]  # (z, y, x)


def import_modules(masking_type: int) -> None:
    """Import what extraction needs (SciPy, and Qhull's module for hull masking) now. This module
    imports them only where used, so that a command can read the mask on another thread meanwhile
    (reading releases the GIL), and forked workers inherit them instead of importing them each."""
    import scipy.ndimage  # noqa: F401

    if masking_type == 1:
        import scipy.spatial  # noqa: F401


@dataclass
class Region:
    """One instance after label growth: its box in the tomogram and its voxels inside the box."""

    label: int
    box: Box
    voxels: np.ndarray  # bool, shape of the box


# --------------------------------------------------------------------------------------------
# regions


def _widen(box: Box, margin: int, shape: tuple[int, ...]) -> Box:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _relative(inner: Box, outer: Box) -> Box:
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _tight_box(voxels: np.ndarray, offset: Box) -> Box:
    """Tight bounding box (tomogram coordinates) of the True voxels of a box-local mask."""
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(voxels.any(axis=other))
        out.append(slice(offset[axis].start + int(present[0]), offset[axis].start + int(present[-1]) + 1))
    return tuple(out)


_FIND_OBJECTS_LIMIT = 16_000_000  # largest label id find_objects is given (it allocates a list that long)


def _label_boxes(mask: np.ndarray, slabs: int | None = None) -> dict[int, Box]:
    """Bounding box of every label present in the mask, in ascending label order.

    ``ndimage.find_objects`` on z slabs (one per worker by default), one thread each (it releases
    the GIL), and the slabs' boxes joined.
    """
    from scipy import ndimage

    if mask.size == 0:
        return {}
    edges = np.linspace(0, mask.shape[0], min(slabs or default_workers(), mask.shape[0]) + 1).astype(int).tolist()
    ranges = list(zip(edges[:-1], edges[1:]))  # the slabs' z ranges

    def scan(z_range: tuple[int, int]) -> list | None:
        part = mask[z_range[0] : z_range[1]]
        top = int(part.max())
        if top > _FIND_OBJECTS_LIMIT:
            return None
        if part.dtype.kind not in "iu" or part.dtype.itemsize > 4:
            part = part.astype(np.int32)
        return ndimage.find_objects(part, top) if top > 0 else []

    if len(ranges) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="subtomo-boxes") as pool:
            parts = list(pool.map(scan, ranges))
    else:
        parts = [scan(ranges[0])]
    if any(part is None for part in parts):
        return _sparse_label_boxes(mask)
    boxes: dict[int, Box] = {}
    for (z0, _), part in zip(ranges, parts):
        for i, box in enumerate(part or []):
            if box is None:
                continue
            z, y, x = slice(z0 + box[0].start, z0 + box[0].stop), box[1], box[2]
            seen = boxes.get(i + 1)
            if seen is not None:  # also in an earlier slab: join the two
                z = slice(seen[0].start, z.stop)
                y = slice(min(seen[1].start, y.start), max(seen[1].stop, y.stop))
                x = slice(min(seen[2].start, x.start), max(seen[2].stop, x.stop))
            boxes[i + 1] = (z, y, x)
    return dict(sorted(boxes.items()))


def _sparse_label_boxes(mask: np.ndarray) -> dict[int, Box]:
    """:func:`_label_boxes` for very large label ids: number them 1..n first."""
    from scipy import ndimage

    uniques, compact = np.unique(mask, return_inverse=True)
    shift = 0 if uniques[0] == 0 else 1
    objects = ndimage.find_objects((compact.reshape(mask.shape) + shift).astype(np.int32))
    return {int(uniques[i + 1 - shift]): box for i, box in enumerate(objects) if box is not None}


def ball_dilation(voxels: np.ndarray, radius: int) -> np.ndarray:
    """Every voxel within Euclidean distance ``radius`` of a True voxel (what thresholding the
    distance transform gives, ``distance_transform_edt(~voxels) <= radius``), as a separable ball:
    x lines dilated first, then the ball's y and z offsets (docs/embedding.md)."""
    r = int(radius)
    n0, n1, n2 = voxels.shape
    padded = zero_padded(voxels, r)
    along_x = [padded[:, :, r : r + n2].copy()]  # along_x[k]: dilated by k voxels along x
    for k in range(1, r + 1):
        along_x.append(along_x[-1] | padded[:, :, r + k : r + k + n2] | padded[:, :, r - k : r - k + n2])
    out = np.zeros(voxels.shape, dtype=bool)
    for dz in range(r + 1):
        plane = np.zeros((n0 + 2 * r, n1, n2), dtype=bool)  # the ball's slice at ±dz, z not yet shifted
        for dy in range(-r, r + 1):
            rest = r * r - dz * dz - dy * dy
            if rest >= 0:
                plane |= along_x[math.isqrt(rest)][:, r + dy : r + dy + n1]
        out |= plane[r + dz : r + dz + n0]
        if dz:
            out |= plane[r - dz : r - dz + n0]
    return out


def grow_label(mask: np.ndarray, label: int, box: Box, distance: int) -> Region:
    """The voxels of ``label`` after ``expand_labels(mask, distance)``, computed inside ``box``.

    ``box`` must contain every voxel the grown label can reach (the label's own box widened by
    ``distance``); the labels are grown inside that box widened by ``distance`` again.
    """
    if distance <= 0:
        return Region(label, box, mask[box] == label)
    context = _widen(box, distance, mask.shape)
    labels = mask[context]
    others = (labels != 0) & (labels != label)
    if not others.any():
        # alone: expand_labels gives every voxel within `distance` of the label
        own = labels[_relative(box, context)] == label
        return Region(label, box, ball_dilation(own, distance))
    from skimage.segmentation import expand_labels

    grown = expand_labels(labels, distance=distance)
    return Region(label, box, grown[_relative(box, context)] == label)


def regions_from_mask(
    mask: np.ndarray, expand_labels: int = 0, workers: int | None = None, processes: bool = False
) -> list[Region]:
    """Every instance of the mask, grown by ``expand_labels`` voxels, in ascending label order
    (on forked worker processes with ``processes``, see :func:`~.parallel.fork_map`; else on threads)."""

    def grow(item: tuple[int, Box]) -> Region:
        label, box = item
        reach = _widen(box, expand_labels, mask.shape)
        region = grow_label(mask, label, reach, expand_labels)
        tight = _tight_box(region.voxels, reach)
        return Region(label, tight, region.voxels[_relative(tight, reach)])

    boxes = list(_label_boxes(mask).items())
    if processes and expand_labels > 0:
        return fork_map(grow, boxes, workers)
    return list(thread_map(grow, boxes, workers))


def regions_from_table(
    mask: np.ndarray, table: pd.DataFrame, expand_labels: int = 0, source: Path | None = None
) -> list[Region]:
    """Regions whose boxes come from a CryoSiam regions CSV (``source``); voxels from the grown mask
    in that box. A bbox outside the mask, or a label with no voxel in its bbox (not in the mask),
    is an :class:`InputDataError` naming the CSV: an empty patch is never embedded.

    This is what CryoSiam does when ``<stem>_instance_regions.csv`` sits beside the mask.
    """
    regions = []
    shape = mask.shape
    what = source if source is not None else "regions table"
    bounds = table[[f"bbox-{i}" for i in range(6)]].to_numpy(dtype=np.int64)
    for label, row in zip(table["label"].to_numpy(), bounds):
        lo, hi = row[:3], row[3:]
        if any(a < 0 or b > n or a >= b for a, b, n in zip(lo, hi, shape)):
            raise InputDataError(f"label {label} has a bbox {row.tolist()} outside the mask {shape}", what)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        region = grow_label(mask, int(label), box, expand_labels)
        if not region.voxels.any():
            raise InputDataError(f"label {label} has no voxel in its bbox {row.tolist()}: not in the mask", what)
        regions.append(region)
    return regions


def measure(regions: list[Region]) -> dict[str, np.ndarray]:
    """CryoSiam's regions columns (label, area, bbox-0..5, centroid-0..2, hull_area=0), as arrays."""
    n = len(regions)
    columns = {c: np.zeros(n, np.float64 if c.startswith("centroid") else np.int64) for c in REGION_COLUMNS}
    for i, r in enumerate(regions):
        area = int(np.count_nonzero(r.voxels))
        columns["label"][i] = r.label
        columns["area"][i] = area
        for axis, s in enumerate(r.box):
            columns[f"bbox-{axis}"][i] = s.start
            columns[f"bbox-{axis + 3}"][i] = s.stop
            # the mean voxel position along the axis, from the voxel count of each slice (exact sums)
            per_slice = r.voxels.sum(axis=tuple(a for a in range(3) if a != axis))
            mean = int(per_slice @ np.arange(per_slice.size)) / area if area else np.nan
            columns[f"centroid-{axis}"][i] = mean + s.start
    return columns


def size_filter(areas: np.ndarray, min_size: int | None, max_size: int | None) -> np.ndarray:
    """Rows to keep: ``min_size <= area <= max_size`` (None or 0 = no bound)."""
    keep = np.ones(len(areas), dtype=bool)
    if min_size:
        keep &= areas >= min_size
    if max_size:
        keep &= areas <= max_size
    return keep


# --------------------------------------------------------------------------------------------
# patches


def fit_window(box_size: int, roi: int) -> tuple[int, int, int]:
    """How a box of ``box_size`` maps onto a patch of ``roi`` after SpatialPad + CenterSpatialCrop.

    Returns (source start in the box, destination start in the patch, length).
    """
    if box_size < roi:  # SpatialPad: (roi - s) // 2 zeros before
        return 0, (roi - box_size) // 2, box_size
    return box_size // 2 - roi // 2, 0, roi  # CenterSpatialCrop from s//2 - roi//2


def _masked_box(
    volume: np.ndarray, region: Region, contract: PatchContract, source: str
) -> tuple[np.ndarray, Box, int]:
    """The part of a region's box that survives the fit to ``patch_size``, normalized and
    masked (float32); where it goes in the patch; the hull area (0 unless masking_type 1)."""
    windows = [fit_window(s.stop - s.start, roi) for s, roi in zip(region.box, contract.patch_size)]
    read = tuple(slice(s.start + src, s.start + src + n) for s, (src, _, n) in zip(region.box, windows))
    local = tuple(slice(src, src + n) for src, _, n in windows)
    raw = np.asarray(volume[read])
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):  # before clipping would hide an Inf
        raise InputDataError(f"tomogram has NaN or Inf voxels in the box of instance {region.label}", source)
    data = contract.norm.apply(raw)
    hull_area = 0
    if contract.masking_type == 1:
        keep = convex_hull(region.voxels)
        hull_area = int(keep.sum())
        data[~keep[local]] = 0.0
    elif contract.masking_type == 2:
        data[~region.voxels[local]] = 0.0
    return data, tuple(slice(dst, dst + n) for _, dst, n in windows), hull_area


def cut_patch(
    volume: np.ndarray, region: Region, contract: PatchContract, source: str = "tomogram"
) -> tuple[np.ndarray, int]:
    """One region's patch of the contract's ``patch_size`` (float32) and its hull area (0 unless
    ``masking_type`` 1); the region was grown by ``expand_labels`` when it was planned."""
    data, place, hull_area = _masked_box(volume, region, contract, source)
    patch = np.zeros(contract.patch_size, dtype=np.float32)
    patch[place] = data
    return patch, hull_area


@dataclass
class Extraction:
    """What one tomogram gives: the kept regions' columns and a way to make their patches."""

    columns: dict[str, np.ndarray]  # one entry per kept region, CryoSiam's columns (arrays: the
    regions: list[Region]  # extract command never imports pandas)

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def table(self) -> pd.DataFrame:
        """The columns as a DataFrame (built on each access; write through ``columns``)."""
        import pandas as pd

        return pd.DataFrame(self.columns)


def plan_extraction(
    mask: np.ndarray,
    expand_labels: int = 0,
    min_size: int | None = None,
    max_size: int | None = None,
    regions_table: pd.DataFrame | None = None,
    processes: bool = False,
    regions_source: Path | None = None,
) -> Extraction:
    """Find, grow, measure and size-filter the instances of a mask (no tomogram needed);
    ``processes``: grow on forked workers (see :func:`~.parallel.fork_map`); ``regions_source``:
    the CSV ``regions_table`` was read from (for messages)."""
    if regions_table is not None:
        regions = regions_from_table(mask, regions_table, expand_labels, regions_source)
        columns = {c: regions_table[c].to_numpy() for c in regions_table.columns}
        columns["hull_area"] = np.zeros(len(regions), np.int64)
    else:
        regions = regions_from_mask(mask, expand_labels, processes=processes)
        columns = measure(regions)
    keep = size_filter(columns["area"], min_size, max_size)
    kept = [r for r, k in zip(regions, keep) if k]
    return Extraction({c: v[keep] for c, v in columns.items()}, kept)


def iter_patches(
    volume: np.ndarray,
    extraction: Extraction,
    contract: PatchContract,
    source: str = "tomogram",
    workers: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (row, patch) for every kept region, in order; fills ``hull_area`` in the table.

    Patches are cut by a few threads, a bounded number ahead (see :func:`~.parallel.thread_map`).
    """
    hull_areas = extraction.columns["hull_area"]

    def cut(region: Region):
        return cut_patch(volume, region, contract, source)

    for i, (patch, hull_area) in enumerate(thread_map(cut, extraction.regions, workers)):
        hull_areas[i] = hull_area
        yield i, patch


def cut_patches_into_file(
    volume: np.ndarray,
    extraction: Extraction,
    contract: PatchContract,
    path: str | os.PathLike,
    offset: int,
    source: str = "tomogram",
    workers: int | None = None,
    progress=None,
) -> None:
    """Cut every kept region's patch and write patch ``i`` (float32, little-endian, C order) at
    byte ``offset + i × patch bytes`` of ``path``: the data block of a contiguous dataset
    allocated in advance and never filled, which reads as zeros where nothing is written; so
    only the z slices of a patch that hold its box are written (about a third of the bytes).
    Fills ``hull_area`` in the table; ``progress.update(n)`` as it goes.

    The regions are cut on forked workers (:func:`~.parallel.fork_map`), each writing its own patches
    straight into the file, so no patch crosses a pipe.
    """
    patch_size = contract.patch_size
    plane = patch_size[1] * patch_size[2] * 4  # bytes of one z slice of a patch

    def cut_into_file(row: int) -> int:
        data, place, hull_area = _masked_box(volume, extraction.regions[row], contract, source)
        # only the z slices that hold the box: the rest of the patch is the file's unwritten
        # space, which reads as zeros (the dataset is allocated, never filled)
        slab = np.zeros((place[0].stop - place[0].start, *patch_size[1:]), dtype="<f4")
        slab[:, place[1], place[2]] = data
        write_into_file(path, offset + row * patch_size[0] * plane + place[0].start * plane, slab)
        return hull_area

    hull_areas = fork_map(cut_into_file, list(range(len(extraction.regions))), workers, progress)
    extraction.columns["hull_area"] = np.asarray(hull_areas, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# boxes around picked centres


def cut_centered_patch(
    volume: np.ndarray,
    start: np.ndarray,
    size: int,
    patch_size: tuple[int, int, int],
    norm: Normalization,
    position: np.ndarray | None = None,
    mask_radius: float | None = None,
    source: str = "tomogram",
) -> np.ndarray:
    """The patch of a cubic box of ``size`` voxels starting at ``start`` (z, y, x), fitted to
    ``patch_size`` as :func:`cut_patch` fits a region's box (SpatialPad, CenterSpatialCrop).

    Voxels of the box outside the tomogram are 0 in normalized units, as CryoSiam's padding makes
    them; with ``mask_radius`` (voxels) every voxel farther than that from ``position`` is 0 too.
    Inside the tomogram and without a sphere this is exactly ``cut_patch`` with ``masking_type`` 0.
    """
    windows = [fit_window(size, roi) for roi in patch_size]
    want = [(int(s) + src, int(s) + src + n) for s, (src, _, n) in zip(start, windows)]
    have = [(max(a, 0), min(b, dim)) for (a, b), dim in zip(want, volume.shape)]
    data = np.zeros([n for _, _, n in windows], dtype=np.float32)
    if all(a < b for a, b in have):
        raw = np.asarray(volume[tuple(slice(a, b) for a, b in have)])
        if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
            raise InputDataError(f"tomogram has NaN or Inf voxels in the box at {list(map(int, start))}", source)
        data[tuple(slice(a - w0, b - w0) for (a, b), (w0, _) in zip(have, want))] = norm.apply(raw)
    if mask_radius is not None and position is not None:
        axes = [np.arange(a, b, dtype=np.float64) - p for (a, b), p in zip(want, position)]
        dist2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        data[dist2 > float(mask_radius) ** 2] = 0.0
    patch = np.zeros(patch_size, dtype=np.float32)
    patch[tuple(slice(dst, dst + n) for _, dst, n in windows)] = data
    return patch
