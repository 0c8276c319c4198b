"""A hand-crafted baseline descriptor of a masked patch: radial profile + inertia eigenvalues.

What a careful person would compute without a network, to tell whether the model learns more:

* the radial profile — mean intensity in 8 concentric shells around the patch centre;
* the sorted eigenvalues of the intensity-weighted inertia tensor of the masked voxels
  (positive part of the intensity), normalized by their sum — elongated, flat or round;
* the masked volume (log) and the mean intensity inside it.
"""

from __future__ import annotations

import numpy as np


def describe(patch: np.ndarray, n_shells: int = 8) -> np.ndarray:
    shape = np.array(patch.shape)
    centre = (shape - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1) - centre
    radius = np.linalg.norm(grid, axis=-1)
    edges = np.linspace(0, radius.max() + 1e-6, n_shells + 1)
    shell = np.digitize(radius, edges) - 1
    profile = np.array([patch[shell == i].mean() if np.any(shell == i) else 0.0 for i in range(n_shells)])
    inside = patch != 0
    weights = np.clip(patch, 0, None) * inside
    total = weights.sum()
    if total > 0:
        mean = (grid * weights[..., None]).reshape(-1, 3).sum(0) / total
        d = (grid - mean).reshape(-1, 3)
        w = weights.reshape(-1)
        cov = (d * w[:, None]).T @ d / total
        eig = np.sort(np.linalg.eigvalsh(cov))[::-1]
        eig = eig / max(eig.sum(), 1e-9)
    else:
        eig = np.zeros(3)
    volume = np.log1p(inside.sum())
    mean_inside = patch[inside].mean() if inside.any() else 0.0
    return np.concatenate([profile, eig, [volume, mean_inside]]).astype(np.float32)


def describe_all(patches) -> np.ndarray:
    """Descriptors of many patches, standardized per feature (zero mean, unit variance)."""
    x = np.stack([describe(p) for p in patches])
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1)
