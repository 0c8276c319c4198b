"""The embedded default: simulate a small dataset, embed it, cluster and draw it, score it.

``subtomo-embed demo`` (``make demo``) runs the whole job on one machine with no GPU, no
Nextflow and no internet, with the committed model ``models/demo_simsiam.ckpt`` (made by
``subtomo-embed train``; ``--retrain`` makes a new one first), and ends by printing the
adjusted Rand index of KMeans and spectral clusters against the true classes, next to an
untrained network of the same shape and a hand-crafted descriptor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import io
from ..core.config import Config, load_config
from ..core.simulate import CLASSES, simulate_tomogram

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_MODEL = REPO / "models" / "demo_simsiam.ckpt"


@dataclass(frozen=True)
class Difficulty:
    name: str
    snr: float
    wedge: float | None


EASY = Difficulty("SNR 3, no wedge", 3.0, None)
HARD = Difficulty("SNR 1, ±60° wedge", 1.0, 60.0)


def run_simulate(root: Path, n_tomograms: int, shape: tuple[int, int, int], n_particles: int, snr: float,
                 wedge: float | None, seed: int, prefix: str = "TS") -> pd.DataFrame:
    """Write ``data/<TS>.mrc``, ``masks/<TS>_instance_preds.h5`` and ``truth.csv`` under ``root``."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_tomograms):
        stem = f"{prefix}_{t + 1:02d}"
        tomo = simulate_tomogram(shape, n_particles, rng, snr=snr, wedge=wedge)
        io.write_mrc(root / "data" / f"{stem}.mrc", tomo.volume, voxel_size=10.0)
        io.write_h5(root / "masks" / f"{stem}_instance_preds.h5", {"instances": tomo.mask})
        rows += [{"tomogram": stem, **r} for r in tomo.truth]
    truth = pd.DataFrame(rows)
    io.write_regions_csv(root / "truth.csv", truth)
    log.info("simulated %d tomograms %s with %d particles (SNR %g, wedge %s) → %s", n_tomograms, shape, len(truth),
             snr, f"±{wedge:g}°" if wedge else "none", root)
    return truth


def demo_config(output: Path, model: Path, data_root: Path) -> Config:
    return load_config(DEMO_CONFIG, [
        f"data_folder={data_root / 'data'}",
        f"instances_mask_folder={data_root / 'masks'}",
        f"prediction_folder={data_root / 'predictions'}",
        f"visualization.prediction_folder={data_root / 'predictions' / 'vis'}",
        f"log_dir={output}",
        f"trained_model={model}",
    ])


def dataset_patches(cfg: Config) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Every kept instance's patch exactly as predict cuts it, with (tomogram, label)."""
    from ..core.extract import iter_patches
    from .embedding import list_tomograms, load_tomogram_and_mask, locate_inputs, normalization, patch_size, \
        plan_tomogram

    patches, keys = [], []
    for tomogram in list_tomograms(cfg):
        inputs = locate_inputs(cfg, tomogram)
        volume, mask = load_tomogram_and_mask(inputs)
        plan = plan_tomogram(cfg, inputs, mask)
        for i, p in iter_patches(volume, plan, patch_size(cfg), cfg.masking_type, normalization(cfg)):
            patches.append(p)
            keys.append((inputs.stem, int(plan.table["label"][i])))
    return patches, pd.DataFrame(keys, columns=["tomogram", "label"])


def network_embeddings(model, patches: list[np.ndarray], contrastive: bool = True) -> np.ndarray:
    import torch

    from ..core.embed import embed_patches

    return embed_patches(model, iter(patches), len(patches), model.dim, torch.device("cpu"), 64, contrastive)


def ari_scores(embeddings: np.ndarray, classes: np.ndarray, k: int, seed: int) -> tuple[float, float]:
    from sklearn.metrics import adjusted_rand_score

    from ..core import cluster

    km, _ = cluster.kmeans(embeddings, k, seed=seed)
    sp = cluster.spectral(embeddings, k, n_neighbors=10, seed=seed).labels
    return adjusted_rand_score(classes, km), adjusted_rand_score(classes, sp)


def score_dataset(cfg: Config, truth: pd.DataFrame, model_path: Path) -> dict[str, tuple[float, float]]:
    """ARI (KMeans, spectral) of the trained model, an untrained twin, and the descriptor."""
    import torch

    from ..core.descriptors import describe_all
    from ..core.model import build_simsiam, load_model

    patches, keys = dataset_patches(cfg)
    classes = keys.merge(truth, on=["tomogram", "label"], how="left")["class"].to_numpy()
    k = len(CLASSES)
    trained, network = load_model(model_path, cfg.contrastive)
    torch.manual_seed(cfg.seed)
    untrained = build_simsiam(network).eval()
    return {
        "trained model": ari_scores(network_embeddings(trained, patches), classes, k, cfg.seed),
        "untrained network": ari_scores(network_embeddings(untrained, patches), classes, k, cfg.seed),
        "hand-crafted descriptor": ari_scores(describe_all(patches), classes, k, cfg.seed),
    }


def run_demo(output: Path, retrain: bool = False, steps: int | None = None, tomograms: int = 2,
             particles: int = 70, shape: tuple[int, int, int] = (64, 192, 192), seed: int = 1) -> dict:
    """The whole job on simulated data; returns the ARI table."""
    from .analysis import resolve_folders, run_kmeans, run_spectral, run_visualize
    from .embedding import run_predict

    start = time.perf_counter()
    output = output.absolute()
    model = DEMO_MODEL
    if retrain:
        model = retrain_demo_model(output / "training" / "last.ckpt", steps)
    results = {}
    for difficulty, tag in ((EASY, "easy"), (HARD, "hard")):
        root = output / tag
        truth = run_simulate(root, tomograms, shape, particles, difficulty.snr, difficulty.wedge,
                             seed=seed + (0 if tag == "easy" else 100))
        cfg = demo_config(output, model, root)
        if tag == "easy":  # the full job, with every output and figure, on the easier set
            run_predict(cfg, overwrite=True)
            folders = resolve_folders(cfg, None, None, None)
            run_kmeans(cfg, folders)
            run_spectral(cfg, folders)
            run_visualize(cfg, folders)
        results[difficulty.name] = score_dataset(cfg, truth, model)
    seconds = time.perf_counter() - start
    print_report(results, output, seconds)
    return results


def print_report(results: dict, output: Path, seconds: float) -> None:
    lines = ["", f"subtomo-embed demo finished in {seconds:.0f} s", "",
             "Adjusted Rand index against the true classes (1 = perfect, 0 = chance):", ""]
    header = f"  {'':26s}" + "".join(f"{name:>26s}" for name in results)
    lines.append(header)
    lines.append(f"  {'':26s}" + "".join(f"{'KMeans':>13s}{'spectral':>13s}" for _ in results))
    methods = next(iter(results.values())).keys()
    for m in methods:
        lines.append(f"  {m:26s}" + "".join(f"{results[d][m][0]:13.2f}{results[d][m][1]:13.2f}" for d in results))
    vis = output / "easy" / "predictions" / "vis"
    pngs = sorted(vis.rglob("*.png")) if vis.is_dir() else []
    lines += ["", f"Embeddings and clusters: {output / 'easy' / 'predictions'}",
              f"Figures ({len(pngs)} PNGs): {vis}"]
    for p in pngs[:8]:
        lines.append(f"  {p.relative_to(output)}")
    if len(pngs) > 8:
        lines.append(f"  ... and {len(pngs) - 8} more")
    print("\n".join(lines), flush=True)


def retrain_demo_model(checkpoint: Path, steps: int | None = None, device: str = "cpu") -> Path:
    """Train the demo network from scratch (resumable) with the demo config; returns the checkpoint."""
    from ..core.train import ViewSettings, train
    from .embedding import normalization, patch_size

    cfg = load_config(DEMO_CONFIG)
    settings = ViewSettings(patch_size(cfg), cfg.masking_type, cfg.expand_labels, normalization(cfg))
    return train(cfg.model_dump(by_alias=True), cfg.parameters.network.model_dump(), settings, checkpoint,
                 steps or cfg.hyper_parameters.max_steps, cfg.hyper_parameters.batch_size,
                 cfg.hyper_parameters.learning_rate, cfg.seed, device)


def export_model(checkpoint: Path, dest: Path) -> Path:
    """Copy a training checkpoint without the optimizer state (what gets committed)."""
    import torch

    from ..core.model import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    ckpt.pop("optimizer_states", None)
    with io.atomic_output(dest) as tmp:
        torch.save(ckpt, tmp)
    return dest
