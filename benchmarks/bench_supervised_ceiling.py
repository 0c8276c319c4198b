"""Is the network or the training recipe the limit? A supervised classifier of the same network as a reference.

    .venv/bin/python benchmarks/bench_supervised_ceiling.py [--output /tmp/bench_ceiling] [--class-seed 3]
        [--train-particles 4000] [--steps 800] [--model models/demo_simsiam.ckpt]
        [--orders {rings,double-rings} --diameter 18] [--no-max-pool]

When the self-supervised model does not separate a class set, either its patches do not hold the
difference at this network's resolution, or the training recipe did not teach the network to see it.
This tells the two apart: it trains the model's own network (same encoder and projector, fresh weights,
plus a linear layer to the classes) *with the class labels* on particles of one class set, simulated
and cut exactly as ``train`` makes its views (:func:`subtomo_embed.core.train.extract_view`: label
growth, hull masking, the config's normalization; a random sub-voxel position; SNR 0.8-5, a ±45-70°
wedge half the time), then scores it on two held-out tomogram sets that ``simulate --kind assemblies``
writes (SNR 3; SNR 1 with a ±60° wedge). The baseline, run in the same process on the same patches, is
the self-supervised model's KMeans / spectral ARI (as ``evaluate`` reports it for the model).

``--orders`` asks the same of one envelope at one mass (``benchmarks/bench_orders.py``'s sets: rings C4 / C6
/ C8 or double rings D4 / D5 / D6 of ``--diameter`` voxels), scored on 30 particles a class drawn as that
benchmark draws them (seed 7, SNR 3 and SNR 1 + ±60° wedge). ``--no-max-pool`` trains the network
without MONAI's max-pool after the stem (twice the resolution in every later layer; several times the cost).

A classifier trained on the very classes it is tested on is an upper reference, not a competitor: the
self-supervised model must separate classes it never saw. If the classifier separates them and the model
does not, the information is in the patches and the network can represent it; the recipe is the limit.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from subtomo_embed.core.assemblies import simulate_particle
from subtomo_embed.core.model import build_simsiam, load_model
from subtomo_embed.core.simulated_views import extract_view
from subtomo_embed.stages.demo import DEMO_MODEL, Structure, dataset_config, run_simulate
from subtomo_embed.stages.evaluation import ari_scores, classes_of, dataset_patches, network_embeddings
from subtomo_embed.stages.training import training_settings


def training_patches(classes, settings, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled patches (classes cycled), each particle simulated and cut as ``train`` cuts a view."""
    rng = np.random.default_rng(seed)
    patches = np.zeros((n, *settings.contract.patch_size), np.float32)
    labels = np.arange(n) % len(classes)
    for i, c in enumerate(labels):
        shifted = dataclasses.replace(classes[c], centres=classes[c].centres + rng.uniform(-0.5, 0.5, 3))
        snr = float(np.exp(rng.uniform(np.log(0.8), np.log(5.0))))
        wedge = float(rng.uniform(45.0, 70.0)) if rng.random() < 0.5 else None
        patches[i] = extract_view(*simulate_particle(shifted, rng, settings.box, snr, wedge), settings)
    return patches, labels


def fit_classifier(network: dict, patches: np.ndarray, labels: np.ndarray, k: int, steps: int, seed: int):
    """The model's encoder (with its projector), fresh, plus a linear layer to ``k`` classes; cross-entropy."""
    torch.manual_seed(seed)
    encoder = build_simsiam(network).encoder
    classifier = torch.nn.Sequential(encoder, torch.nn.Linear(int(network["dim"]), k))
    opt = torch.optim.AdamW(classifier.parameters(), 1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    x, y = torch.from_numpy(patches)[:, None], torch.from_numpy(labels)
    draw = torch.Generator().manual_seed(seed)
    classifier.train()
    for step in range(steps):
        batch = torch.randint(len(x), (32,), generator=draw)
        loss = torch.nn.functional.cross_entropy(classifier(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(f"  classifier step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    return classifier.eval()


def predicted_classes(classifier, patches) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(np.stack(patches))[:, None]
        return torch.cat([classifier(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1).numpy()


HELD_OUT = {"SNR 3": (3.0, None), "SNR 1, ±60° wedge": (1.0, 60.0)}


def class_seed_sets(args) -> tuple[list, dict]:
    """(classes, {set: (patches, true classes)}): ``--class-seed``'s class set, two held-out tomogram sets
    that ``simulate --kind assemblies`` writes, cut as ``predict`` cuts them."""
    structure = Structure(class_seed=args.class_seed)
    classes = structure.classes()
    names = ", ".join(a.name.split(":")[1] for a in classes)
    print(f"class seed {args.class_seed} ({names}; {2 * classes[0].outer_radius:.1f} voxels across)")
    held_out = {}
    for i, (label, (snr, wedge)) in enumerate(HELD_OUT.items()):
        root = args.output / f"heldout{i}"
        truth = run_simulate(root, 4, n_particles=50, snr=snr, wedge=wedge, seed=1000 + i, structure=structure)
        patches, keys = dataset_patches(dataset_config(root, args.model))
        held_out[label] = (patches, classes_of(keys, truth))
    return classes, held_out


def order_sets(args, settings) -> tuple[list, dict]:
    """(classes, {set: (patches, true classes)}): bench_orders' set of one envelope at ``--diameter``,
    30 particles a class drawn as that benchmark draws them."""
    from bench_orders import FAMILIES, order_patches, order_set

    name = {"rings": "rings C4 / C6 / C8", "double-rings": "double rings D4 / D5 / D6"}[args.orders]
    family, orders, height = FAMILIES[name]
    classes = order_set(family, orders, height, args.diameter)
    print(f"{name}, {args.diameter:g} voxels across, one mass")
    held_out = {}
    for label, (snr, wedge) in HELD_OUT.items():
        patches, truth = order_patches(classes, 30, 7, snr, wedge, settings)
        held_out[label] = (patches, np.asarray(truth))
    return classes, held_out


def main() -> None:
    from sklearn.metrics import adjusted_rand_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("/tmp/bench_ceiling"))
    ap.add_argument("--model", type=Path, default=DEMO_MODEL)
    ap.add_argument("--class-seed", type=int, default=3, help="the class set (3: the smallest of the card's four)")
    ap.add_argument("--train-particles", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--orders", choices=["rings", "double-rings"], help="an order set of one envelope instead")
    ap.add_argument("--diameter", type=float, default=18.0, help="the order set's outer diameter (voxels)")
    ap.add_argument("--no-max-pool", action="store_true", help="train the network without the stem's max-pool")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = dataset_config(args.output, args.model)  # the demo's patch contract: predict's and train's
    settings = training_settings(cfg)
    model, network = load_model(args.model, cfg.contrastive)
    classes, held_out = order_sets(args, settings) if args.orders else class_seed_sets(args)
    print(f"model {args.model.name}; the classifier {'without' if args.no_max_pool else 'with'} the max-pool")
    k = len(classes)
    t0 = time.perf_counter()
    patches, labels = training_patches(classes, settings, args.train_particles, args.seed)
    print(f"simulated {len(patches)} training patches in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    classifier = fit_classifier({**network, "no_max_pool": args.no_max_pool}, patches, labels, k, args.steps, args.seed)
    print(f"trained the classifier ({args.steps} steps of 32) in {time.perf_counter() - t0:.0f} s")

    header = ["held-out set", "classifier accuracy", "classifier ARI", "model ARI (KMeans / spectral)"]
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, (18, 19, 14, 29))))
    for label, (patches, truth_classes) in held_out.items():
        predicted = predicted_classes(classifier, patches)
        km, sp = ari_scores(network_embeddings(model, patches, cfg.contrastive), truth_classes, k, cfg.seed)
        accuracy = float((predicted == truth_classes).mean())
        ari = adjusted_rand_score(truth_classes, predicted)
        print(f"{label:>18} | {accuracy:>19.2f} | {ari:>14.2f} | {km:>20.2f} / {sp:.2f}", flush=True)


if __name__ == "__main__":
    main()
