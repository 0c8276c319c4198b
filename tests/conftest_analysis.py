"""Synthetic inputs of the global steps: what the embedding engine writes per tomogram.

Not a conftest (imported explicitly by the analysis tests). Embeddings are Gaussian groups
with known membership, so the clustering can be checked against the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from subtomo_embed.core.io import write_h5
from subtomo_embed.core.tables import regions_to_star_table, write_regions_csv, write_star
from subtomo_embed.core.volumes import write_mrc


def grouped_embeddings(
    n: int, dim: int, groups: int, seed: int = 0, spread: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """[n, dim] embeddings in ``groups`` well separated Gaussian groups, and the group of each row."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)) * 1.0
    truth = rng.integers(0, groups, n)
    truth[:groups] = np.arange(groups)  # every group present
    x = centres[truth] + spread * rng.standard_normal((n, dim))
    return x.astype(np.float32), truth


def make_prediction_folder(
    folder: Path,
    counts=(60, 80, 70),
    dim: int = 16,
    groups: int = 4,
    seed: int = 0,
    volumes: Path | None = None,
    shape=(24, 64, 64),
) -> dict:
    """Write ``<stem>_embeds.h5``, ``_instance_labels.h5``, ``_instance_regions.csv/.star`` per tomogram.

    With ``volumes``, also ``volumes/tomograms/<stem>.mrc`` and ``volumes/masks/<stem>.mrc`` whose
    instances are small boxes at the regions' centroids. Returns the truth: stems (sorted), the
    group of every instance in merged order, the labels, the embeddings [N, dim].
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    total = int(sum(counts))
    x, truth = grouped_embeddings(total, dim, groups, seed)
    stems = [f"TS_{i:02d}" for i in range(len(counts))]
    start = 0
    all_labels = []
    for stem, n in zip(stems, counts):
        labels = rng.choice(np.arange(1, 4 * n + 1), size=n, replace=False).astype(np.int64)
        zc = rng.uniform(3, shape[0] - 4, n)
        yc = rng.uniform(4, shape[1] - 5, n)
        xc = rng.uniform(4, shape[2] - 5, n)
        z0, y0, x0 = np.floor(zc - 1).astype(int), np.floor(yc - 2).astype(int), np.floor(xc - 2).astype(int)
        regions = pd.DataFrame(
            {
                "label": labels,
                "area": rng.integers(20, 400, n).astype(np.int64),
                "bbox-0": z0,
                "bbox-1": y0,
                "bbox-2": x0,
                "bbox-3": z0 + 3,
                "bbox-4": y0 + 4,
                "bbox-5": x0 + 4,
                "centroid-0": zc,
                "centroid-1": yc,
                "centroid-2": xc,
                "hull_area": np.zeros(n),
            }
        )
        emb = x[start : start + n].T  # CryoSiam layout [dim, N]
        write_h5(folder / f"{stem}_embeds.h5", {"embeddings": emb})
        write_h5(folder / f"{stem}_instance_labels.h5", {"labels": labels})
        write_regions_csv(folder / f"{stem}_instance_regions.csv", regions)
        write_star(folder / f"{stem}_instance_regions.star", regions_to_star_table(regions))
        if volumes is not None:
            tomo = rng.normal(0, 1, shape).astype(np.float32)
            mask = np.zeros(shape, dtype=np.int16)
            for r in regions.itertuples(index=False):
                sl = (slice(r[2], r[5]), slice(r[3], r[6]), slice(r[4], r[7]))
                mask[sl] = r[0]
                tomo[sl] += 3.0
            write_mrc(Path(volumes) / "tomograms" / f"{stem}.mrc", tomo, 10.0)
            write_mrc(Path(volumes) / "masks" / f"{stem}.mrc", mask, 10.0)
        all_labels.append(labels)
        start += n
    return {
        "stems": stems,
        "truth": truth,
        "labels": np.concatenate(all_labels),
        "embeddings": x,
        "counts": list(counts),
    }
