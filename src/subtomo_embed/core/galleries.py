"""Cluster galleries a structural biologist can read: what a cluster's particles look like together.

A single z slice through one noisy particle shows little (a torus looks like noise). So a gallery
shows the **average** of the cluster's particles nearest its centre, each cut as a box around its
centroid (aligned by centroid, no rotation) and standardized (mean 0, standard deviation 1, so each
weighs the same), as **slab projections**: the mean over the central slab of the box along z (xy
view), y (xz view) and x (yz view). A **scale bar** in nm is drawn where the voxel size is known,
and a few members are shown beside the average, each as the same three projections.

Array in, figure out (matplotlib, Agg); the caller reads the volumes and saves the figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VIEWS = ("xy", "xz", "yz")
NICE_NM = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def centred_box(volume, centroid: Sequence[float], size: Sequence[int]) -> np.ndarray:
    """The ``size`` (z, y, x) box of ``volume`` centred on the voxel nearest ``centroid``, zero-padded
    where it crosses the border (float32)."""
    shape = volume.shape
    out = np.zeros(tuple(int(s) for s in size), dtype=np.float32)
    starts = [int(round(float(c))) - int(s) // 2 for c, s in zip(centroid, size)]
    src, dst = [], []
    for start, s, n in zip(starts, size, shape):
        lo, hi = max(start, 0), min(start + int(s), n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = np.asarray(volume[tuple(src)], dtype=np.float32)
    return out


def standardized(box: np.ndarray) -> np.ndarray:
    """``box`` with mean 0 and standard deviation 1 (a constant box: zeros)."""
    sd = float(box.std())
    return (box - float(box.mean())) / sd if sd > 0 else np.zeros_like(box)


def average(boxes: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of the standardized boxes."""
    if not boxes:
        raise ValueError("no boxes to average")
    return np.mean([standardized(b) for b in boxes], axis=0)


def slab_projections(box: np.ndarray, slab: int | None = None) -> list[np.ndarray]:
    """xy, xz and yz views of a (z, y, x) box: the mean over the central ``slab`` planes along z, y
    and x (default: a quarter of the box, at least one plane). xz and yz have z vertical."""
    views = []
    for axis in range(3):
        n = box.shape[axis]
        k = max(1, min(n, slab if slab is not None else n // 4))
        lo = (n - k) // 2
        views.append(np.take(box, np.arange(lo, lo + k), axis=axis).mean(axis=axis))
    xy, xz, yz = views[0], views[1], views[2]  # (y, x), (z, x), (z, y)
    return [xy, xz, yz]


def scale_bar(width_px: int, voxel_size_a: float | None) -> tuple[float, float] | None:
    """A round length in nm at most a third of ``width_px`` voxels of ``voxel_size_a`` Å, and its
    length in voxels; None when the voxel size is unknown or no round length fits."""
    if voxel_size_a is None or not np.isfinite(voxel_size_a) or voxel_size_a <= 0:
        return None
    nm_per_px = voxel_size_a / 10.0
    fits = [nm for nm in NICE_NM if nm / nm_per_px <= width_px / 3]
    if not fits:
        return None
    nm = fits[-1]
    return float(nm), nm / nm_per_px


def _grey(ax, image: np.ndarray) -> None:
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")


def _draw_bar(ax, image: np.ndarray, bar: tuple[float, float]) -> None:
    from matplotlib.patches import Rectangle

    nm, px = bar
    h, w = image.shape
    y = h - 1.5 - max(0.6, h / 40)
    ax.add_patch(Rectangle((1.0, y), px, max(0.6, h / 40), color="yellow", lw=0))
    ax.text(1.0, y - 0.8, f"{nm:g} nm", color="yellow", fontsize=7, va="bottom", ha="left")


def gallery_figure(
    mean_box: np.ndarray,
    members: Sequence[np.ndarray],
    member_titles: Sequence[str],
    title: str,
    voxel_size_a: float | None = None,
    slab: int | None = None,
):
    """Row 0: the average's xy, xz and yz slab projections (scale bar in nm when the voxel size is
    known); one row per member below, the same projections of its own box."""
    from .visualize import _plt

    plt = _plt()
    rows = 1 + len(members)
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.3 * rows + 0.5), squeeze=False, layout="constrained")
    bar = scale_bar(mean_box.shape[2], voxel_size_a)
    for r, (box, name) in enumerate([(mean_box, "average"), *zip(members, member_titles)]):
        for c, (view, image) in enumerate(zip(VIEWS, slab_projections(box, slab))):
            ax = axes[r][c]
            _grey(ax, image)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {view}" if c == 0 else view, fontsize=8)
            if bar is not None:
                _draw_bar(ax, image, bar)
    fig.suptitle(title, fontsize=9)
    return fig
