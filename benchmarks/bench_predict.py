#!/usr/bin/env python3
"""Does the model wait on extraction? Throughput of `predict`'s pipeline vs the model alone.

In one process, on one synthetic tomogram with N instances:

* model alone   — the network on patches already in memory (the ceiling);
* sequential    — CryoSiam's order: cut every patch, then run the model;
* overlapped    — ours: patches cut by background threads while the model runs
                  (``core.embed.embed_patches`` fed by ``core.extract.iter_patches``).

Prints patches/s for each and the ratio overlapped / model alone (1.0 = the model never waits).
On a 2-core CPU, extraction and the network share the cores, so the ratio is bounded by that;
on a GPU node the network runs elsewhere and the ratio shows whether the data path keeps up.

    .venv/bin/python benchmarks/bench_predict.py [--network small|cryosiam] [--device cpu|cuda] [--instances 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

NETWORKS = {
    "small": {
        "block_type": "basic",
        "num_layers": [1, 1, 1, 1],
        "num_filters": [16, 32, 64, 128],
        "dim": 256,
        "pred_dim": 64,
    },
    "cryosiam": {
        "block_type": "bottleneck",
        "num_layers": [1, 1, 1, 1],
        "num_filters": [64, 128, 256, 512],
        "dim": 1024,
        "pred_dim": 512,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", choices=NETWORKS, default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shape", type=int, nargs=3, default=[200, 400, 400])
    ap.add_argument("--mixed-precision", action="store_true")
    args = ap.parse_args()

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import tempfile

    from bench_extract import make_data  # noqa: E402 (same synthetic tomogram maker)

    from subtomo_embed.core import io
    from subtomo_embed.core.embed import embed_patches
    from subtomo_embed.core.extract import Normalization, iter_patches, plan_extraction
    from subtomo_embed.core.model import build_simsiam

    device = torch.device(args.device)
    size = (args.patch,) * 3
    with tempfile.TemporaryDirectory() as tmp:
        tomogram, mask_path, n = make_data(Path(tmp), tuple(args.shape), args.instances)
        volume, _ = io.open_mrc_volume(tomogram)
        mask = io.read_instance_mask(mask_path)
        model = build_simsiam(NETWORKS[args.network]).eval().to(device)
        dim = NETWORKS[args.network]["dim"]
        norm = Normalization(-3, 3, 0.5, 0.2)

        def plan():
            return plan_extraction(mask, 3, 10, None)

        def run(patches, count):
            return embed_patches(model, patches, count, dim, device, args.batch_size, True, args.mixed_precision)

        # warm-up (cuDNN autotune, allocator)
        warm = [np.zeros(size, np.float32)] * args.batch_size
        run(iter(warm), len(warm))
        if device.type == "cuda":
            torch.cuda.synchronize()

        p = plan()
        patches = [x for _, x in iter_patches(volume, p, size, 1, norm)]
        t = time.perf_counter()
        run(iter(patches), len(patches))
        model_only = len(patches) / (time.perf_counter() - t)

        t = time.perf_counter()
        p = plan()
        cut = [x for _, x in iter_patches(volume, p, size, 1, norm, workers=1)]
        run(iter(cut), len(cut))
        sequential = len(cut) / (time.perf_counter() - t)

        t = time.perf_counter()
        p = plan()
        run((x for _, x in iter_patches(volume, p, size, 1, norm)), len(p))
        overlapped = len(p) / (time.perf_counter() - t)

    print(
        f"{args.network} network, {len(patches)} patches of {args.patch}³, batch {args.batch_size}, {device}"
        f"{', mixed precision' if args.mixed_precision else ''}"
    )
    print(f"model alone : {model_only:8.1f} patches/s")
    print(f"sequential  : {sequential:8.1f} patches/s   (cut all, then embed: CryoSiam's order)")
    print(f"overlapped  : {overlapped:8.1f} patches/s   (ours)")
    print(
        f"overlapped / model alone = {overlapped / model_only:.2f};  overlapped / sequential = "
        f"{overlapped / sequential:.2f}"
    )


if __name__ == "__main__":
    main()
