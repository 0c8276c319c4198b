"""Projections (UMAP, PCA), distance maps and figures of embeddings.

Array in, array out: projection functions return coordinates; figure functions return a
matplotlib ``Figure`` (Agg backend) that the caller saves. Everything random is seeded.
Large point sets are subsampled for drawing only (:func:`plot_subsample`); the projection
and the clustering always use every embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

UMAP_N_NEIGHBORS = 10  # as CryoSiam
UMAP_MIN_DIST = 0.0  # as CryoSiam
MIN_UMAP_POINTS = 16  # fewer points: PCA instead (UMAP's spectral init needs a few)
MAX_DISTANCE_MAP_POINTS = 2000
MAX_LEGEND_ENTRIES = 20


# --------------------------------------------------------------------------------------------
# projections


def project(
    embeddings: np.ndarray,
    n_components: int = 2,
    metric: str = "euclidean",
    pca_components: int | None = None,
    seed: int = 0,
    n_neighbors: int = UMAP_N_NEIGHBORS,
    fit_sample: int | None = None,
) -> tuple[np.ndarray, str]:
    """2D/3D coordinates of the embeddings and the method used (``umap`` or ``pca``).

    With ``pca_components`` the embeddings are reduced by PCA and the first ``n_components``
    principal components are the coordinates (CryoSiam's behaviour; streamed, so ``embeddings``
    may be rows read on demand); otherwise UMAP with ``metric``, fitted on a seeded sample of
    ``fit_sample`` rows when there are more (:func:`umap_sampled`). Very small sets (fewer than
    :data:`MIN_UMAP_POINTS`) fall back to PCA.
    """
    n = int(embeddings.shape[0])
    if pca_components is not None or n < MIN_UMAP_POINTS:
        if pca_components is None:
            log.info("only %d points: PCA instead of UMAP", n)
        return pca(embeddings, max(n_components, pca_components or 0))[:, :n_components], "pca"
    x = np.asarray(embeddings, dtype=np.float32)
    if fit_sample is not None and n > fit_sample:
        return umap_sampled(x, n_components, metric, seed, fit_sample), "umap"
    import umap

    model = umap.UMAP(
        n_components=n_components,
        metric=metric,
        n_neighbors=min(n_neighbors, n - 1),
        min_dist=UMAP_MIN_DIST,
        random_state=seed,
        n_jobs=1,
        verbose=False,
    )
    coords = model.fit_transform(x)
    return np.asarray(coords, dtype=np.float64), "umap"


def umap_sampled(x: np.ndarray, n_components: int, metric: str, seed: int, sample: int) -> np.ndarray:
    """UMAP fitted on a seeded random ``sample`` of the rows; every other row is placed at the
    inverse-distance weighted mean of its :data:`UMAP_N_NEIGHBORS` nearest sampled rows (pynndescent,
    ``metric``), as UMAP's own ``transform`` starts. Time and memory then grow linearly with N."""
    import pynndescent

    n = x.shape[0]
    fitted_rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    log.info("UMAP fitted on %d of %d embeddings; the others placed by their nearest fitted neighbours", sample, n)
    fitted, _ = project(x[fitted_rows], n_components, metric, seed=seed)
    index = pynndescent.NNDescent(x[fitted_rows], metric=metric, n_neighbors=30, random_state=seed, low_memory=True)
    index.prepare()
    out = np.empty((n, n_components), dtype=np.float64)
    out[fitted_rows] = fitted
    rest = np.setdiff1d(np.arange(n), fitted_rows, assume_unique=True)
    step = 100_000
    for s in range(0, rest.size, step):
        part = rest[s : s + step]
        idx, dist = index.query(x[part], k=UMAP_N_NEIGHBORS)
        weight = 1.0 / (dist.astype(np.float64) + 1e-9)
        out[part] = np.einsum("ij,ijc->ic", weight, fitted[idx]) / weight.sum(axis=1, keepdims=True)
    return out


def pca(embeddings, n_components: int) -> np.ndarray:
    """Principal-component scores [N, n_components]; columns past the data's rank are zero.
    Fitted and applied in one streamed pass each (``embeddings``: an array or rows read on demand)."""
    from .chunked import StreamedPCA

    n, d = int(embeddings.shape[0]), int(embeddings.shape[1])
    usable = max(0, min(n_components, n - 1, d))
    out = np.zeros((n, n_components), dtype=np.float64)
    if usable > 0:
        out[:, :usable] = StreamedPCA.fit(embeddings, usable).transform(embeddings)
    return out


# --------------------------------------------------------------------------------------------
# subsampling and distance maps


def plot_subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Row indices to draw: all rows in random order, or a seeded random subset of ``max_points``.

    The random order keeps one group from being painted over all the others.
    """
    rng = np.random.default_rng(seed)
    if n <= max_points:
        return rng.permutation(n)
    return rng.choice(n, size=max_points, replace=False)


def stratified_subsample(groups: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices, at most ``max_points``, each group kept in proportion (at least one row
    each while there are fewer groups than ``max_points``; with more, a seeded random sample: the
    bound holds for 10,000 tomograms too)."""
    groups = np.asarray(groups)
    n = groups.size
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = []
    ids, counts = np.unique(groups, return_counts=True)
    if ids.size >= max_points:
        return np.sort(rng.choice(n, size=max_points, replace=False))
    quota = np.maximum(1, np.floor(counts * max_points / n).astype(int))
    if quota.sum() > max_points:  # one row per group, the rest shared in proportion
        quota = 1 + np.floor((counts - 1) * (max_points - ids.size) / (n - ids.size)).astype(int)
    for g, q in zip(ids, quota):
        rows = np.flatnonzero(groups == g)
        keep.append(rng.choice(rows, size=min(q, rows.size), replace=False))
    return np.sort(np.concatenate(keep))


def distance_map(
    embeddings,
    groups: np.ndarray,
    metric: str = "euclidean",
    max_points: int = MAX_DISTANCE_MAP_POINTS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise distances of a stratified subsample, ordered by group.

    Within a group rows are ordered by their distance to the group's mean, so that tight
    groups show as dark blocks. Returns (distances [m, m], row indices [m], groups [m]).
    """
    from sklearn.metrics import pairwise_distances

    from .chunked import take_rows

    groups = np.asarray(groups)
    rows = stratified_subsample(groups, max_points, seed)
    x = take_rows(embeddings, rows)  # only the subsample is read (embeddings may be rows read on demand)
    order = []
    for g in np.unique(groups[rows]):
        at = np.flatnonzero(groups[rows] == g)
        centre = x[at].mean(axis=0, keepdims=True)
        d = pairwise_distances(x[at], centre, metric=metric).ravel()
        order.append(at[np.argsort(d, kind="stable")])
    at = np.concatenate(order) if order else np.arange(rows.size)
    dist = pairwise_distances(x[at], metric=metric)
    return dist, rows[at], groups[rows[at]]


# --------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["text.parse_math"] = False  # text is literal: a '$' in a tomogram name is no mathtext
    import matplotlib.pyplot as plt

    return plt


def marker_style(n: int) -> dict:
    """Marker size and transparency that keep n points readable (no mud at 10^4-10^5)."""
    s = float(np.clip(14.0 * np.sqrt(500.0 / max(n, 1)), 0.6, 14.0))
    alpha = float(np.clip(np.sqrt(2000.0 / max(n, 1)), 0.3, 0.85))
    return {"s": s, "alpha": alpha, "linewidths": 0, "rasterized": True}


def _category_colours(n: int):
    plt = _plt()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    cmap = plt.get_cmap("turbo")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def draw_categorical(
    ax, xy: np.ndarray, values: np.ndarray | Sequence, title: str, legend_title: str, counts: dict | None = None
) -> None:
    """Scatter coloured by a category (cluster, tomogram); a legend up to 20 categories, a colour bar above."""
    items = np.asarray(values).tolist()
    cats = list(dict.fromkeys(sorted(items, key=_sort_key)))
    colours = _category_colours(len(cats))
    index = {c: i for i, c in enumerate(cats)}
    codes = np.array([index[v] for v in items], dtype=np.int64)
    style = marker_style(len(values))
    if len(cats) <= MAX_LEGEND_ENTRIES:
        ax.scatter(xy[:, 0], xy[:, 1], c=[colours[i] for i in codes], **style)
        plt = _plt()
        handles = [
            plt.Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markersize=7,
                color=colours[i],
                label=f"{c}" + (f" (n={counts[c]})" if counts and c in counts else ""),
            )
            for i, c in enumerate(cats)
        ]
        ax.legend(
            handles=handles,
            title=legend_title,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            title_fontsize=9,
            frameon=False,
        )
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="turbo", vmin=0, vmax=len(cats) - 1, **style)
        _colour_bar(ax, sc, f"{legend_title} index (0-{len(cats) - 1}, sorted by name)")
    ax.set_title(title, fontsize=11)


def draw_continuous(ax, xy: np.ndarray, values: np.ndarray, title: str, label: str) -> None:
    """Scatter coloured by a value; the colour range is the 1st-99th percentile (outliers saturate)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = np.nanpercentile(values, [1, 99]) if values.size else (0.0, 1.0)
    sc = ax.scatter(
        xy[:, 0],
        xy[:, 1],
        c=values,
        cmap="viridis",
        vmin=lo,
        vmax=hi if hi > lo else lo + 1,
        **marker_style(len(values)),
    )
    _colour_bar(ax, sc, label)
    ax.set_title(title, fontsize=11)


def _colour_bar(ax, mappable, label: str):
    """An opaque colour bar for a (transparent) scatter."""
    import matplotlib.cm as cm

    plt = _plt()
    solid = cm.ScalarMappable(norm=mappable.norm, cmap=mappable.get_cmap())
    bar = plt.colorbar(solid, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(label)
    return bar


@dataclass(frozen=True)
class Panel:
    """One scatter panel of a projection figure: what colours its points and how it is labelled."""

    values: np.ndarray | Sequence  # one per point
    title: str
    label: str  # legend or colour-bar title
    categorical: bool = True  # else a continuous colour scale
    counts: dict | None = None  # category -> size, shown in the legend


def projection_figure(xy: np.ndarray, panels: Sequence[Panel], title: str, axis_name: str, note: str | None = None):
    """One scatter panel per colouring."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        if panel.categorical:
            draw_categorical(ax, xy, panel.values, panel.title, panel.label, panel.counts)
        else:
            draw_continuous(ax, xy, np.asarray(panel.values), panel.title, panel.label)
        ax.set_xlabel(f"{axis_name} 1")
        ax.set_ylabel(f"{axis_name} 2")
        ax.set_aspect("auto")
        ax.tick_params(labelsize=8)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=12)
    return fig


def projection3d_figure(
    xyz: np.ndarray, values: Sequence, title: str, axis_name: str, legend_title: str, categorical: bool
):
    plt = _plt()
    fig = plt.figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    style = marker_style(len(xyz))
    if categorical:
        items = np.asarray(values).tolist()
        cats = list(dict.fromkeys(sorted(items, key=_sort_key)))
        colours = _category_colours(len(cats))
        index = {c: i for i, c in enumerate(cats)}
        ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=[colours[index[v]] for v in items], **style)
        if len(cats) <= MAX_LEGEND_ENTRIES:
            handles = [
                plt.Line2D([], [], marker="o", linestyle="", color=colours[i], label=str(c)) for i, c in enumerate(cats)
            ]
            ax.legend(handles=handles, title=legend_title, loc="upper left", fontsize=8)
    else:
        import matplotlib.cm as cm

        sc = ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=values, cmap="viridis", **style)
        solid = cm.ScalarMappable(norm=sc.norm, cmap=sc.get_cmap())
        fig.colorbar(solid, ax=ax, fraction=0.03, pad=0.08).set_label(legend_title)
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.set_zlabel(f"{axis_name} 3")
    ax.set_title(title, fontsize=11)
    return fig


def distance_map_figure(dist: np.ndarray, groups: np.ndarray, title: str, metric: str, group_name: str):
    """Heatmap of a group-ordered distance matrix, with group boundaries and labels."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
    vmax = float(np.percentile(dist, 99)) if dist.size else 1.0
    im = ax.imshow(dist, cmap="magma_r", interpolation="nearest", vmin=0, vmax=vmax or 1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).set_label(f"{metric} distance")
    groups = np.asarray(groups)
    change = np.flatnonzero(groups[1:] != groups[:-1]) + 1
    edges = np.concatenate([[0], change, [groups.size]])
    for e in change:
        ax.axhline(e - 0.5, color="cyan", lw=0.6)
        ax.axvline(e - 0.5, color="cyan", lw=0.6)
    names = [str(groups[s]) for s in edges[:-1]]
    centres = (edges[:-1] + edges[1:]) / 2 - 0.5
    if len(names) <= 40:
        ax.set_xticks(centres, names, rotation=90 if len(names) > 8 else 0, fontsize=7)
        ax.set_yticks(centres, names, fontsize=7)
    ax.set_xlabel(f"instances, ordered by {group_name}")
    ax.set_ylabel(f"instances, ordered by {group_name}")
    ax.set_title(f"{title}\n{dist.shape[0]} instances", fontsize=11)
    return fig


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0.0, str(v))
