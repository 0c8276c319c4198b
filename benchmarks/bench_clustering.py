#!/usr/bin/env python3
"""Time KMeans, spectral clustering and UMAP on synthetic embeddings; print seconds and peak memory.

Measures, never asserts. Each (method, size) runs in its own child process so that its peak
resident memory (``ru_maxrss``) is its own; the figure includes the embeddings themselves
(N x dim float32, listed as ``data MB``). The embeddings are Gaussian groups with known
membership, and the adjusted Rand index against them is printed as a sanity check.

    python benchmarks/bench_clustering.py --sizes 10000 100000 1000000 --dim 1024
    python benchmarks/bench_clustering.py --sizes 2000 --dim 64 --methods kmeans spectral

``--commands`` measures the analysis commands themselves, as users run them, on a merged
``embeddings.h5`` of N x dim written here (one tomogram per 10,000 rows): ``subtomo-embed
kmeans``, ``spectral`` and ``visualize`` each as its own process, with the seconds, the peak
resident memory of that process and the ARI of its clusters against the truth. Beyond
``scale.memory_gb`` (default 4 GB) the commands read the embeddings in chunks (docs/analysis.md):

    python benchmarks/bench_clustering.py --commands --sizes 1000000 2000000 4000000 --dim 1024
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


ROWS_PER_TOMOGRAM = 10_000


def write_merged_input(folder, n: int, dim: int, groups: int, seed: int, spread: float, bridges: float):
    """``embeddings.h5`` + ``embeddings_table.csv`` as the merge writes them, made chunk by chunk; returns the truth."""
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from subtomo_embed.core import h5files, tables

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = [min(ROWS_PER_TOMOGRAM, n - s) for s in range(0, n, ROWS_PER_TOMOGRAM)]
    stems = [f"TS_{i:04d}" for i in range(len(counts))]
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    truth = []

    def tomogram_rows():
        for c in counts:
            first = rng.integers(0, groups, c)
            other = (first + rng.integers(1, groups, c)) % groups
            t = np.where(rng.random(c) < bridges, rng.uniform(0.0, 1.0, c), 0.0).astype(np.float32)[:, None]
            truth.append(np.where(t[:, 0] > 0.5, other, first))
            yield (1 - t) * centres[first] + t * centres[other] + spread * rng.standard_normal((c, dim), np.float32)

    labels = np.concatenate([np.arange(1, c + 1) for c in counts]).astype(np.int64)
    h5files.write_merged_embeddings(folder / "embeddings.h5", tomogram_rows(), counts, dim, stems, labels, {})
    centroid = rng.uniform(10, 500, (n, 3))
    table = pd.DataFrame(
        {
            "tomogram": np.repeat(stems, counts),
            "label": labels,
            "row": np.arange(n),
            "area": rng.integers(100, 5000, n),
            **{f"bbox-{i}": np.floor(centroid[:, i % 3] + (-5 if i < 3 else 5)).astype(np.int64) for i in range(6)},
            **{f"centroid-{i}": centroid[:, i] for i in range(3)},
        }
    )
    tables.write_regions_csv(folder / "embeddings_table.csv", table)
    return np.concatenate(truth), stems


def run_commands(args) -> None:
    """Each analysis command as its own process on a merged file of N x dim; seconds, peak RSS, ARI."""
    from pathlib import Path

    import h5py
    import yaml
    from sklearn.metrics import adjusted_rand_score

    print("| command | N | dim | seconds | peak RSS GB | data GB | ARI | note |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        folder = Path(args.workdir) / f"n{n}"
        t0 = time.perf_counter()
        truth, stems = write_merged_input(folder, n, args.dim, args.groups, args.seed, args.spread, args.bridges)
        data_gb = n * args.dim * 4 / 2**30
        print(
            f"| (write input) | {n} | {args.dim} | {time.perf_counter() - t0:.0f} | | {data_gb:.1f} | | |", flush=True
        )
        cfg = {
            "prediction_folder": str(folder),
            "seed": args.seed,
            "clustering_kmeans": {"num_clusters": args.k, "visualization": True},
            "clustering_spectral": {"num_clusters": args.k, "n_neighbors": 10, "visualization": True},
            "visualization": {"prediction_folder": str(folder / "vis")},
            "visualization_files": stems[:2],
        }
        if args.memory_gb is not None:
            cfg["scale"] = {"memory_gb": args.memory_gb}
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(cfg))
        for command in args.commands_to_run:
            watcher = (
                "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                "sys.exit(code)"
            )
            cli = [sys.executable, "-m", "subtomo_embed.cli", command, "-c", str(config), "--quiet"]
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", watcher, *cli], capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            peak = next((int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KB")), 0)
            ari, note = "-", ""
            if proc.returncode != 0:
                note = "failed: " + ([ln for ln in proc.stderr.splitlines() if ln.strip()] or ["?"])[-2][:80]
            elif command in ("kmeans", "spectral"):
                with h5py.File(folder / f"{command}_clusters.h5") as f:
                    ari = f"{adjusted_rand_score(truth, f['clusters'][()]):.3f}"
            print(
                f"| {command} | {n} | {args.dim} | {seconds:.0f} | {peak / 2**20:.2f} | {data_gb:.1f} | {ari} "
                f"| {note} |",
                flush=True,
            )
        if not args.keep:
            import shutil

            shutil.rmtree(folder)


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
    p.add_argument("--commands", action="store_true", help="time the analysis commands on a merged file instead")
    p.add_argument(
        "--run", dest="commands_to_run", nargs="+", default=["kmeans", "spectral", "visualize"], help="with --commands"
    )
    p.add_argument("--workdir", default="/tmp/bench_clustering", help="with --commands: where the inputs go")
    p.add_argument("--memory-gb", type=float, default=None, help="with --commands: scale.memory_gb")
    p.add_argument("--keep", action="store_true", help="with --commands: keep the inputs and outputs")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.commands:
        run_commands(args)
        return
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
