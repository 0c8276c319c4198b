"""The convex-hull mask of a region: ``skimage.morphology.convex_hull_image`` in 3D, bit for bit,
computed line by line.

skimage takes the hull of the region's voxels each offset by ±0.5 along every axis and keeps the
voxels ``p`` with ``n·p + d < 1e-10`` for every facet. Here Qhull gets only the points that can be
vertices of that hull, and the test is solved along each x line as an interval. Why both steps
leave the mask unchanged is written out in docs/embedding.md ("Why the fast extraction is exact");
tests/test_hull.py compares the masks with skimage's.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

HULL_TOLERANCE = 1e-10  # skimage's default
_DIAMOND = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, -0.5, 0], [0, 0.5, 0], [0, 0, -0.5], [0, 0, 0.5]])
_NEIGHBOUR_STEPS = np.array(list(np.ndindex(3, 3, 3))) - 1  # the 27 offsets (z, y, x) in -1..1, 0 included
_FORWARD = np.arange(14, 27)  # the 13 lattice directions with their first nonzero step > 0 ...
_BACKWARD = 26 - _FORWARD  # ... and their opposites, as indices into _NEIGHBOUR_STEPS


def zero_padded(a: np.ndarray, width: int) -> np.ndarray:
    """``np.pad(a, width)`` (zeros on every side), without its per-call overhead."""
    out = np.zeros(tuple(n + 2 * width for n in a.shape), dtype=a.dtype)
    out[tuple(slice(width, width + n) for n in a.shape)] = a
    return out


def _diamond_pairs() -> tuple[np.ndarray, np.ndarray]:
    """For each of the 6 diamond points ``0.5·d``: the pairs of neighbour offsets (a, b) (0 included,
    each component in -1..1) with ``a + b = d`` or ``2·d``. Returned as indices into the 27 offsets,
    arrays of shape (6, pairs)."""
    first, second = [], []
    for point in _DIAMOND:
        d = np.rint(point * 2).astype(int)
        pairs = sorted(
            {
                tuple(sorted((i, j)))
                for i, a in enumerate(_NEIGHBOUR_STEPS)
                for j, b in enumerate(_NEIGHBOUR_STEPS)
                if any(np.array_equal(a + b, k * d) for k in (1, 2))
            }
        )
        first.append([i for i, _ in pairs])
        second.append([j for _, j in pairs])
    return np.array(first), np.array(second)


def _diamond_blockers() -> np.ndarray:
    """For each of the 6 diamond points ``0.5·d``: the neighbour offsets a (indices into the 27)
    with ``a·d ≥ |a_e|`` summed over the other two axes e, a ≠ 0; shape (6, 5)."""
    blockers = []
    for point in _DIAMOND:
        d = np.rint(point * 2).astype(int)
        axis = int(np.flatnonzero(d)[0])
        blockers.append(
            [i for i, a in enumerate(_NEIGHBOUR_STEPS) if a.any() and a @ d >= np.abs(a).sum() - abs(a[axis])]
        )
    return np.array(blockers)


_DIAMOND_PAIR_A, _DIAMOND_PAIR_B = _diamond_pairs()
_DIAMOND_BLOCKERS = _diamond_blockers()


def _offset_vertex_candidates(coords: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The points ``v + 0.5·d`` (v a vertex candidate, d an axis direction) that can be vertices of
    the hull of all of them; the others are dropped by two rules (docs/embedding.md): a pair of
    region voxels ``v + a``, ``v + b`` with ``a + b = k·d``, or one region voxel ``v + a`` with
    ``a·d ≥ |a_e|`` summed over the other two axes. ``near``: each candidate's 27 neighbourhood.
    """
    inside = (near[:, _DIAMOND_PAIR_A] & near[:, _DIAMOND_PAIR_B]).any(axis=2)  # (candidates, 6)
    inside |= near[:, _DIAMOND_BLOCKERS].any(axis=2)
    keep_c, keep_d = np.nonzero(~inside)
    return coords[keep_c] + _DIAMOND[keep_d]


def _neighbourhoods(voxels: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(len(at), 27) bool: the region's voxels around each of the voxels ``at`` (z, y, x)."""
    padded = zero_padded(voxels, 1)
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
    extreme = ((yy == first_y[zz, xx]) | (yy == last_y[zz, xx])) & ((zz == first_z[yy, xx]) | (zz == last_z[yy, xx]))
    return points[extreme]


def _hull_vertex_candidates(voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels that can be vertices of the region's hull (float coordinates), and their neighbourhoods:
    the first or last voxels along each axis, without those that have region neighbours on both
    sides along one of the 13 lattice directions (such a voxel lies strictly between two others)."""
    at = _axis_extreme_voxels(voxels)
    near = _neighbourhoods(voxels, at)
    vertex = ~(near[:, _FORWARD] & near[:, _BACKWARD]).any(axis=1)
    return at[vertex].astype(np.float64), near[vertex]


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows (bit for bit) of a float array: ``np.unique(rows, axis=0)`` up to order,
    by one sort of the rows as raw bytes."""
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
    """The 3D ``skimage.morphology.convex_hull_image`` of a region's box (same hull, same test).

    Where skimage gives up (a degenerate, e.g. flat, region: Qhull fails) it returns an empty mask,
    and so does this, as CryoSiam's patches depend on it.
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
    upper = bounds[..., n_below + n_flat :].min(axis=2, initial=np.inf)
    if n_flat:  # a facet parallel to x keeps a whole line or none of it
        upper[(bounds[..., n_below : n_below + n_flat] <= 0).any(axis=2)] = -np.inf
    first_x = np.floor(np.clip(lower, -1, shape[2])) + 1  # smallest x with x > lower
    last_x = np.ceil(np.clip(upper, -1, shape[2] + 1)) - 1  # largest x with x < upper
    x = np.arange(shape[2])
    inside = np.zeros(shape, dtype=bool)
    inside[lo[0] : hi[0], lo[1] : hi[1]] = (x >= first_x[..., None]) & (x <= last_x[..., None])
    return inside


def _line_bounds(eq: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Each facet's bound on x along each (z, y) line, as an array (z, y, facet).

    A voxel is inside a facet when ``n_z z + n_y y + n_x x + d < tol``, that is ``x > b`` (n_x < 0),
    ``x < b`` (n_x > 0) or ``0 < b`` (n_x = 0), with ``b = (tol - d - n_z z - n_y y) / n_x`` (no
    division for n_x = 0): a z term plus a y term. The facets come ordered n_x < 0, = 0, > 0;
    returns the bounds and how many facets are in the first two groups.
    """
    nx = eq[:, 2]
    eq = eq[np.argsort(np.sign(nx), kind="stable")]
    nx = eq[:, 2]
    scale = np.where(nx == 0, 1.0, nx)
    along_z = (HULL_TOLERANCE - eq[:, 3]) / scale - np.multiply.outer(z.astype(np.float64), eq[:, 0] / scale)
    along_y = np.multiply.outer(y.astype(np.float64), eq[:, 1] / scale)
    return along_z[:, None, :] - along_y[None, :, :], int((nx < 0).sum()), int((nx == 0).sum())
