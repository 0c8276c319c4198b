"""Issue 28: can the model tell assemblies that differ only in order? C4/C6/C8 rings, double rings by order.

    .venv/bin/python benchmarks/bench_orders.py [--model models/demo_simsiam.ckpt] [--per-class 30]
        [--diameters 14 18 22] [--rotations 24]

For each outer diameter (voxels), two class sets of one envelope each, built by
:func:`subtomo_embed.core.assemblies.make_assembly` with one mass per set (:func:`common_mass`):
rings of 4, 6 and 8 sub-units (one flat disc outline), and double rings (dihedral D4, D5, D6; height
1.0). Each is simulated ``--per-class`` times at a uniformly random orientation
(:func:`~subtomo_embed.core.assemblies.simulate_set`: SNR 3, and SNR 1 with a ±60° wedge; band-passed),
cut as ``predict`` cuts (the demo config's patch contract) and scored as ``evaluate`` scores: KMeans /
spectral ARI (k = 3) of the model's embeddings, the model averaged over ``--rotations`` rotations of the
cube, an untrained twin, and the radial and spherical-harmonic descriptors. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from subtomo_embed.core.assemblies import common_mass, make_assembly, simulate_set
from subtomo_embed.core.config import load_config
from subtomo_embed.core.descriptors import describe_all, describe_sh_all
from subtomo_embed.core.model import build_simsiam, load_model
from subtomo_embed.core.simulated_views import extract_view
from subtomo_embed.stages import evaluation as E
from subtomo_embed.stages.demo import DEMO_CONFIG, DEMO_MODEL
from subtomo_embed.stages.training import training_settings

FAMILIES = {  # set name: (family, orders, double-ring height)
    "rings C4 / C6 / C8": ("ring", (4, 6, 8), 0.0),
    "double rings D4 / D5 / D6": ("dihedral", (4, 5, 6), 1.0),
}
BOX = 40  # each particle's tile, as tests/test_demo.py simulates assembly sets
DIFFICULTIES = {"SNR 3": (3.0, None), "SNR 1 + ±60° wedge": (1.0, 60.0)}


def order_set(family: str, orders: tuple[int, ...], height: float, diameter: float) -> list:
    """One class per order, one outer diameter and one mass (the set's lightest with touching sub-units)."""
    specs = [(family, n, height, 0.0) for n in orders]
    mass = common_mass(specs, diameter)
    return [make_assembly(f"{family}{n}", family, diameter, mass, n, height) for n in orders]


def order_patches(classes: list, per_class: int, seed: int, snr: float, wedge, views) -> tuple[list, list]:
    """(patches, true classes): ``per_class`` particles of each class at uniformly random orientations
    (:func:`~subtomo_embed.core.assemblies.simulate_set`), cut as ``predict`` cuts them."""
    volumes, masks, truth = simulate_set(classes, per_class, seed, BOX, snr, wedge)
    return [extract_view(v, m, views) for v, m in zip(volumes, masks)], truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DEMO_MODEL)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--diameters", type=float, nargs="+", default=[14.0, 18.0, 22.0])
    ap.add_argument("--rotations", type=int, default=24, help="embedding_rotations of the averaged row (1: none)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    views = training_settings(load_config(DEMO_CONFIG))
    model, network = load_model(args.model, True)
    torch.manual_seed(0)
    untrained = build_simsiam(network).eval()
    header = ["model", f"model, {args.rotations} rotations", "untrained", "radial", "spherical harmonics"]
    print(f"model {args.model}; {args.per_class} particles a class; ARI KMeans / spectral (k = 3)\n")
    print("| set | diameter | data | " + " | ".join(header) + " | s |")
    print("|---" * (len(header) + 4) + "|")
    for name, (family, orders, height) in FAMILIES.items():
        for diameter in args.diameters:
            classes = order_set(family, orders, height, diameter)
            for data, (snr, wedge) in DIFFICULTIES.items():
                start = time.perf_counter()
                patches, truth = order_patches(classes, args.per_class, args.seed, snr, wedge, views)
                features = [
                    E.network_embeddings(model, patches),
                    E.network_embeddings(model, patches, rotations=args.rotations),
                    E.network_embeddings(untrained, patches),
                    describe_all(patches),
                    describe_sh_all(patches),
                ]
                cells = [E.ari_scores(f, truth, len(orders), 0) for f in features]
                text = " | ".join(f"{k:.2f} / {s:.2f}" for k, s in cells)
                seconds = time.perf_counter() - start
                print(f"| {name} | {diameter:g} | {data} | {text} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
