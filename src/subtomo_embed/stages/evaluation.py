"""Scores of a simulated dataset against its truth table: the model as ``predict`` ran it, an
untrained network of the same shape and two classical descriptors, by the ARI of KMeans and spectral
clusters (``evaluate`` and the demo, :mod:`.demo`; the benchmarks).

``truth.csv`` (written by ``simulate``, :func:`.demo.run_simulate`): one row per particle, its tomogram, label
and class; :func:`read_truth` checks it before anything is embedded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core import io, tables
from ..core.config import Config
from ..core.errors import InputDataError
from ..core.patch_contract import patch_contract

METHODS = ("trained model", "untrained network", "radial descriptor", "spherical-harmonic descriptor")


def read_truth(root: Path, stems: list[str] | None = None) -> pd.DataFrame:
    """``truth.csv``, checked before anything is embedded: the columns, integer labels and classes,
    each (tomogram, label) once, at least 2 classes, and (``stems``) rows for every tomogram."""
    path = Path(root) / "truth.csv"
    if not path.is_file():
        raise InputDataError("no truth.csv: not a folder made by `subtomo-embed simulate`", path.parent)
    truth = tables.read_names_table(path, "tomogram")
    missing = [c for c in ("tomogram", "label", "class") if c not in truth.columns]
    if missing:
        raise InputDataError(f"truth table lacks columns {missing}", path)
    if truth.empty:
        raise InputDataError("truth table has no rows", path)
    for column in ("label", "class"):
        truth[column] = tables.integer_column(truth[column], column, path)
    twice = np.flatnonzero(truth.duplicated(["tomogram", "label"], keep=False).to_numpy())
    if twice.size:
        first = truth.iloc[twice[0]]
        same = twice[((truth["tomogram"] == first["tomogram"]) & (truth["label"] == first["label"])).to_numpy()[twice]]
        raise InputDataError(
            f"tomogram {first['tomogram']!r} label {first['label']} appears twice "
            f"(rows {same[0] + 1} and {same[1] + 1})",
            path,
        )
    if truth["class"].nunique() < 2:
        raise InputDataError(
            f"truth table holds {truth['class'].nunique()} class: at least 2 are needed to score clusters", path
        )
    absent = [s for s in stems or [] if s not in set(truth["tomogram"])]
    if absent:
        raise InputDataError(f"truth table names none of the instances of tomogram {absent[0]!r}", path)
    return truth


def dataset_patches(cfg: Config) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Every kept instance's patch exactly as predict cuts it, with (tomogram, label)."""
    from ..core.extract import iter_patches
    from .tomograms import list_tomograms, load_tomogram_and_mask, locate_inputs, plan_tomogram

    contract = patch_contract(cfg)
    patches, keys = [], []
    for tomogram in list_tomograms(cfg):
        inputs = locate_inputs(cfg, tomogram)
        if inputs is None:  # no mask, skip_missing_masks
            continue
        volume, mask = load_tomogram_and_mask(inputs)
        plan = plan_tomogram(cfg, inputs, mask)
        for i, p in iter_patches(volume, plan, contract):
            patches.append(p)
            keys.append((inputs.stem, int(plan.columns["label"][i])))
    return patches, pd.DataFrame(keys, columns=["tomogram", "label"])


def predicted_embeddings(cfg: Config) -> tuple[np.ndarray, pd.DataFrame]:
    """The embeddings ``predict`` wrote (``<stem>_embeds.h5``, [dim, N]) with (tomogram, label)."""
    from ..core.layout import TomogramOutputs
    from .tomograms import list_tomograms

    folder = cfg.path("prediction_folder")
    parts, keys = [], []
    for tomogram in list_tomograms(cfg):
        stem = cfg.stem(tomogram.name)
        outputs = TomogramOutputs(folder, stem)
        emb = io.read_h5_dataset(outputs.embeds, "embeddings").T
        labels = io.read_h5_dataset(outputs.labels, "labels")
        parts.append(emb)
        keys += [(stem, int(v)) for v in labels]
    return np.concatenate(parts), pd.DataFrame(keys, columns=["tomogram", "label"])


def network_embeddings(model, patches: list[np.ndarray], contrastive: bool = True, rotations: int = 1) -> np.ndarray:
    import torch

    from ..core.embed import embed_patches

    device = torch.device("cpu")
    return embed_patches(model, iter(patches), len(patches), model.dim, device, 64, contrastive, rotations=rotations)


def ari_scores(embeddings: np.ndarray, classes: np.ndarray, k: int, seed: int) -> tuple[float, float]:
    """ARI against ``classes`` of KMeans and of spectral clusters (the pipeline's own functions)."""
    from sklearn.metrics import adjusted_rand_score

    from ..core import cluster

    km, _ = cluster.kmeans(np.array(embeddings, dtype=np.float32), k, seed=seed)
    sp = cluster.spectral(np.array(embeddings, dtype=np.float32), k, n_neighbors=10, seed=seed).labels
    return float(adjusted_rand_score(classes, km)), float(adjusted_rand_score(classes, sp))


def classes_of(keys: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    merged = keys.merge(truth[["tomogram", "label", "class"]], on=["tomogram", "label"], how="left")
    if merged["class"].isna().any():
        raise InputDataError(f"{int(merged['class'].isna().sum())} instances are not in truth.csv")
    return merged["class"].to_numpy(dtype=np.int64)


def model_scores(cfg: Config, truth: pd.DataFrame) -> tuple[float, float]:
    """ARI (KMeans, spectral) of the model as ``predict`` ran it (its output files)."""
    embeddings, keys = predicted_embeddings(cfg)
    return ari_scores(embeddings, classes_of(keys, truth), int(truth["class"].nunique()), cfg.seed)


def score_dataset(cfg: Config, truth: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """ARI (KMeans, spectral) of: the model as ``predict`` ran it (its output files), an untrained
    network of the same shape, and the two classical descriptors of the same patches (radial profile
    + inertia; spherical-harmonic power per degree on radial shells)."""
    import torch

    from ..core.descriptors import describe_all, describe_sh_all
    from ..core.model import build_simsiam, load_model

    contract = patch_contract(cfg)
    k = int(truth["class"].nunique())
    scores = {METHODS[0]: model_scores(cfg, truth)}
    patches, keys = dataset_patches(cfg)
    classes = classes_of(keys, truth)
    _, network = load_model(cfg.path("trained_model"), cfg.contrastive)
    torch.manual_seed(cfg.seed)
    untrained = build_simsiam(network).eval()
    untrained_embeddings = network_embeddings(untrained, patches, cfg.contrastive, contract.embedding_rotations)
    scores[METHODS[1]] = ari_scores(untrained_embeddings, classes, k, cfg.seed)
    scores[METHODS[2]] = ari_scores(describe_all(patches), classes, k, cfg.seed)
    scores[METHODS[3]] = ari_scores(describe_sh_all(patches), classes, k, cfg.seed)
    return scores
