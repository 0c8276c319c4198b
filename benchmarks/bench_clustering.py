#!/usr/bin/env python3
"""Time KMeans, spectral clustering and UMAP on synthetic embeddings; print seconds and peak memory.

Measures, never asserts. Each (method, size) runs in its own child process so that its peak
resident memory (``ru_maxrss``) is its own; the figure includes the embeddings themselves
(N x dim float32, listed as ``data MB``). The embeddings are Gaussian groups with known
membership, and the adjusted Rand index against them is printed as a sanity check.

    python benchmarks/bench_clustering.py --sizes 10000 100000 1000000 --dim 1024
    python benchmarks/bench_clustering.py --sizes 2000 --dim 64 --methods kmeans spectral
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def make_embeddings(n: int, dim: int, groups: int, seed: int, spread: float = 0.35, bridges: float = 0.0):
    """Gaussian groups of embeddings, made in chunks (no float64 copy of the whole array).

    A fraction ``bridges`` of the points lie on segments between two group centres (their
    truth: the nearer one), which joins the k-NN graph into one connected component, as
    intermediate states do in real data.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    first = rng.integers(0, groups, n)
    other = (first + rng.integers(1, groups, n)) % groups
    t = np.where(rng.random(n) < bridges, rng.uniform(0.0, 1.0, n), 0.0).astype(np.float32)
    truth = np.where(t > 0.5, other, first)
    x = np.empty((n, dim), dtype=np.float32)
    step = 50_000
    for s in range(0, n, step):
        e = min(n, s + step)
        tt = t[s:e, None]
        x[s:e] = (1 - tt) * centres[first[s:e]] + tt * centres[other[s:e]]
        x[s:e] += spread * rng.standard_normal((e - s, dim), dtype=np.float32)
    return x, truth


def one(method: str, n: int, dim: int, k: int, groups: int, seed: int, spread: float, bridges: float) -> dict:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from subtomo_embed.core import cluster, visualize

    x, truth = make_embeddings(n, dim, groups, seed, spread, bridges)
    t0 = time.perf_counter()
    ari = None
    extra = {}
    if method == "kmeans":
        labels, _ = cluster.kmeans(x, k, seed=seed)
        ari = adjusted_rand_score(truth, labels)
    elif method == "spectral":
        result = cluster.spectral(x, k, n_neighbors=10, seed=seed)
        ari = adjusted_rand_score(truth, result.labels)
        extra = {"graph_components": result.n_components}
    elif method == "spectral_estimate":
        result = cluster.spectral(x, k, estimate_num_clusters=True, n_neighbors=10, seed=seed)
        ari = adjusted_rand_score(truth, result.labels)
        k = result.num_clusters
    elif method == "umap":
        coords, _ = visualize.project(x, 2, "euclidean", seed=seed)
        assert np.isfinite(coords).all()
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "n": n,
        "dim": dim,
        "k": k,
        "seconds": round(seconds, 1),
        "peak_mb": round(peak_kb / 1024),
        "data_mb": round(n * dim * 4 / 2**20),
        "ari": None if ari is None else round(float(ari), 3),
        **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["kmeans", "spectral", "umap"],
        choices=["kmeans", "spectral", "spectral_estimate", "umap"],
    )
    p.add_argument("--k", type=int, default=10, help="clusters (the upper bound for spectral_estimate)")
    p.add_argument("--groups", type=int, default=10, help="true groups in the synthetic data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--spread",
        type=float,
        default=0.35,
        help="noise per dimension around unit-variance group centres (0.35: separate groups, "
        "a k-NN graph with one component per group)",
    )
    p.add_argument(
        "--bridges",
        type=float,
        default=0.0,
        help="fraction of points between two groups (0.05 joins the k-NN graph into one component)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:
        print(
            json.dumps(
                one(args.one[0], int(args.one[1]), args.dim, args.k, args.groups, args.seed, args.spread, args.bridges)
            )
        )
        return

    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}"
    )
    if not args.json:
        print("| method | N | dim | k | seconds | peak RSS MB | data MB | ARI | graph components |")
        print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for method in args.methods:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                method,
                str(n),
                "--dim",
                str(args.dim),
                "--k",
                str(args.k),
                "--groups",
                str(args.groups),
                "--seed",
                str(args.seed),
                "--spread",
                str(args.spread),
                "--bridges",
                str(args.bridges),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {method} | {n} | {args.dim} | {args.k} | failed: {tail} | | | | |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print(
                    f"| {r['method']} | {r['n']} | {r['dim']} | {r['k']} | {r['seconds']} | {r['peak_mb']} | "
                    f"{r['data_mb']} | {r['ari'] if r['ari'] is not None else '-'} | "
                    f"{r.get('graph_components', '-')} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
