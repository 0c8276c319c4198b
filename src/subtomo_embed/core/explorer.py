"""The embeddings explorer: one self-contained HTML page (Plotly) to look at the projections.

Array in, HTML out; no files are read here except the page's own script (``explorer.js``).
The page holds plotly.js inline (no CDN), the per-instance table, the projections (2D as WebGL
``scattergl``, 3D as ``scatter3d``), the colourings (clusters, tomogram, size) and small PNG
thumbnails of the particles. Its script regroups the points into one trace per category when the
colouring changes (so legend entries toggle groups), shows an instance's details and thumbnail
on hover, and turns a box/lasso selection into a STAR or CSV download.

Numeric arrays travel as base64 little-endian float32/int32 (compact, decoded with ``atob``);
the STAR rows travel as the text the package's one STAR writer (``core.star``) gives each of them,
so a downloaded selection is what the CLI would write for those particles.
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .patch_contract import PatchContract

log = logging.getLogger(__name__)

PLOT_DIV = "explorer-plot"
THUMBNAIL_SIDE = 64  # pixels: a slice larger than this is shrunk by an integer factor
MAX_THUMBNAIL_BYTES = 64 * 2**20  # bound on the inlined thumbnails (base64 text), whatever the count
MAX_POINTS = 200_000  # bound on the points in the page (a stratified sample above): ~45 MB without thumbnails
# plotly's configuration: an offline page has no control that sends anything anywhere (plotly.js 3
# shows a "Share chart..." button that uploads the data to Plotly Cloud unless told not to; it knows
# no ``showLink`` or ``showEditInChartStudio`` any more)
PLOT_CONFIG = {
    "displaylogo": False,
    "showSendToCloud": False,
    "plotlyServerURL": "",
    "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud", "editInChartStudio"],
    "scrollZoom": True,
    "responsive": True,
}


@dataclass
class Projection:
    """Coordinates of every instance: ``coords`` [N, 2] or [N, 3]; ``axis`` names the axes (UMAP, PC)."""

    name: str
    coords: np.ndarray
    axis: str

    @property
    def dims(self) -> int:
        return int(self.coords.shape[1])


@dataclass
class Colouring:
    """Per-instance values to colour by; ``cluster`` colourings are also listed on hover."""

    name: str
    values: np.ndarray
    categorical: bool = True
    cluster: bool = False
    label: str = ""  # colour-bar title of a continuous colouring


@dataclass
class Instances:
    """The per-instance facts shown on hover, in row order (the merged order)."""

    tomogram: np.ndarray  # str [N]
    label: np.ndarray  # int [N]
    area: np.ndarray  # voxels [N]
    centroid: np.ndarray  # z, y, x voxels [N, 3]
    voxel_size: Mapping[str, Sequence[float] | None] = field(default_factory=dict)  # stem -> (z, y, x) Å
    row: np.ndarray | None = None  # each instance's row in the merged embeddings (default 0..N-1)

    def __len__(self) -> int:
        return int(len(self.label))


# --------------------------------------------------------------------------------------------
# thumbnails


def stratified_order(groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every row, ordered so that each prefix takes every group in proportion, and every group early.

    Within a group the order is random (seeded); rows of all groups are then merged by their
    fractional rank k / group size: the first rows are one of each group, and the first m rows
    hold each group's share of m, to within about one row.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    shuffled = rng.permutation(groups.size)
    by_group = shuffled[np.argsort(inverse[shuffled], kind="stable")]  # random within each group
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    g = inverse[by_group]
    rank = np.arange(groups.size) - starts[g]
    key = rank / counts[g]
    return by_group[np.lexsort((g, key))]


def thumbnail_rows(groups: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """The rows that get a thumbnail, in priority order: a stratified sample of ``limit`` rows (all if fewer)."""
    return stratified_order(groups, seed)[: max(int(limit), 0)]


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    factor = int(np.ceil(max(image.shape) / side))
    if factor <= 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def orthogonal_slices(patch: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The central xy, xz and yz slices of a (z, y, x) patch side by side, 2 px apart, each at most ``side`` px."""
    pz, py, px = patch.shape
    slices = [patch[pz // 2], patch[:, py // 2, :], patch[:, :, px // 2]]
    slices = [_shrink(np.asarray(s, dtype=np.float32), side) for s in slices]
    height = max(s.shape[0] for s in slices)
    gap = 2
    out = np.full((height, sum(s.shape[1] for s in slices) + gap * (len(slices) - 1)), np.nan, dtype=np.float32)
    x = 0
    for s in slices:
        out[: s.shape[0], x : x + s.shape[1]] = s
        x += s.shape[1] + gap
    return out


def thumbnail_png(patch: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """An 8-bit grey PNG of a patch's orthogonal slices, scaled to their 1st-99th percentile; gaps white."""
    from PIL import Image

    image = orthogonal_slices(patch, side)
    values = image[np.isfinite(image)]
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    scaled = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255
    pixels = np.where(np.isfinite(image), scaled, 255).astype(np.uint8)
    buf = _io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def masked_patches(volume, mask: np.ndarray, regions, contract: PatchContract) -> Iterator[np.ndarray]:
    """Each region's masked patch exactly as ``predict`` cuts it (``core.extract``), in table order.

    ``regions``: a regions table (label, bbox-0..5) of the instances to cut; ``contract``: the
    config's :class:`~subtomo_embed.core.patch_contract.PatchContract`.
    """
    from .extract import Extraction, iter_patches, regions_from_table

    found = regions_from_table(mask, regions, contract.expand_labels)
    extraction = Extraction({"hull_area": np.zeros(len(found), np.int64)}, found)
    for _, patch in iter_patches(volume, extraction, contract):
        yield patch


def picked_patches(
    volume, regions, contract: PatchContract, mask_radius: float | None = None, source: str = "tomogram"
) -> Iterator[np.ndarray]:
    """Each pick's patch exactly as ``predict-centers`` cuts it (``core.extract.cut_centered_patch``):
    the cubic box ``bbox`` of the regions table, sphere-masked with ``mask_radius`` around the centroid."""
    from .extract import cut_centered_patch

    starts = regions[[f"bbox-{i}" for i in range(3)]].to_numpy(np.int64)
    sizes = regions["bbox-3"].to_numpy(np.int64) - starts[:, 0]
    centres = regions[[f"centroid-{i}" for i in range(3)]].to_numpy(np.float64)
    for start, size, centre in zip(starts, sizes, centres):
        yield cut_centered_patch(
            volume, start, int(size), contract.patch_size, contract.norm, centre, mask_radius, source
        )


# --------------------------------------------------------------------------------------------
# colours


def category_colours(n: int) -> list[str]:
    """The PNG figures' palette (tab10, tab20, then turbo) as CSS colours."""
    import matplotlib
    from matplotlib.colors import to_hex

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [to_hex(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [to_hex(cmap(i)) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [to_hex(cmap(i / max(n - 1, 1))) for i in range(n)]


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0.0, str(v))


# --------------------------------------------------------------------------------------------
# the page's data


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _categorical(values: np.ndarray) -> tuple[list, np.ndarray]:
    values = np.asarray(values)
    cats, codes = np.unique(values, return_inverse=True)
    order = sorted(range(len(cats)), key=lambda i: _sort_key(cats[i].item() if hasattr(cats[i], "item") else cats[i]))
    rank = np.empty(len(cats), dtype=np.int64)
    rank[order] = np.arange(len(cats))
    return [_plain(cats[i]) for i in order], rank[codes.ravel()]


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def colouring_data(colouring: Colouring) -> dict:
    if colouring.categorical:
        cats, codes = _categorical(colouring.values)
        return {
            "name": colouring.name,
            "kind": "categorical",
            "categories": [str(c) for c in cats],
            "colours": category_colours(len(cats)),
            "codes": _b64(codes, "<i4"),
            "cluster": colouring.cluster,
        }
    values = np.asarray(colouring.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return {
        "name": colouring.name,
        "kind": "continuous",
        "values": _b64(values, "<f4"),
        "label": colouring.label,
        "cmin": float(lo),
        "cmax": float(hi if hi > lo else lo + 1),
    }


def star_lines(star) -> dict:
    """A STAR table as the package's one writer (:func:`core.star.star_text`, exact floats) writes
    it, split for the page: ``head`` (everything before the rows: header, blocks, column names) and
    ``rows`` (one line per instance). A selection's download is ``head`` and its rows' lines, byte for
    byte what :func:`core.star.star_text` writes for those rows (a row's text never depends on another's)."""
    from .star import star_text

    lines = star_text(star, exact=True).rstrip("\n").split("\n")
    n = len(star)
    return {"head": "\n".join(lines[: len(lines) - n]) + "\n", "rows": lines[len(lines) - n :] if n else []}


def draw_order(n: int, seed: int = 0) -> np.ndarray:
    """The order the page draws its points in: seeded random, so that no group (a tomogram drawn
    last) is painted over the others where they overlap, as the PNG figures draw them."""
    return np.random.default_rng(seed).permutation(n)


def page_data(
    instances: Instances,
    projections: Sequence[Projection],
    colourings: Sequence[Colouring],
    star=None,
    thumbnails: dict[int, str] | None = None,
    title: str = "Embeddings explorer",
    seed: int = 0,
) -> dict:
    """Everything the page's script needs, JSON-ready (what :func:`explorer_html` puts in the page)."""
    if not projections:
        raise ValueError("the explorer needs at least one projection")
    n = len(instances)
    for p in projections:
        if p.coords.shape[0] != n or p.dims not in (2, 3):
            raise ValueError(f"projection {p.name} has shape {p.coords.shape}, expected ({n}, 2 or 3)")
    for c in colourings:
        if len(c.values) != n:
            raise ValueError(f"colouring {c.name} has {len(c.values)} values for {n} instances")
    if star is not None and len(star) != n:
        raise ValueError(f"the STAR table has {len(star)} rows for {n} instances")
    tomograms, tomogram_codes = np.unique(np.asarray(instances.tomogram).astype(str), return_inverse=True)
    sizes = {str(t): instances.voxel_size.get(str(t)) for t in tomograms}
    voxel_size = {t: (None if v is None else [float(x) for x in v]) for t, v in sizes.items()}
    centroid = np.asarray(instances.centroid, dtype=np.float64)
    return {
        "n": n,
        "title": title,
        "config": dict(PLOT_CONFIG),
        "order": _b64(draw_order(n, seed), "<i4"),
        "tomograms": tomograms.tolist(),
        "tomogram": _b64(tomogram_codes.ravel(), "<i4"),
        "label": np.asarray(instances.label, dtype=np.int64).tolist(),
        "row": (np.arange(n) if instances.row is None else np.asarray(instances.row, dtype=np.int64)).tolist(),
        "area": np.asarray(instances.area, dtype=np.float64).tolist(),
        "centroid": [np.round(centroid[:, i], 3).tolist() for i in range(3)],
        "voxel_size": voxel_size,
        "projections": [
            {
                "name": p.name,
                "axis": p.axis,
                "dims": p.dims,
                "coords": [_b64(p.coords[:, i], "<f4") for i in range(p.dims)],
            }
            for p in projections
        ],
        "colourings": [colouring_data(c) for c in colourings],
        "star": star_lines(star) if star is not None else None,
        "thumbnails": {str(k): v for k, v in (thumbnails or {}).items()},
    }


def encode_thumbnails(
    rows: Iterable[int], pngs: Iterable[bytes], max_bytes: int = MAX_THUMBNAIL_BYTES
) -> dict[int, str]:
    """row -> base64 PNG, in the given (priority) order, until ``max_bytes`` of base64 text are used."""
    out: dict[int, str] = {}
    used = 0
    for row, png in zip(rows, pngs):
        text = base64.b64encode(png).decode("ascii")
        if used + len(text) > max_bytes:
            log.info("explorer: thumbnails stop at %d (%.1f MB, the bound)", len(out), used / 2**20)
            break
        out[int(row)] = text
        used += len(text)
    return out


# --------------------------------------------------------------------------------------------
# the page


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; }
header { padding: 6px 12px; background: #f3f3f3; border-bottom: 1px solid #ccc; display: flex; gap: 14px;
         align-items: center; flex-wrap: wrap; font-size: 14px; }
header h1 { font-size: 15px; margin: 0 10px 0 0; }
main { flex: 1; display: flex; min-height: 0; }
#explorer-figure { flex: 1; min-width: 0; overflow: hidden; }
#explorer-figure > div, #explorer-plot { width: 100%; height: 100%; }
aside { width: 300px; padding: 10px; border-left: 1px solid #ccc; overflow-y: auto; font-size: 13px; }
aside img { image-rendering: pixelated; width: 100%; border: 1px solid #888; background: #fff; }
aside table { border-collapse: collapse; } aside td { padding: 1px 6px 1px 0; vertical-align: top; }
.note { color: #666; font-size: 12px; }
button:disabled { opacity: 0.5; }
"""


def _page_script() -> str:
    return resources.files(__package__).joinpath("explorer.js").read_text(encoding="utf-8")


def _json_for_script(data: dict) -> str:
    """JSON safe inside a <script> element (no ``</script>`` can close it early)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def explorer_html(data: dict) -> str:
    """The whole page of :func:`page_data`'s ``data``: one file, plotly.js inline, opens offline in any
    browser; no control of it sends data anywhere (:data:`PLOT_CONFIG`)."""
    import plotly.graph_objects as go

    title, n = data["title"], data["n"]
    figure = go.Figure(layout={"template": "plotly_white", "margin": {"l": 50, "r": 10, "t": 30, "b": 45}})
    plot = figure.to_html(
        include_plotlyjs=True,
        full_html=False,
        div_id=PLOT_DIV,
        default_width="100%",
        default_height="100%",
        config=dict(PLOT_CONFIG),  # plotly.py takes keys out of it
        post_script=_page_script(),
    )
    thumbs = len(data["thumbnails"])
    sample = " (a stratified sample)" if thumbs < n else ""
    note = f"{n} instances; " + (f"thumbnails for {thumbs}{sample}" if thumbs else "no thumbnails")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>{PAGE_CSS}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>
<label>Projection <select id="projection"></select></label>
<label>Colour by <select id="colour-by"></select></label>
<span id="selection-count">no selection</span>
<button id="download-star" disabled>Download STAR</button>
<button id="download-csv" disabled>Download CSV</button>
<span class="note">{html.escape(note)}. Box/lasso select on a 2D view (toolbar);
click legend entries to hide groups.</span>
</header>
<script type="application/json" id="explorer-data">{_json_for_script(data)}</script>
<main><div id="explorer-figure">{plot}</div>
<aside id="details"><p class="note">Hover over a point to see the instance.</p></aside></main>
</body></html>
"""
