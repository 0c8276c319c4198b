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


# --------------------------------------------------------------------------------------------
# the strong classical baseline: spherical-harmonic power on radial shells


class SphericalHarmonicPower:
    """A rotation-invariant descriptor: the power per spherical-harmonic degree on radial shells.

    On each of ``n_shells`` spheres about the patch centre (radii evenly spaced up to
    ``max_radius``) the patch is sampled (trilinear) on a Gauss–Legendre × uniform grid and
    expanded in spherical harmonics up to degree ``max_degree``; the power of degree l,
    ``sum_m |c_lm|²``, does not change when the patch turns about its centre. The feature vector
    is ``log(1 + power)`` per (shell, degree). This separates assemblies that differ only in
    their arrangement (the symmetry shows in which degrees carry power), which a radial profile
    cannot.
    """

    def __init__(
        self, shape: tuple[int, int, int], n_shells: int = 8, max_degree: int = 8, max_radius: float | None = None
    ):
        from scipy.special import sph_harm_y

        self.shape = tuple(int(s) for s in shape)
        self.max_degree = int(max_degree)
        centre = (np.array(self.shape) - 1) / 2
        max_radius = float(max_radius if max_radius is not None else (min(self.shape) - 1) / 2)
        self.radii = np.linspace(max_radius / n_shells, max_radius, n_shells)
        n_theta, n_phi = self.max_degree + 2, 2 * self.max_degree + 3
        x, w = np.polynomial.legendre.leggauss(n_theta)
        theta = np.arccos(x)  # polar angle
        phi = 2 * np.pi * np.arange(n_phi) / n_phi
        t, p = np.meshgrid(theta, phi, indexing="ij")
        weights = (np.repeat(w, n_phi) * (2 * np.pi / n_phi)).astype(np.float64)
        directions = np.stack([np.cos(t), np.sin(t) * np.sin(p), np.sin(t) * np.cos(p)], axis=-1).reshape(-1, 3)
        # sample points (z, y, x) of every shell: (3, shells * directions)
        points = centre[None, None, :] + self.radii[:, None, None] * directions[None]
        self.points = points.reshape(-1, 3).T
        self.n_directions = len(directions)
        degrees = [(d, m) for d in range(self.max_degree + 1) for m in range(-d, d + 1)]
        self.degree_of = np.array([d for d, _ in degrees])
        basis = np.stack([sph_harm_y(d, m, t.ravel(), p.ravel()) for d, m in degrees])  # (lm, directions)
        self.projector = (np.conj(basis) * weights[None]).T  # (directions, lm)

    def __call__(self, patch: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        if patch.shape != self.shape:
            raise ValueError(f"patch of shape {patch.shape}, descriptor made for {self.shape}")
        values = ndimage.map_coordinates(np.asarray(patch, dtype=np.float64), self.points, order=1, mode="nearest")
        coefficients = values.reshape(len(self.radii), self.n_directions) @ self.projector  # (shells, lm)
        power = np.zeros((len(self.radii), self.max_degree + 1))
        np.add.at(power.T, self.degree_of, (np.abs(coefficients) ** 2).T)
        return np.log1p(power).ravel().astype(np.float32)


def describe_sh_all(patches, n_shells: int = 8, max_degree: int = 8) -> np.ndarray:
    """Spherical-harmonic power descriptors of many patches of one shape, standardized per feature."""
    patches = list(patches)
    describe_one = SphericalHarmonicPower(patches[0].shape, n_shells, max_degree)
    x = np.stack([describe_one(p) for p in patches])
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1)
