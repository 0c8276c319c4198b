"""Training throughput: how fast pairs are simulated and cut, and how fast the network trains on them.

    .venv/bin/python benchmarks/bench_training.py [--config configs/demo.yaml] [--batch 32] [--steps 5]
        [--workers 0,2,4] [--batches 8]

Prints pairs/s of the simulator + predict's extraction (one thread, as in training, where it runs
beside the network); batches/s as training gets them (``core.train.training_batches``) with each
``--workers`` count, and the ratio to the background thread (0) measured in the same process; and
steps/s and views/s of a SimSiam step (forward, backward, AdamW) on random input of the config's
patch size. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from subtomo_embed.core.config import load_config
from subtomo_embed.core.model import build_simsiam
from subtomo_embed.core.pair_stream import simulated_pairs, training_batches
from subtomo_embed.core.simulated_views import make_pair
from subtomo_embed.core.train import simsiam_loss
from subtomo_embed.stages.demo import DEMO_CONFIG
from subtomo_embed.stages.training import training_settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEMO_CONFIG))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", default="0,2", help="comma-separated worker counts; 0 = the background thread")
    ap.add_argument("--batches", type=int, default=8, help="batches per worker count")
    args = ap.parse_args()
    cfg = load_config(args.config)
    settings = training_settings(cfg)

    rng = np.random.default_rng(0)
    make_pair(rng, settings)
    start = time.perf_counter()
    n = 2 * args.batch
    for _ in range(n):
        make_pair(rng, settings)
    pairs_s = n / (time.perf_counter() - start)
    print(f"simulate + extract: {pairs_s:.1f} pairs/s (one thread)")

    make = simulated_pairs(settings)
    baseline = None
    for workers in (int(w) for w in args.workers.split(",")):
        batches = training_batches(make, args.batch, 0, range(args.batches + 1), workers)
        next(batches)  # workers started, first batch made
        t = time.perf_counter()
        for _ in batches:
            pass
        rate = args.batches / (time.perf_counter() - t)
        baseline = baseline or rate
        print(
            f"training batches, {workers} workers: {rate:.2f} batches/s of {args.batch} pairs ({rate / baseline:.2f}x)"
        )

    device = torch.device(args.device)
    model = build_simsiam(cfg.parameters.network.model_dump()).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x1 = torch.randn(args.batch, 1, *settings.contract.patch_size, device=device)
    x2 = torch.randn_like(x1)
    times = []
    for i in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = simsiam_loss(*model(x1, x2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    step = float(np.median(times))
    print(
        f"SimSiam step on {device} ({torch.get_num_threads()} threads), batch {args.batch}, patch "
        f"{settings.contract.patch_size}: {step:.3f} s/step, {2 * args.batch / step:.0f} views/s"
    )
    print(f"the simulator keeps up while it makes >= {args.batch / step:.1f} pairs/s")


if __name__ == "__main__":
    main()
