"""How small may a particle be? ARI against particle diameter, for one class set's arrangements.

    .venv/bin/python benchmarks/bench_particle_size.py [--output /tmp/bench_size] [--class-seed 3]
        [--diameters 12 14 16 18 20 24] [--snr 3] [--wedge 60] [--rotations 1 24]

The same five families of sub-unit assemblies (:func:`subtomo_embed.core.assemblies.random_class_set`
with ``--class-seed``; one mass and one outer diameter per set) are simulated at each diameter
(``simulate --kind assemblies --min-diameter D --max-diameter D``), embedded by ``predict`` with the
model (default: the embedded demo model) and scored as ``evaluate`` scores them: KMeans / spectral ARI
of the model, its untrained twin, the radial descriptor and the spherical-harmonic descriptor. With
``--rotations 1 24`` the model is also run averaging over the cube's 24 rotations
(``embedding_rotations``). The baseline is the classical SH descriptor on the same patches.

What it tells a user: from which size (in voxels, at the binning they embed at) the model tells
arrangements apart, so they can bin their tomograms to reach it. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from subtomo_embed.stages.demo import DEMO_MODEL, Structure, dataset_config, run_simulate
from subtomo_embed.stages.embedding import run_predict
from subtomo_embed.stages.evaluation import METHODS, ari_scores, classes_of, predicted_embeddings, score_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("/tmp/bench_size"))
    ap.add_argument("--model", type=Path, default=DEMO_MODEL)
    ap.add_argument("--class-seed", type=int, default=3, help="the class set (its families, orders, twists)")
    ap.add_argument("--diameters", type=float, nargs="+", default=[12, 14, 16, 18, 20, 24])
    ap.add_argument("--snr", type=float, default=3.0)
    ap.add_argument("--wedge", type=float, default=None, help="missing wedge half-angle (degrees)")
    ap.add_argument("--tomograms", type=int, default=4)
    ap.add_argument("--particles", type=int, default=50, help="per tomogram")
    ap.add_argument("--rotations", type=int, nargs="+", default=[1], help="embedding_rotations to run the model with")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    structure_of = {d: Structure(class_seed=args.class_seed, diameter_range=(d, d)) for d in args.diameters}
    names = ", ".join(a.name.split(":")[1] for a in structure_of[args.diameters[0]].classes())
    wedge = f"±{args.wedge:g}° wedge" if args.wedge else "no wedge"
    print(
        f"class seed {args.class_seed} ({names}); SNR {args.snr:g}, {wedge}; "
        f"{args.tomograms * args.particles} particles per diameter; model {args.model.name}"
    )
    columns = [f"model ×{r}" for r in args.rotations] + ["untrained", "radial", "SH descriptor"]
    print(f"{'diameter':>8} | " + " | ".join(f"{c:>15}" for c in columns) + " | seconds")
    for diameter, structure in structure_of.items():
        t0 = time.perf_counter()
        root = args.output / f"d{diameter:g}"
        truth = run_simulate(
            root,
            n_tomograms=args.tomograms,
            shape=(64, 256, 256),  # room for 50 particles of 24 voxels
            n_particles=args.particles,
            snr=args.snr,
            wedge=args.wedge,
            seed=args.seed,
            structure=structure,
        )
        default = dataset_config(root, args.model)
        run_predict(default, device="cpu", overwrite=True)
        scores = score_dataset(default, truth)  # the model as predict ran it, its untrained twin, the descriptors
        cells = []
        for rotations in args.rotations:
            if rotations == default.embedding_rotations:
                cells.append(scores[METHODS[0]])
                continue
            cfg = dataset_config(root, args.model)
            cfg.embedding_rotations = rotations
            run_predict(cfg, device="cpu", overwrite=True)
            embeddings, keys = predicted_embeddings(cfg)
            cells.append(ari_scores(embeddings, classes_of(keys, truth), int(truth["class"].nunique()), cfg.seed))
        baselines = [scores[m] for m in METHODS[1:]]
        cells += baselines
        row = " | ".join(f"{km:>7.2f} / {sp:.2f}" for km, sp in cells)
        print(f"{diameter:>8g} | {row} | {time.perf_counter() - t0:.0f}", flush=True)


if __name__ == "__main__":
    main()
