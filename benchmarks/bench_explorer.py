"""Time and size of embeddings_explorer.html for many points (prints figures; not a test).

    python benchmarks/bench_explorer.py --points 100000 --thumbnails 20000 --patch 64

Synthetic data shaped like a real run: 2D and 3D projections, KMeans and spectral clusters, 50
tomograms, a STAR table with the columns ``predict`` writes for masks, and thumbnails of
sphere-masked noise patches (noise is the worst case for PNG size). Reports the time to encode the
thumbnails (PNG + base64) and, separately, to build and write the page, and the file's size.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--thumbnails", type=int, default=20_000)
    parser.add_argument("--patch", type=int, default=64, help="patch side (voxels)")
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
    thumb_mb = sum(len(v) for v in thumbnails.values()) / 2**20
    print(f"{args.points} points, {len(thumbnails)} thumbnails ({args.patch}^3 patches), {os.cpu_count()} CPUs")
    print(f"  thumbnails (PNG + base64): {t_thumbs:6.1f} s, {thumb_mb:6.1f} MB")
    print(f"  page (build + write):      {t_page:6.1f} s")
    print(f"  total:                     {t_thumbs + t_page:6.1f} s; file {size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
