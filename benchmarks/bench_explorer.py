"""Time and size of embeddings_explorer.html for many points (prints figures; not a test).

    python benchmarks/bench_explorer.py --points 100000 --thumbnails 20000 --patch 64
    python benchmarks/bench_explorer.py --points 100000 --thumbnails 0 --zoom 6   # + seconds per zoom step

Synthetic data shaped like a real run: 2D and 3D projections, KMeans and spectral clusters, 50
tomograms, a STAR table with the columns ``predict`` writes for masks, and thumbnails of
sphere-masked noise patches (noise is the worst case for PNG size). Reports the time to encode the
thumbnails (PNG + base64) and, separately, to build and write the page, and the file's size. With
``--zoom N``, the page is opened in headless chromium (software WebGL, as on a machine without a GPU
or over a remote desktop) and N zoom steps (each to 80% of the view, as a scroll-wheel notch) are
timed until the frame after plotly's redraw.

"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from subtomo_embed.core import explorer as E  # noqa: E402


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 10, n)
    centres = rng.normal(0, 8, (10, 3))
    xyz = centres[clusters] + rng.normal(0, 1, (n, 3))
    tomogram = np.array([f"TS_{i:03d}" for i in rng.integers(0, 50, n)])
    label = np.arange(n) + 1
    area = rng.integers(100, 20000, n)
    centroid = rng.uniform(0, 500, (n, 3)).round(3)
    instances = E.Instances(tomogram, label, area, centroid, dict.fromkeys(np.unique(tomogram), (8.0, 8.0, 8.0)))
    projections = [E.Projection("UMAP 2D", xyz[:, :2], "UMAP"), E.Projection("UMAP 3D", xyz, "UMAP")]
    colourings = [
        E.Colouring("KMeans cluster", clusters, cluster=True),
        E.Colouring("Spectral cluster", (clusters + rng.integers(0, 2, n)) % 10 + 1, cluster=True),
        E.Colouring("tomogram", tomogram),
        E.Colouring("instance size", np.log2(area), categorical=False, label="log2 area (voxels)"),
    ]
    star = pd.DataFrame({"rlnTomoName": tomogram, "rlnLabel": label, "rlnArea": area})
    for i in range(6):
        star[f"rlnBbox-{i}"] = rng.integers(0, 500, n)
    for i, axis in enumerate("ZYX"):
        star[f"rlnCoordinate{axis}"] = centroid[:, i]
    for i, axis in enumerate("XYZ"):
        star[f"rlnCenteredCoordinate{axis}Angst"] = (centroid[:, 2 - i] - 250) * 8.0
    star["rlnClass"] = clusters
    return instances, projections, colourings, star


def masked_noise(patch: int, rng) -> np.ndarray:
    z, y, x = np.ogrid[:patch, :patch, :patch]
    c = (patch - 1) / 2
    inside = (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 <= (patch * rng.uniform(0.2, 0.45)) ** 2
    return np.where(inside, rng.normal(size=(patch,) * 3), 0).astype(np.float32)


ZOOM_SCRIPT = """
const done = arguments[arguments.length - 1], steps = arguments[0];
const gd = document.getElementById('explorer-plot');
let [x0, x1] = gd._fullLayout.xaxis.range, [y0, y1] = gd._fullLayout.yaxis.range;
const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
(async () => {
  const times = [];
  for (let i = 0; i < steps; i++) {
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, hx = (x1 - x0) * 0.4, hy = (y1 - y0) * 0.4;
    [x0, x1, y0, y1] = [cx - hx, cx + hx, cy - hy, cy + hy];
    const start = performance.now();
    await Plotly.relayout(gd, {'xaxis.range': [x0, x1], 'yaxis.range': [y0, y1]});
    await frame();
    times.push((performance.now() - start) / 1000);
  }
  done(times);
})();
"""


def zoom_seconds(path: Path, steps: int) -> tuple[float, list[float]]:
    """Seconds to open the page until drawn, and per zoom step, in headless chromium (selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-unsafe-swiftshader",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-bench-')}")
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_script_timeout(600)
        start = time.perf_counter()
        driver.get(path.as_uri())
        while driver.execute_script("return document.getElementById('explorer-plot').dataset.ready") != "1":
            time.sleep(0.05)
        opened = time.perf_counter() - start
        return opened, driver.execute_async_script(ZOOM_SCRIPT, steps)
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--thumbnails", type=int, default=20_000)
    parser.add_argument("--patch", type=int, default=64, help="patch side (voxels)")
    parser.add_argument("--zoom", type=int, default=0, help="time this many zoom steps in headless chromium")
    args = parser.parse_args()

    instances, projections, colourings, star = synthetic(args.points)
    rng = np.random.default_rng(1)
    distinct = [masked_noise(args.patch, rng) for _ in range(50)]  # cutting is predict's cost, not measured here
    start = time.perf_counter()
    rows = E.thumbnail_rows(instances.tomogram, args.thumbnails)
    thumbnails = E.encode_thumbnails(rows, (E.thumbnail_png(distinct[i % 50]) for i in range(len(rows))))
    t_thumbs = time.perf_counter() - start

    start = time.perf_counter()
    html = E.explorer_html(instances, projections, colourings, star, thumbnails)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / E.EXPLORER_NAME
        path.write_text(html, encoding="utf-8")
        size = path.stat().st_size
        t_page = time.perf_counter() - start
        zoom = zoom_seconds(path, args.zoom) if args.zoom else None
    thumb_mb = sum(len(v) for v in thumbnails.values()) / 2**20
    print(f"{args.points} points, {len(thumbnails)} thumbnails ({args.patch}^3 patches), {os.cpu_count()} CPUs")
    print(f"  thumbnails (PNG + base64): {t_thumbs:6.1f} s, {thumb_mb:6.1f} MB")
    print(f"  page (build + write):      {t_page:6.1f} s")
    print(f"  total:                     {t_thumbs + t_page:6.1f} s; file {size / 2**20:.1f} MB")
    if zoom is not None:
        opened, steps = zoom
        print(
            f"  chromium (software WebGL): drawn {opened:.1f} s after opening; zoom steps (s): "
            + ", ".join(f"{t:.2f}" for t in steps)
            + f"; median {float(np.median(steps)):.2f} s"
        )


if __name__ == "__main__":
    main()
