"""Small synthetic cryo-ET data for the tests, made with fixed seeds."""

from __future__ import annotations

from pathlib import Path

import h5py
import mrcfile
import numpy as np
import yaml

TINY_NETWORK = {
    "block_type": "basic",
    "num_layers": [1, 1, 1, 1],
    "num_filters": [4, 8, 8, 16],
    "no_max_pool": True,
    "dim": 16,
    "pred_dim": 8,
    "spatial_dims": 3,
    "in_channels": 1,
}
# the same tiny network with the stem's max pool (as the demo's and CryoSiam's networks have)
TINY_POOLED_NETWORK = {**TINY_NETWORK, "no_max_pool": False}


def blob_mask(shape, n, seed=0, radius=(2, 6), spacing_labels=1) -> np.ndarray:
    """A label volume with ``n`` ellipsoids (labels spacing_labels, 2*spacing_labels, ...; may touch)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.int32)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for i in range(1, n + 1):
        c = rng.integers(0, shape)
        r = rng.integers(radius[0], radius[1] + 1, 3)
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        mask[inside] = i * spacing_labels
    return mask


def write_mrc(path: Path, data: np.ndarray, voxel_size: float = 10.0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
    return path


def write_h5_mask(path: Path, mask: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("instances", data=mask)
    return path


def make_dataset(root: Path, n_tomograms=2, shape=(32, 48, 40), n_instances=8, seed=0, mask_format="h5"):
    """data/<TS_i>.mrc + masks/<TS_i>_instance_preds.h5 (or .mrc); returns (data, masks) folders."""
    data, masks = root / "data", root / "masks"
    data.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for t in range(n_tomograms):
        stem = f"TS_{t + 1:02d}"
        mask = blob_mask(shape, n_instances, seed=seed + t)
        volume = (rng.normal(0.5, 0.2, shape) + 0.3 * (mask > 0)).astype(np.float32)
        write_mrc(data / f"{stem}.mrc", volume)
        if mask_format == "h5":
            write_h5_mask(masks / f"{stem}_instance_preds.h5", mask)
        else:
            write_mrc(masks / f"{stem}.mrc", mask.astype(np.int16))
    return data, masks


def make_checkpoint(path: Path, network=None, seed=0) -> Path:
    import torch

    from subtomo_embed.core.model import build_simsiam, save_checkpoint

    network = dict(network or TINY_NETWORK)
    torch.manual_seed(seed)
    model = build_simsiam(network)
    # give BatchNorm non-trivial running statistics, as a trained model has
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.embed(torch.randn(4, 1, 12, 12, 12))
    save_checkpoint(path, model, {"parameters": {"network": network}})
    return path


def write_config(path: Path, **values) -> Path:
    cfg = {
        "data_folder": None,
        "instances_mask_folder": None,
        "log_dir": None,
        "prediction_folder": None,
        "trained_model": None,
        "contrastive": True,
        "file_extension": ".mrc",
        "test_files": None,
        "clustering_files": None,
        "visualization_files": None,
        "min_particle_size": 10,
        "max_particle_size": None,
        "masking_type": 1,
        "expand_labels": 2,
        "clustering_kmeans": {"num_clusters": 3, "visualization": False},
        "clustering_spectral": {"num_clusters": 3, "estimate_num_clusters": False, "visualization": False},
        "visualization": {
            "prediction_folder": None,
            "distance": "euclidean",
            "pca_components": None,
            "visualization_suffix": "instance_regions.csv",
            "visualize_umap": True,
            "3d_umap": False,
        },
        "parameters": {
            "gpu_devices": None,
            "data": {"patch_size": [12, 12, 12], "patch_overlap": None, "min": 0, "max": 1, "mean": 0, "std": 1},
            "network": {"spatial_dims": 3, "in_channels": 1, "dim": 16},
        },
        "hyper_parameters": {"batch_size": 4},
    }
    for key, value in values.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = str(value) if isinstance(value, Path) else value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_picks(path: Path, masks: Path, voxel_size: float = 10.0) -> Path:
    """RELION 5 picks (centred Å) at the centroids of the instances of every mask in ``masks``."""
    import pandas as pd
    import starfile
    from scipy import ndimage

    rows = []
    for mask_path in sorted(masks.glob("*_instance_preds.h5")):
        stem = mask_path.name[: -len("_instance_preds.h5")]
        with h5py.File(mask_path) as f:
            mask = f["instances"][()]
        labels = [v for v in np.unique(mask) if v]
        for c in ndimage.center_of_mass(mask > 0, mask, labels):
            rows.append(
                {
                    "rlnTomoName": stem,
                    **{
                        f"rlnCenteredCoordinate{a}Angst": (c[i] - mask.shape[i] / 2) * voxel_size
                        for i, a in ((2, "X"), (1, "Y"), (0, "Z"))
                    },
                }
            )
    starfile.write({"particles": pd.DataFrame(rows)}, path, overwrite=True)
    return path
