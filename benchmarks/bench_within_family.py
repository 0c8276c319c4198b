"""Arrangements of one family: can the model tell rings of 6 from rings of 8? KMeans ARI per class set.

    .venv/bin/python benchmarks/bench_within_family.py [--diameters 16 20] [--snr 3] [--wedge 60] [--per-class 40]

The held-out class sets of ``evaluate`` (``random_class_set``) cycle through the families, so their
classes differ in family (a ring beside a cube beside a filament). Here each set holds arrangements of
one family (rings of 3..8 sub-units, double rings of 4..6, filaments of one length at three twists or
three lengths at one twist), plus the example set of issue 16 and arrangements outside the 38 training
labels, all of one outer diameter and one mass, simulated (``simulate_set``: random orientation, noise,
band-pass, optional wedge) and cut as ``predict`` cuts them. The baseline is the spherical-harmonic
descriptor on the same patches: the power per degree shows a ring's order directly.

What it tells a user: which differences of arrangement the model sees, and which it does not.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from subtomo_embed.core.assemblies import common_mass, make_assembly, simulate_set
from subtomo_embed.core.config import load_config
from subtomo_embed.core.descriptors import describe_sh_all
from subtomo_embed.core.model import load_model
from subtomo_embed.core.simulated_views import extract_view
from subtomo_embed.stages.demo import DEMO_CONFIG, DEMO_MODEL
from subtomo_embed.stages.evaluation import ari_scores, network_embeddings
from subtomo_embed.stages.training import training_settings

# (family, n, double-ring height, twist in degrees) per class
CLASS_SETS: dict[str, list[tuple[str, int, float, float]]] = {
    "issue 16's example: ring4, ring6, tetrahedral, octahedral, D4": [
        ("ring", 4, 0, 0),
        ("ring", 6, 0, 0),
        ("tetrahedral", 0, 0, 0),
        ("octahedral", 0, 0, 0),
        ("dihedral", 4, 1.1, 0),
    ],
    "tetrahedral, octahedral, cubic, icosahedral": [
        (f, 0, 0, 0) for f in ("tetrahedral", "octahedral", "cubic", "icosahedral")
    ],
    "rings 4, 5": [("ring", 4, 0, 0), ("ring", 5, 0, 0)],
    "rings 4, 6": [("ring", 4, 0, 0), ("ring", 6, 0, 0)],
    "rings 6, 8": [("ring", 6, 0, 0), ("ring", 8, 0, 0)],
    "rings 4, 6, 8": [("ring", n, 0, 0) for n in (4, 6, 8)],
    "rings 3..8": [("ring", n, 0, 0) for n in range(3, 9)],
    "double rings 4, 5, 6": [("dihedral", n, 1.1, 0) for n in (4, 5, 6)],
    "filament of 8 at 60, 120, 166 degrees": [("filament", 8, 0, t) for t in (60.0, 120.0, 166.0)],
    "filaments of 6, 8, 10 at 144 degrees": [("filament", n, 0, 144.0) for n in (6, 8, 10)],
    "outside the 38 labels: ring9, ring10, D7, filament8 100, filament11 144": [
        ("ring", 9, 0, 0),
        ("ring", 10, 0, 0),
        ("dihedral", 7, 1.1, 0),
        ("filament", 8, 0, 100.0),
        ("filament", 11, 0, 144.0),
    ],
    "their twins inside the 38: ring8, ring6, D6, filament8 90, filament10 144": [
        ("ring", 8, 0, 0),
        ("ring", 6, 0, 0),
        ("dihedral", 6, 1.1, 0),
        ("filament", 8, 0, 90.0),
        ("filament", 10, 0, 144.0),
    ],
}


def equal_mass_classes(specs: list[tuple[str, int, float, float]], diameter: float):
    """The classes at one outer diameter and one mass (:func:`common_mass`, as ``random_class_set``)."""
    mass = common_mass(specs, diameter)
    return [make_assembly(f"{i}", f, diameter, mass, n, h, t) for i, (f, n, h, t) in enumerate(specs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEMO_MODEL)
    ap.add_argument("--diameters", type=float, nargs="+", default=[16, 20])
    ap.add_argument("--snr", type=float, default=3.0)
    ap.add_argument("--wedge", type=float, default=None, help="missing wedge half-angle (degrees)")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    settings = training_settings(load_config(DEMO_CONFIG))
    model, _ = load_model(args.model)
    print(f"SNR {args.snr}, wedge {args.wedge}, {args.per_class} particles a class; model {args.model.name}")
    print(f"{'class set':74s} diameter | model KMeans / spectral | SH descriptor | seconds")
    for name, specs in CLASS_SETS.items():
        for diameter in args.diameters:
            start = time.perf_counter()
            classes = equal_mass_classes(specs, diameter)
            volumes, masks, truth = simulate_set(classes, args.per_class, args.seed, 40, args.snr, args.wedge)
            patches = [extract_view(v, m, settings) for v, m in zip(volumes, masks)]
            model_ari = ari_scores(network_embeddings(model, patches), truth, len(classes), 0)
            sh_ari = ari_scores(describe_sh_all(patches), truth, len(classes), 0)
            print(
                f"{name:74s} {diameter:8.0f} | {model_ari[0]:14.2f} / {model_ari[1]:.2f} |"
                f" {sh_ari[0]:6.2f} / {sh_ari[1]:.2f} | {time.perf_counter() - start:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
