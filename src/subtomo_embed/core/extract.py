"""Instance regions and masked patches, with CryoSiam's semantics and without its cost.

CryoSiam grows the labels over the whole tomogram (``skimage.segmentation.expand_labels``) and
then compares the whole volume with each label in turn, so its cost is instances × volume.
Here every step works inside one region's box:

* the original labels' boxes come from ``scipy.ndimage.find_objects`` (one pass, on z slabs in threads);
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

import errno
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputDataError
from .io import REGION_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


def import_modules(masking_type: int) -> None:
    """Import what extraction needs (SciPy: ~0.3 s, and Qhull's module, ~0.15 s, for hull
    masking) now. This module imports them only where used, so that a command can read the
    mask on another thread meanwhile (reading releases the GIL), and forked workers inherit
    them instead of importing them each."""
    import scipy.ndimage  # noqa: F401

    if masking_type == 1:
        import scipy.spatial  # noqa: F401


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
    the GIL: 2 threads take about half the time), and the slabs' boxes joined.
    """
    from scipy import ndimage

    if mask.size == 0:
        return {}
    edges = np.linspace(0, mask.shape[0], min(slabs or default_workers(), mask.shape[0]) + 1).astype(int).tolist()
    ranges = list(zip(edges[:-1], edges[1:]))  # the slabs' z ranges

    def scan(z_range: tuple[int, int]) -> list | None:
        part = mask[z_range[0]:z_range[1]]
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
        for i, box in enumerate(part):
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


def _zero_padded(a: np.ndarray, width: int) -> np.ndarray:
    """``np.pad(a, width)`` (zeros on every side), without its per-call overhead (~0.1 ms)."""
    out = np.zeros(tuple(n + 2 * width for n in a.shape), dtype=a.dtype)
    out[tuple(slice(width, width + n) for n in a.shape)] = a
    return out


def ball_dilation(voxels: np.ndarray, radius: int) -> np.ndarray:
    """Every voxel within Euclidean distance ``radius`` of a True voxel (what thresholding the
    distance transform gives, ``distance_transform_edt(~voxels) <= radius``), ~3x faster.

    The ball is separable into lines: first each x line is dilated by 0..radius voxels; a
    (z, y) offset of the ball then needs the x dilation by ``floor(sqrt(r² - z² - y²))``; the
    y offsets are gathered per |z| and the z offsets last. About r² array ORs in all.
    """
    r = int(radius)
    n0, n1, n2 = voxels.shape
    padded = _zero_padded(voxels, r)
    along_x = [padded[:, :, r:r + n2].copy()]  # along_x[k]: dilated by k voxels along x
    for k in range(1, r + 1):
        along_x.append(along_x[-1] | padded[:, :, r + k:r + k + n2] | padded[:, :, r - k:r - k + n2])
    out = np.zeros(voxels.shape, dtype=bool)
    for dz in range(r + 1):
        plane = np.zeros((n0 + 2 * r, n1, n2), dtype=bool)  # the ball's slice at ±dz, z not yet shifted
        for dy in range(-r, r + 1):
            rest = r * r - dz * dz - dy * dy
            if rest >= 0:
                plane |= along_x[math.isqrt(rest)][:, r + dy:r + dy + n1]
        out |= plane[r + dz:r + dz + n0]
        if dz:
            out |= plane[r - dz:r - dz + n0]
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


def regions_from_mask(mask: np.ndarray, expand_labels: int = 0, workers: int | None = None,
                      processes: bool = False) -> list[Region]:
    """Every instance of the mask, grown by ``expand_labels`` voxels, in ascending label order
    (on forked worker processes with ``processes``, see :func:`_fork_map`; else on threads)."""

    def grow(item: tuple[int, Box]) -> Region:
        label, box = item
        reach = _widen(box, expand_labels, mask.shape)
        region = grow_label(mask, label, reach, expand_labels)
        tight = _tight_box(region.voxels, reach)
        return Region(label, tight, region.voxels[_relative(tight, reach)])

    boxes = list(_label_boxes(mask).items())
    if processes and expand_labels > 0:
        return _fork_map(grow, boxes, workers)
    return list(_thread_map(grow, boxes, workers))


def default_workers() -> int:
    """Up to 4, never more than the CPUs this process may run on (a SLURM or container allocation)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _thread_map(fn, items: list, workers: int | None = None, ahead: int = 2) -> Iterator:
    """``map(fn, items)`` in order on a few threads, at most ``ahead`` × workers results waiting,
    so memory stays small. Array work and Qhull release the GIL, the many small calls between
    them do not: about 1.4× on 2 cores (:func:`_fork_map` does better where forking is safe)."""
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


def _can_fork() -> bool:
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


_FORKED_WORK: list = []  # (fn, items) that forked workers inherit; set just before the fork


def _run_forked_chunk(chunk: range) -> list:
    fn, items = _FORKED_WORK[0]
    return [fn(items[i]) for i in chunk]


def _fork_map(fn, items: list, workers: int | None = None, progress=None) -> list:
    """``list(map(fn, items))`` on forked worker processes, for work made of many small NumPy and
    Qhull calls that hold the GIL, where threads barely help (about 1.4× on 2 cores).

    The workers inherit ``fn`` and ``items`` (closures, memory-mapped volumes) through the fork,
    so only chunk bounds go to them and only results come back. Only for processes with no GPU
    runtime or threads of their own (``extract`` uses it; ``predict`` cuts on threads beside the
    model). In-process where fork is unavailable or one worker is enough;
    ``progress.update(n)`` as chunks finish.
    """
    n = len(items)
    workers = min(workers or default_workers(), max(n // 8, 1))
    step = max(4, min(32, n // (workers * 8) or 1))
    chunks = [range(a, min(a + step, n)) for a in range(0, n, step)]
    results: list = []

    def collect(chunk_results: list) -> None:
        results.extend(chunk_results)
        if progress is not None:
            progress.update(len(chunk_results))

    _FORKED_WORK[:] = [(fn, items)]
    try:
        if workers > 1 and _can_fork():
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for chunk_results in pool.imap(_run_forked_chunk, chunks):
                    collect(chunk_results)
        else:
            for chunk in chunks:
                collect(_run_forked_chunk(chunk))
    finally:
        _FORKED_WORK.clear()
    return results


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
            columns[f"centroid-{axis}"][i] = int(per_slice @ np.arange(per_slice.size)) / area + s.start if area else np.nan
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


_HULL_TOLERANCE = 1e-10  # skimage's default
_DIAMOND = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, -0.5, 0], [0, 0.5, 0], [0, 0, -0.5], [0, 0, 0.5]])


_NEIGHBOUR_STEPS = np.array(list(np.ndindex(3, 3, 3))) - 1  # the 27 offsets (z, y, x) in -1..1, 0 included


def _diamond_pairs() -> tuple[np.ndarray, np.ndarray]:
    """For each of the 6 diamond points ``0.5·d``: the pairs of neighbour offsets (a, b) (0 included,
    each component in -1..1) with ``a + b = d`` or ``2·d``. Returned as indices into the 27 offsets,
    arrays of shape (6, pairs)."""
    first, second = [], []
    for point in _DIAMOND:
        d = np.rint(point * 2).astype(int)
        pairs = sorted({tuple(sorted((i, j))) for i, a in enumerate(_NEIGHBOUR_STEPS)
                        for j, b in enumerate(_NEIGHBOUR_STEPS) if any(np.array_equal(a + b, k * d) for k in (1, 2))})
        first.append([i for i, _ in pairs])
        second.append([j for _, j in pairs])
    return np.array(first), np.array(second)


_DIAMOND_PAIR_A, _DIAMOND_PAIR_B = _diamond_pairs()


def _diamond_blockers() -> np.ndarray:
    """For each of the 6 diamond points ``0.5·d``: the neighbour offsets a (indices into the 27)
    with ``a·d ≥ |a_e|`` summed over the other two axes e, a ≠ 0; shape (6, 5)."""
    blockers = []
    for point in _DIAMOND:
        d = np.rint(point * 2).astype(int)
        axis = int(np.flatnonzero(d)[0])
        blockers.append([i for i, a in enumerate(_NEIGHBOUR_STEPS)
                         if a.any() and a @ d >= np.abs(a).sum() - abs(a[axis])])
    return np.array(blockers)


_DIAMOND_BLOCKERS = _diamond_blockers()


def _offset_vertex_candidates(coords: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The points ``v + 0.5·d`` (v a vertex candidate, d an axis direction) that can be vertices of
    the hull of all of them: the hull skimage builds, without the points that cannot matter.

    If two region voxels ``v + a`` and ``v + b`` have ``a + b = k·d`` (k > 0), the point
    ``v + (k/2)·d`` is in the region's hull, so ``v + 0.5·d`` lies strictly between
    ``v - 0.5·d`` and ``v + (k/2 + 0.5)·d``, both in the offset hull: not a vertex. Dropping such
    points leaves the hull unchanged and about halves Qhull's input. No point is kept twice
    (``v + 0.5·d = w - 0.5·d`` needs ``w = v + d``, which drops both).

    Nor can it be a vertex when one region voxel ``v + a`` has ``a·d ≥ |a_e|`` summed over the
    other two axes (a ≠ 0): a vertex of a Minkowski sum is ``v + 0.5·d`` for a direction u that
    v maximizes over the region and d over the diamond, so u·d > |u_e| for the other axes; then
    ``u·a > 0`` and v does not maximize u. With both rules only ~1.1 points per hull vertex are
    left (~200 of ~1100 per instance here). ``near``: each candidate's 27 neighbourhood
    (:func:`_neighbourhoods`).
    """
    inside = (near[:, _DIAMOND_PAIR_A] & near[:, _DIAMOND_PAIR_B]).any(axis=2)  # (candidates, 6)
    inside |= near[:, _DIAMOND_BLOCKERS].any(axis=2)
    keep_c, keep_d = np.nonzero(~inside)
    return coords[keep_c] + _DIAMOND[keep_d]


_FORWARD = np.arange(14, 27)  # the 13 lattice directions with their first nonzero step > 0 ...
_BACKWARD = 26 - _FORWARD  # ... and their opposites, as indices into _NEIGHBOUR_STEPS


def _neighbourhoods(voxels: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(len(at), 27) bool: the region's voxels around each of the voxels ``at`` (z, y, x)."""
    padded = _zero_padded(voxels, 1)
    at = at + 1
    steps = _NEIGHBOUR_STEPS
    return padded[at[:, None, 0] + steps[:, 0], at[:, None, 1] + steps[:, 1], at[:, None, 2] + steps[:, 2]]


def _axis_extreme_voxels(voxels: np.ndarray) -> np.ndarray:
    """Region voxels that are the first or the last of their line along each of the 3 axes."""
    n = voxels.shape
    z, y = np.nonzero(voxels.any(axis=2))
    first_x = voxels.argmax(axis=2)[z, y]
    last_x = n[2] - 1 - voxels[:, :, ::-1].argmax(axis=2)[z, y]
    two = last_x != first_x
    points = np.concatenate([np.column_stack([z, y, first_x]), np.column_stack([z[two], y[two], last_x[two]])])
    zz, yy, xx = points.T
    first_y, last_y = voxels.argmax(axis=1), n[1] - 1 - voxels[:, ::-1, :].argmax(axis=1)  # per (z, x)
    first_z, last_z = voxels.argmax(axis=0), n[0] - 1 - voxels[::-1].argmax(axis=0)  # per (y, x)
    extreme = (((yy == first_y[zz, xx]) | (yy == last_y[zz, xx]))
               & ((zz == first_z[yy, xx]) | (zz == last_z[yy, xx])))
    return points[extreme]


def _hull_vertex_candidates(voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels that can be vertices of the region's hull (float coordinates), and their neighbourhoods.

    A vertex is not strictly between two region voxels on any line. So keep only voxels that are
    the first or last along each axis, then drop those with region neighbours on both sides along
    any of the 13 lattice directions. The rest has the same convex hull as the region, with far
    fewer points for Qhull.
    """
    at = _axis_extreme_voxels(voxels)
    near = _neighbourhoods(voxels, at)
    vertex = ~(near[:, _FORWARD] & near[:, _BACKWARD]).any(axis=1)
    return at[vertex].astype(np.float64), near[vertex]


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows (bit for bit) of a float array: ``np.unique(rows, axis=0)`` up to order,
    4x faster (one sort of the rows as raw bytes)."""
    rows = np.ascontiguousarray(rows)
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first = np.unique(as_bytes, return_index=True)
    return rows[np.sort(first)]


def _is_flat(coords: np.ndarray) -> bool:
    """Whether integer points lie in one plane (or a line, or are fewer than 4): the determinant
    of their Gram matrix is 0, computed exactly in integers."""
    steps = (coords[1:] - coords[0]).astype(np.int64)
    (a, b, c), (d, e, f), (g, h, i) = (steps.T @ steps).tolist()
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g) == 0


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
    coords, near = _hull_vertex_candidates(voxels)
    if coords.shape[0] == 0:
        return np.zeros(shape, dtype=bool)
    if _is_flat(coords):  # skimage's first hull fails (-> empty mask) for a flat region
        return np.zeros(shape, dtype=bool)
    try:
        hull = ConvexHull(_offset_vertex_candidates(coords, near))
    except QhullError:
        log.debug("degenerate region (flat or too small): empty hull, as skimage gives")
        return np.zeros(shape, dtype=bool)
    # Qhull triangulates: coplanar facets repeat one plane; each plane needs testing once
    eq = _distinct_rows(hull.equations)  # rows (n_z, n_y, n_x, d): inside when n·p + d < tol
    # only lines through the hull's (z, y) extent can hold inside voxels
    lo = np.maximum(np.floor(hull.min_bound[:2]).astype(int), 0)
    hi = np.minimum(np.ceil(hull.max_bound[:2]).astype(int) + 1, shape[:2])
    bounds, n_below, n_flat = _line_bounds(eq, np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]))
    lower = bounds[..., :n_below].max(axis=2, initial=-np.inf)
    upper = bounds[..., n_below + n_flat:].min(axis=2, initial=np.inf)
    if n_flat:  # a facet parallel to x keeps a whole line or none of it
        upper[(bounds[..., n_below:n_below + n_flat] <= 0).any(axis=2)] = -np.inf
    first_x = np.floor(np.clip(lower, -1, shape[2])) + 1  # smallest x with x > lower
    last_x = np.ceil(np.clip(upper, -1, shape[2] + 1)) - 1  # largest x with x < upper
    x = np.arange(shape[2])
    inside = np.zeros(shape, dtype=bool)
    inside[lo[0]:hi[0], lo[1]:hi[1]] = (x >= first_x[..., None]) & (x <= last_x[..., None])
    return inside


def _line_bounds(eq: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Each facet's bound on x along each (z, y) line, as an array (z, y, facet).

    A voxel is inside a facet when ``n_z z + n_y y + n_x x + d < tol``, that is
    ``x > b`` (n_x < 0), ``x < b`` (n_x > 0) or ``0 < b`` (n_x = 0), with
    ``b = (tol - d - n_z z - n_y y) / n_x`` (no division for n_x = 0). The facets come ordered
    n_x < 0, = 0, > 0; returns the bounds and how many facets are in the first two groups.
    ``b`` is a z term plus a y term, so the (z, y, facet) array costs one addition. (Its
    rounding, ~1e-14 of the bound, is far below the tolerance's 1e-10 / |n_x|: the same voxels
    as skimage's ``n·p + d < tol``.)
    """
    nx = eq[:, 2]
    eq = eq[np.argsort(np.sign(nx), kind="stable")]
    nx = eq[:, 2]
    scale = np.where(nx == 0, 1.0, nx)
    along_z = (_HULL_TOLERANCE - eq[:, 3]) / scale - np.multiply.outer(z.astype(np.float64), eq[:, 0] / scale)
    along_y = np.multiply.outer(y.astype(np.float64), eq[:, 1] / scale)
    return along_z[:, None, :] - along_y[None, :, :], int((nx < 0).sum()), int((nx == 0).sum())


def _masked_box(
    volume: np.ndarray,
    region: Region,
    patch_size: tuple[int, int, int],
    masking_type: int,
    norm: Normalization,
    source: str,
) -> tuple[np.ndarray, Box, int]:
    """The part of a region's box that survives the fit to ``patch_size``, normalized and
    masked (float32); where it goes in the patch; the hull area (0 unless masking_type 1)."""
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
    return data, tuple(slice(dst, dst + n) for _, dst, n in windows), hull_area


def cut_patch(
    volume: np.ndarray,
    region: Region,
    patch_size: tuple[int, int, int],
    masking_type: int,
    norm: Normalization,
    source: str = "tomogram",
) -> tuple[np.ndarray, int]:
    """One region's patch of ``patch_size`` (float32) and its hull area (0 unless masking_type 1)."""
    data, place, hull_area = _masked_box(volume, region, patch_size, masking_type, norm, source)
    patch = np.zeros(patch_size, dtype=np.float32)
    patch[place] = data
    return patch, hull_area


@dataclass
class Extraction:
    """What one tomogram gives: the kept regions' columns and a way to make their patches."""

    columns: dict[str, np.ndarray]  # one entry per kept region, CryoSiam's columns (arrays, so
    regions: list[Region]  # that extract never imports pandas: 0.3-0.4 s of its start-up)

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
) -> Extraction:
    """Find, grow, measure and size-filter the instances of a mask (no tomogram needed);
    ``processes``: grow on forked workers (see :func:`_fork_map`)."""
    if regions_table is not None:
        regions = regions_from_table(mask, regions_table, expand_labels)
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
    patch_size: tuple[int, int, int],
    masking_type: int,
    norm: Normalization,
    source: str = "tomogram",
    workers: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (row, patch) for every kept region, in order; fills ``hull_area`` in the table.

    Patches are cut by a few threads, a bounded number ahead (see :func:`_thread_map`).
    """
    hull_areas = extraction.columns["hull_area"]

    def cut(region: Region):
        return cut_patch(volume, region, patch_size, masking_type, norm, source)

    for i, (patch, hull_area) in enumerate(_thread_map(cut, extraction.regions, workers)):
        hull_areas[i] = hull_area
        yield i, patch


def cut_patches_into_file(
    volume: np.ndarray,
    extraction: Extraction,
    patch_size: tuple[int, int, int],
    masking_type: int,
    norm: Normalization,
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

    The regions are cut on forked workers (:func:`_fork_map`), each writing its own patches
    straight into the file, so no patch crosses a pipe.
    """
    path = os.fspath(path)
    plane = patch_size[1] * patch_size[2] * 4  # bytes of one z slice of a patch

    def cut_into_file(row: int) -> int:
        data, place, hull_area = _masked_box(volume, extraction.regions[row], patch_size, masking_type, norm, source)
        # only the z slices that hold the box: the rest of the patch is the file's unwritten
        # space, which reads as zeros (the dataset is allocated, never filled)
        slab = np.zeros((place[0].stop - place[0].start, *patch_size[1:]), dtype="<f4")
        slab[:, place[1], place[2]] = data
        fd = os.open(path, os.O_WRONLY)
        try:
            at = offset + row * patch_size[0] * plane + place[0].start * plane
            if os.pwrite(fd, memoryview(slab).cast("B"), at) != slab.nbytes:
                raise OSError(errno.ENOSPC, "short write")
        finally:
            os.close(fd)
        return hull_area

    hull_areas = _fork_map(cut_into_file, list(range(len(extraction.regions))), workers, progress)
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
