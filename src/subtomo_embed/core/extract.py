"""Instance regions and masked patches, with CryoSiam's semantics and without its cost.

CryoSiam grows the labels over the whole tomogram (``skimage.segmentation.expand_labels``) and
then compares the whole volume with each label in turn, so its cost is instances × volume.
Here every step works inside one region's box:

* the original labels' boxes come from one pass of ``scipy.ndimage.find_objects``;
* a label grown by ``d`` voxels stays within ``d`` of its original voxels, and which label a
  background voxel receives depends only on labelled voxels within ``d`` of it; so growing the
  labels inside the box widened by ``2·d`` gives the grown region exactly (ties between two
  equally near labels are broken as ``expand_labels`` breaks them inside that box);
* area, bbox (max exclusive) and centroid are measured on the grown region, as
  ``regionprops_table`` would measure them on the grown mask;
* only the part of the box that survives the final centre crop is read from the tomogram.

The cost is therefore the mask's size once plus the sum of the boxes.

Patch contract (what the network was trained on, see ``docs/model.md``):
``clip((x - min) / (max - min), 0, 1)``, then ``(x - mean) / std``, then voxels outside the
region (``masking_type`` 2) or its convex hull (1) are set to 0, then the box is fitted to
``patch_size`` by MONAI's constant-0 ``SpatialPad`` followed by ``CenterSpatialCrop``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from .errors import InputDataError
from .io import REGION_COLUMNS

log = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Normalization:
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """CryoSiam's ``ScaleIntensityRanged(clip=True)`` then ``NormalizeIntensityd``, in float32."""
        x = np.asarray(x, dtype=np.float32)
        scaled = (x - np.float32(self.min)) / np.float32(self.max - self.min)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        return (scaled - np.float32(self.mean)) / np.float32(self.std)


@dataclass
class Region:
    """One instance after label growth: its box in the tomogram and its voxels inside the box."""

    label: int
    box: Box
    voxels: np.ndarray  # bool, shape of the box

    @property
    def area(self) -> int:
        return int(self.voxels.sum())


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


def _label_boxes(mask: np.ndarray) -> dict[int, Box]:
    """Bounding box of every label present in the mask, in ascending label order."""
    if mask.size == 0:
        return {}
    max_label = int(mask.max())
    if max_label == 0:
        return {}
    if max_label <= 16_000_000:
        work = mask if mask.dtype.kind in "iu" and mask.dtype.itemsize <= 4 else mask.astype(np.int32)
        objects = ndimage.find_objects(work)
        return {i + 1: box for i, box in enumerate(objects) if box is not None}
    # sparse, very large label ids: number them 1..n first
    uniques, compact = np.unique(mask, return_inverse=True)
    shift = 0 if uniques[0] == 0 else 1
    objects = ndimage.find_objects((compact.reshape(mask.shape) + shift).astype(np.int32))
    return {int(uniques[i + 1 - shift]): box for i, box in enumerate(objects) if box is not None}


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
        # alone: expand_labels gives every voxel within `distance` of the label (an EDT threshold)
        own = labels[_relative(box, context)] == label
        return Region(label, box, ndimage.distance_transform_edt(~own) <= distance)
    from skimage.segmentation import expand_labels

    grown = expand_labels(labels, distance=distance)
    return Region(label, box, grown[_relative(box, context)] == label)


def regions_from_mask(mask: np.ndarray, expand_labels: int = 0, workers: int | None = None) -> list[Region]:
    """Every instance of the mask, grown by ``expand_labels`` voxels, in ascending label order."""

    def grow(item: tuple[int, Box]) -> Region:
        label, box = item
        reach = _widen(box, expand_labels, mask.shape)
        region = grow_label(mask, label, reach, expand_labels)
        tight = _tight_box(region.voxels, reach)
        return Region(label, tight, region.voxels[_relative(tight, reach)])

    return list(_thread_map(grow, list(_label_boxes(mask).items()), workers))


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _thread_map(fn, items: list, workers: int | None = None, ahead: int = 2) -> Iterator:
    """``map(fn, items)`` in order on a few threads (NumPy, SciPy and Qhull release the GIL),
    at most ``ahead`` × workers results waiting, so memory stays small."""
    workers = workers or default_workers()
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="subtomo-extract") as pool:
        pending = deque(pool.submit(fn, item) for item in items[: ahead * workers])
        rest = iter(items[ahead * workers:])
        while pending:
            result = pending.popleft().result()
            nxt = next(rest, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result


_END = object()


def regions_from_table(mask: np.ndarray, table: pd.DataFrame, expand_labels: int = 0) -> list[Region]:
    """Regions whose boxes come from a CryoSiam regions CSV; voxels from the grown mask in that box.

    This is what CryoSiam does when ``<stem>_instance_regions.csv`` sits beside the mask.
    """
    regions = []
    shape = mask.shape
    bounds = table[[f"bbox-{i}" for i in range(6)]].to_numpy(dtype=np.int64)
    for label, row in zip(table["label"].to_numpy(), bounds):
        lo, hi = row[:3], row[3:]
        if any(a < 0 or b > n or a >= b for a, b, n in zip(lo, hi, shape)):
            raise InputDataError(f"regions table: label {label} has a bbox {row.tolist()} outside the mask {shape}")
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        regions.append(grow_label(mask, int(label), box, expand_labels))
    return regions


def measure(regions: list[Region]) -> pd.DataFrame:
    """CryoSiam's regions table (label, area, bbox-0..5, centroid-0..2, hull_area=0)."""
    rows = []
    for r in regions:
        coords = np.nonzero(r.voxels)
        centroid = [float(c.mean()) + s.start for c, s in zip(coords, r.box)] if coords[0].size else [np.nan] * 3
        rows.append(
            [r.label, r.area, *[s.start for s in r.box], *[s.stop for s in r.box], *centroid, 0]
        )
    table = pd.DataFrame(rows, columns=REGION_COLUMNS)
    return table.astype({c: np.int64 for c in REGION_COLUMNS if c == "label" or c.startswith("bbox")})


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


_HULL_TOLERANCE = 1e-10  # skimage's default
_DIAMOND = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, -0.5, 0], [0, 0.5, 0], [0, 0, -0.5], [0, 0, 0.5]])


def _unique_half_integer_points(points: np.ndarray) -> np.ndarray:
    """``np.unique(points, axis=0)`` for points on the half-voxel grid, via one integer key."""
    twice = np.rint(points * 2).astype(np.int64) + 2
    span = twice.max(axis=0) + 1
    keys = (twice[:, 0] * span[1] + twice[:, 1]) * span[2] + twice[:, 2]
    _, first = np.unique(keys, return_index=True)
    return points[first]


_LATTICE_DIRECTIONS = [
    d for d in ((i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)) if d > (0, 0, 0)
]  # the 13 directions, one of each ± pair


def _hull_vertex_candidates(voxels: np.ndarray) -> np.ndarray:
    """Voxels that can be vertices of the region's hull.

    A vertex is not strictly between two region voxels on any line. So drop voxels that are
    not the first or last along each axis, and voxels with region neighbours on both sides
    along any of the 13 lattice directions. The rest has the same convex hull as the region,
    with far fewer points for Qhull.
    """
    keep = voxels.copy()
    for axis in range(3):
        before = np.cumsum(voxels, axis=axis)
        total = np.take(before, [-1], axis=axis)
        keep &= (before == 1) | (before == total)
    padded = np.pad(voxels, 1)
    n = voxels.shape
    for dz, dy, dx in _LATTICE_DIRECTIONS:
        ahead = padded[1 + dz:1 + dz + n[0], 1 + dy:1 + dy + n[1], 1 + dx:1 + dx + n[2]]
        behind = padded[1 - dz:1 - dz + n[0], 1 - dy:1 - dy + n[1], 1 - dx:1 - dx + n[2]]
        keep &= ~(ahead & behind)
    return np.argwhere(keep).astype(np.float64)


def convex_hull(voxels: np.ndarray) -> np.ndarray:
    """The 3D ``skimage.morphology.convex_hull_image`` of a region's box, computed line by line.

    Same hull as skimage (the region's hull vertices, each offset by ±0.5 along every axis,
    then the hull of those points) and the same test (``n·p + d < 1e-10`` for every facet), but
    the test is solved along each x line as an interval instead of being evaluated at every
    voxel for every facet: cost ~ lines × facets instead of voxels × facets. Where skimage
    gives up (a degenerate, e.g. flat, region: Qhull fails) it returns an empty mask, and so
    does this, as CryoSiam's patches depend on it.
    """
    from scipy.spatial import ConvexHull, QhullError

    shape = voxels.shape
    coords = _hull_vertex_candidates(voxels)
    if coords.shape[0] == 0:
        return np.zeros(shape, dtype=bool)
    # skimage's first hull fails (-> empty mask) for fewer than 4 points or a flat region
    if coords.shape[0] < 4 or np.linalg.matrix_rank(coords - coords.mean(axis=0)) < 3:
        return np.zeros(shape, dtype=bool)
    try:
        points = (coords[:, None, :] + _DIAMOND).reshape(-1, 3)
        hull = ConvexHull(_unique_half_integer_points(points))
    except QhullError:
        log.debug("degenerate region (flat or too small): empty hull, as skimage gives")
        return np.zeros(shape, dtype=bool)
    # Qhull triangulates: coplanar facets repeat one plane; each plane needs testing once
    eq = np.unique(hull.equations, axis=0)  # rows (n_z, n_y, n_x, d): inside when n·p + d < tol
    inside = np.zeros(shape, dtype=bool)
    # only lines through the hull's (z, y) extent can hold inside voxels
    lo = np.maximum(np.floor(hull.min_bound[:2]).astype(int), 0)
    hi = np.minimum(np.ceil(hull.max_bound[:2]).astype(int) + 1, shape[:2])
    zz, yy = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    zz, yy = zz.ravel().astype(np.float64), yy.ravel().astype(np.float64)
    nx = eq[:, 2]
    n_lines = zz.size

    def bound(sel, reduce, empty):
        # along each (z, y) line: n_x * x < tolerance - d - n_z z - n_y y, for the facets in sel
        if not sel.any():
            return np.full(n_lines, empty)
        e = eq[sel]
        rhs = (_HULL_TOLERANCE - e[:, 3]) - np.outer(zz, e[:, 0]) - np.outer(yy, e[:, 1])
        return reduce(rhs / e[:, 2], axis=1)

    upper = bound(nx > 0, np.min, np.inf)
    lower = bound(nx < 0, np.max, -np.inf)
    flat = nx == 0
    valid = np.ones(n_lines, dtype=bool)
    if flat.any():
        e = eq[flat]
        valid = (((_HULL_TOLERANCE - e[:, 3]) - np.outer(zz, e[:, 0]) - np.outer(yy, e[:, 1])) > 0).all(axis=1)
    first_x = np.floor(np.clip(lower, -1, shape[2])) + 1  # smallest x with x > lower
    last_x = np.ceil(np.clip(upper, -1, shape[2] + 1)) - 1  # largest x with x < upper
    x = np.arange(shape[2])
    lines = (x >= first_x[:, None]) & (x <= last_x[:, None]) & valid[:, None]
    inside[lo[0]:hi[0], lo[1]:hi[1]] = lines.reshape(hi[0] - lo[0], hi[1] - lo[1], shape[2])
    return inside


def cut_patch(
    volume: np.ndarray,
    region: Region,
    patch_size: tuple[int, int, int],
    masking_type: int,
    norm: Normalization,
    source: str = "tomogram",
) -> tuple[np.ndarray, int]:
    """One region's patch of ``patch_size`` (float32) and its hull area (0 unless masking_type 1)."""
    windows = [fit_window(s.stop - s.start, roi) for s, roi in zip(region.box, patch_size)]
    read = tuple(slice(s.start + src, s.start + src + n) for s, (src, _, n) in zip(region.box, windows))
    local = tuple(slice(src, src + n) for src, _, n in windows)
    raw = np.asarray(volume[read])
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):  # before clipping would hide an Inf
        raise InputDataError(f"tomogram has NaN or Inf voxels in the box of instance {region.label}", source)
    data = norm.apply(raw)
    hull_area = 0
    if masking_type == 1:
        keep = convex_hull(region.voxels)
        hull_area = int(keep.sum())
        data[~keep[local]] = 0.0
    elif masking_type == 2:
        data[~region.voxels[local]] = 0.0
    patch = np.zeros(patch_size, dtype=np.float32)
    patch[tuple(slice(dst, dst + n) for _, dst, n in windows)] = data
    return patch, hull_area


@dataclass
class Extraction:
    """What one tomogram gives: the kept regions' table and a way to make their patches."""

    table: pd.DataFrame  # one row per kept region, CryoSiam's columns
    regions: list[Region]

    def __len__(self) -> int:
        return len(self.regions)


def plan_extraction(
    mask: np.ndarray,
    expand_labels: int = 0,
    min_size: int | None = None,
    max_size: int | None = None,
    regions_table: pd.DataFrame | None = None,
) -> Extraction:
    """Find, grow, measure and size-filter the instances of a mask (no tomogram needed)."""
    if regions_table is not None:
        regions = regions_from_table(mask, regions_table, expand_labels)
        table = regions_table.reset_index(drop=True).copy()
        table["hull_area"] = 0
    else:
        regions = regions_from_mask(mask, expand_labels)
        table = measure(regions)
    keep = size_filter(table["area"].to_numpy(), min_size, max_size)
    kept = [r for r, k in zip(regions, keep) if k]
    return Extraction(table[keep].reset_index(drop=True), kept)


def iter_patches(
    volume: np.ndarray,
    extraction: Extraction,
    patch_size: tuple[int, int, int],
    masking_type: int,
    norm: Normalization,
    source: str = "tomogram",
    workers: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (row, patch) for every kept region, in order; fills ``hull_area`` in the table.

    Patches are cut by a few threads, a bounded number ahead (see :func:`_thread_map`).
    """
    hull_col = extraction.table.columns.get_loc("hull_area")

    def cut(region: Region):
        return cut_patch(volume, region, patch_size, masking_type, norm, source)

    for i, (patch, hull_area) in enumerate(_thread_map(cut, extraction.regions, workers)):
        extraction.table.iat[i, hull_col] = hull_area
        yield i, patch


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
