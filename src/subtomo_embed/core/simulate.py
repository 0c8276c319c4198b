"""Synthetic tomograms: particles of known shape classes, noise, missing wedge, instance masks.

Five shape classes, drawn at random orientations with sizes that overlap between classes:

=========  ============================================================
sphere     solid ball, radius r
shell      hollow ball, outer radius r, wall ~ r/3
rod        capped cylinder, radius ~ r/2.2, half-length ~ 1.6 r
torus      ring, major radius ~ 0.75 r, tube radius ~ r/3
dumbbell   two balls of radius ~ 0.55 r joined, centres 1.1 r apart
=========  ============================================================

Density is 1 inside the particle (blurred by half a voxel), 0 outside. Noise is white Gaussian
with standard deviation ``1/sqrt(snr)`` (SNR as a variance ratio against a unit-contrast
particle); the optional missing wedge removes Fourier components beyond the tilt range
``±wedge`` degrees about the y axis, after the noise is added (as a reconstruction would).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

CLASSES = ("sphere", "shell", "rod", "torus", "dumbbell")


@dataclass(frozen=True)
class Particle:
    cls: int
    size: float  # characteristic radius in voxels
    rotation: np.ndarray  # 3x3, maps particle frame -> volume frame (z, y, x)
    aspect: float = 1.0  # small per-particle shape variation


def random_particle(rng: np.random.Generator, cls: int | None = None, size_range=(4.5, 8.0)) -> Particle:
    cls = int(rng.integers(len(CLASSES))) if cls is None else cls
    return Particle(cls, float(rng.uniform(*size_range)), Rotation.random(random_state=rng).as_matrix(),
                    float(rng.uniform(0.85, 1.15)))


def rotated(p: Particle, rng: np.random.Generator) -> Particle:
    """The same particle (class, size, shape) at a new random orientation."""
    return Particle(p.cls, p.size, Rotation.random(random_state=rng).as_matrix(), p.aspect)


def inside(p: Particle, coords: np.ndarray) -> np.ndarray:
    """Whether particle-centred coordinates (..., 3), in the volume frame, are inside the shape."""
    q = coords @ p.rotation  # volume frame -> particle frame
    a, b, c = q[..., 0], q[..., 1], q[..., 2]
    r, k = p.size, p.aspect
    name = CLASSES[p.cls]
    if name == "sphere":
        return a * a + b * b + (c / k) ** 2 <= r * r
    if name == "shell":
        d2 = a * a + b * b + (c / k) ** 2
        return (d2 <= r * r) & (d2 >= (0.62 * r) ** 2)
    if name == "rod":
        rr, half = r / 2.2, 1.6 * r * k
        cl = np.clip(c, -half, half)
        return a * a + b * b + (c - cl) ** 2 <= rr * rr
    if name == "torus":
        major, minor = 0.75 * r * k, r / 3.0
        ring = np.sqrt(a * a + b * b) - major
        return ring * ring + c * c <= minor * minor
    if name == "dumbbell":
        lobe, half = 0.55 * r, 0.55 * r * k
        d1 = a * a + b * b + (c - half) ** 2
        d2 = a * a + b * b + (c + half) ** 2
        neck = (a * a + b * b <= (0.25 * r) ** 2) & (np.abs(c) <= half)
        return (d1 <= lobe * lobe) | (d2 <= lobe * lobe) | neck
    raise ValueError(f"unknown class {p.cls}")


def render(p: Particle, box: int) -> tuple[np.ndarray, np.ndarray]:
    """(density float32, mask bool) of a particle centred in a cubic box."""
    ax = np.arange(box, dtype=np.float32) - (box - 1) / 2
    coords = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)
    mask = inside(p, coords)
    density = ndimage.gaussian_filter(mask.astype(np.float32), 0.5)
    return density, mask


def wedge_filter(shape: tuple[int, int, int], wedge_degrees: float) -> np.ndarray:
    """Fourier mask (rfft layout) keeping the tilt range ±wedge about y: |k_z| <= tan(wedge)·|k_x|."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    keep = np.abs(kz) <= np.tan(np.radians(wedge_degrees)) * np.abs(kx) + 1e-9
    return np.broadcast_to(keep, (shape[0], shape[1], shape[2] // 2 + 1))


def degrade(clean: np.ndarray, rng: np.random.Generator, snr: float, wedge: float | None) -> np.ndarray:
    """Add white noise (SNR as variance ratio for unit contrast) and apply the missing wedge."""
    noisy = clean + rng.normal(0.0, 1.0 / np.sqrt(snr), clean.shape).astype(np.float32)
    if wedge:
        f = np.fft.rfftn(noisy)
        f *= wedge_filter(clean.shape, wedge)
        noisy = np.fft.irfftn(f, s=clean.shape).astype(np.float32)
    return noisy.astype(np.float32)


@dataclass
class Tomogram:
    volume: np.ndarray  # float32 (z, y, x)
    mask: np.ndarray  # int32 labels
    truth: list[dict]  # label, class, class_name, size, centre z/y/x


def simulate_tomogram(
    shape: tuple[int, int, int],
    n_particles: int,
    rng: np.random.Generator,
    snr: float = 3.0,
    wedge: float | None = None,
    size_range=(4.5, 8.0),
    classes: tuple[int, ...] | None = None,
) -> Tomogram:
    """Particles placed without overlap (centres at least their boxes apart), then noise and wedge."""
    clean = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.int32)
    truth = []
    tries = 0
    while len(truth) < n_particles and tries < n_particles * 100:
        tries += 1
        cls = None if classes is None else int(rng.choice(classes))
        p = random_particle(rng, cls, size_range)
        box = int(2 * np.ceil(2.0 * p.size) + 3)
        if any(box >= s for s in shape):
            continue
        corner = [int(rng.integers(0, s - box)) for s in shape]
        region = tuple(slice(c, c + box) for c in corner)
        if mask[region].any():
            continue
        density, body = render(p, box)
        if not body.any():
            continue
        label = len(truth) + 1
        clean[region] += density
        mask[region][body] = label
        centre = [c + (box - 1) / 2 for c in corner]
        truth.append({"label": label, "class": p.cls, "class_name": CLASSES[p.cls], "size": round(p.size, 3),
                      "z": centre[0], "y": centre[1], "x": centre[2]})
    return Tomogram(degrade(clean, rng, snr, wedge), mask, truth)
