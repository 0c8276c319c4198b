"""Synthetic tomograms: particles of known shape classes, noise, missing wedge, instance masks.

Five shape classes, drawn at random orientations (uniform over SO(3)) with sizes drawn from one
range for every class, so sizes overlap between classes:

=========  ============================================================
sphere     solid ball, radius r
shell      hollow ball, outer radius r, wall 0.38 r
rod        capped cylinder, radius r/2.2, half-length 1.6 r
torus      ring, major radius 0.75 r, tube radius r/3
dumbbell   two balls of radius 0.55 r, centres 1.1 r apart, thin neck
=========  ============================================================

Each particle also has an ``aspect`` (0.85–1.15) that stretches it along its own axis.

Intensities: background 0, particle density 1 (its voxel mask blurred by half a voxel); white
Gaussian noise of standard deviation ``1/sqrt(snr)`` (SNR as a variance ratio against a
unit-contrast particle); the optional missing wedge removes the Fourier components outside the
tilt range ``±wedge`` degrees about the y axis, after the noise is added (as a reconstruction
would). ``configs/demo.yaml`` normalizes these tomograms with ``min -2, max 3, mean 0.4, std 0.2``:
a clip to [-2, 3] that otherwise leaves the values unchanged.

Everything is drawn from one ``numpy.random.Generator``: the same seed gives the same files.
The instance mask is the particle's voxel mask (label 1..N, 0 background); particles' boxes do
not overlap, with a margin, so ``expand_labels`` up to that margin never merges two particles.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

log = logging.getLogger(__name__)

CLASSES = ("sphere", "shell", "rod", "torus", "dumbbell")
DEFAULT_SIZE_RANGE = (4.0, 7.0)
MAX_VOXELS = 1 << 28  # 256 Mi voxels (512×512×1024): volume, labels, noise and FFT take ~33 bytes a voxel, 9 GB
MAX_PARTICLE_BOX = 255  # voxels: one particle's render box (its coordinate grid takes ~20 bytes a voxel, 330 MB)


@dataclass(frozen=True)
class Particle:
    cls: int
    size: float  # characteristic radius r, voxels
    rotation: np.ndarray  # 3x3, maps particle frame -> volume frame (z, y, x)
    aspect: float = 1.0  # stretch along the particle's own axis

    @property
    def name(self) -> str:
        return CLASSES[self.cls]


def random_particle(rng: np.random.Generator, cls: int | None = None, size_range=DEFAULT_SIZE_RANGE) -> Particle:
    cls = int(rng.integers(len(CLASSES))) if cls is None else int(cls)
    size = float(rng.uniform(*size_range))
    return Particle(cls, size, Rotation.random(random_state=rng).as_matrix(), float(rng.uniform(0.85, 1.15)))


def rotated(p: Particle, rng: np.random.Generator) -> Particle:
    """The same particle (class, size, aspect) at a new random orientation."""
    return another_view(p, rng, 0.0)


def another_view(
    p: Particle, rng: np.random.Generator, scale_jitter: float = 0.0, aspect_jitter: float = 0.0
) -> Particle:
    """The same particle (class, size, aspect) at a new random orientation; its size and aspect
    optionally rescaled by factors in ``[1/(1+j), 1+j]`` (scale augmentations)."""
    size, aspect = p.size, p.aspect
    if scale_jitter:
        size *= float(np.exp(rng.uniform(-1, 1) * np.log1p(scale_jitter)))
    if aspect_jitter:
        aspect *= float(np.exp(rng.uniform(-1, 1) * np.log1p(aspect_jitter)))
    return Particle(p.cls, size, Rotation.random(random_state=rng).as_matrix(), aspect)


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


def box_size(p: Particle) -> int:
    """An odd cubic box that holds the particle whatever its orientation."""
    return int(2 * np.ceil(2.0 * p.size * max(p.aspect, 1.0)) + 3)


def render(p: Particle, box: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(density float32, mask bool) of a particle centred in a cubic box."""
    box = box or box_size(p)
    ax = np.arange(box, dtype=np.float32) - (box - 1) / 2
    coords = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)
    mask = inside(p, coords)
    density = ndimage.gaussian_filter(mask.astype(np.float32), 0.5)
    return density, mask


def wedge_filter(shape: tuple[int, int, int], wedge_degrees: float) -> np.ndarray:
    """Fourier mask (rfft layout) of the tilt range ±wedge about y: keeps |k_z| <= tan(wedge)·|k_x|."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    keep = np.abs(kz) <= np.tan(np.radians(wedge_degrees)) * np.abs(kx) + 1e-9
    return np.broadcast_to(keep, (shape[0], shape[1], shape[2] // 2 + 1))


def degrade(clean: np.ndarray, rng: np.random.Generator, snr: float, wedge: float | None) -> np.ndarray:
    """Add white noise (SNR as variance ratio for unit contrast), then apply the missing wedge."""
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(snr))
    if wedge:
        f = np.fft.rfftn(noisy)
        f *= wedge_filter(clean.shape, wedge)
        noisy = np.fft.irfftn(f, s=clean.shape, axes=(0, 1, 2))
    return noisy.astype(np.float32)


@dataclass
class Tomogram:
    volume: np.ndarray  # float32 (z, y, x)
    mask: np.ndarray  # int32 labels
    truth: list[dict]  # label, class, class_name, size, aspect, z, y, x (geometric centre)


@dataclass
class Rendered:
    """One particle drawn and rendered, ready to place: density and mask in a cubic box centred on
    the particle's geometric centre, and its truth row (class, class_name, ...; no label or position)."""

    density: np.ndarray
    mask: np.ndarray
    info: dict


def balanced_order(n_particles: int, pool: list[int], rng: np.random.Generator) -> list[int]:
    """``n_particles`` classes cycled over ``pool``, in random order."""
    order = [pool[i % len(pool)] for i in range(n_particles)]
    rng.shuffle(order)
    return order


def place_particles(
    shape: tuple[int, int, int], particles: Iterable[Rendered], rng: np.random.Generator, margin: int = 4
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Put rendered particles at random without overlap (their tight boxes ``margin`` voxels apart).

    ``particles`` is consumed one at a time, so a generator that draws each particle from ``rng``
    interleaves drawing and placing. A particle that finds no room in 200 tries is left out.
    Returns (clean density, instance labels 1..N, truth rows with label and centre z, y, x).
    """
    clean = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.int32)
    occupied = np.zeros(shape, bool)
    truth: list[dict] = []
    for particle in particles:
        full = particle.density.shape[0]
        # the tight box of the particle's density (a voxel of blur around its mask)
        tight = ndimage.find_objects((particle.density > 1e-3).astype(np.int8))[0]
        density, body = particle.density[tight], particle.mask[tight]
        dims = density.shape
        if any(d + 2 * margin > s for d, s in zip(dims, shape)):
            continue
        for _ in range(200):
            corner = [int(rng.integers(margin, s - d - margin + 1)) for d, s in zip(dims, shape)]
            around = tuple(slice(c - margin, c + d + margin) for c, d in zip(corner, dims))
            if not occupied[around].any():
                break
        else:
            continue
        region = tuple(slice(c, c + d) for c, d in zip(corner, dims))
        label = len(truth) + 1
        occupied[region] = True
        clean[region] += density
        mask[region][body] = label
        centre = [c + (full - 1) / 2 - t.start for c, t in zip(corner, tight)]
        truth.append({"label": label, **particle.info, "z": centre[0], "y": centre[1], "x": centre[2]})
    return clean, mask, truth


def max_particles(shape: tuple[int, int, int], margin: int = 4) -> int:
    """An upper bound on the particles :func:`place_particles` can put in ``shape``: their boxes (one
    voxel at least) are ``margin`` voxels apart and from the faces, so along an axis of ``s`` voxels at
    most ``(s - margin) // (1 + margin)`` fit."""
    return int(np.prod([max(0, (int(s) - margin) // (1 + margin)) for s in shape], dtype=np.float64))


def warn_if_crowded(placed: int, asked: int, shape: tuple[int, int, int]) -> None:
    if placed < asked:
        log.warning("placed %d of %d particles: the volume %s is too crowded", placed, asked, shape)


def simulate_tomogram(
    shape: tuple[int, int, int],
    n_particles: int,
    rng: np.random.Generator,
    snr: float = 3.0,
    wedge: float | None = None,
    size_range=DEFAULT_SIZE_RANGE,
    classes: tuple[int, ...] | None = None,
    margin: int = 4,
) -> Tomogram:
    """Particles placed at random without overlap (their tight boxes ``margin`` voxels apart), then noise and wedge.

    Classes are balanced (cycled, in random order); if the volume is too crowded, fewer than
    ``n_particles`` are placed (with a warning).
    """
    z, y, x = (int(s) for s in shape)
    shape = (z, y, x)
    pool = list(classes) if classes is not None else list(range(len(CLASSES)))
    order = balanced_order(n_particles, pool, rng)

    def drawn() -> Iterator[Rendered]:
        for cls in order:
            p = random_particle(rng, cls, size_range)
            density, body = render(p, box_size(p))
            info = {"class": p.cls, "class_name": p.name, "size": round(p.size, 4), "aspect": round(p.aspect, 4)}
            yield Rendered(density, body, info)

    clean, mask, truth = place_particles(shape, drawn(), rng, margin)
    warn_if_crowded(len(truth), n_particles, shape)
    return Tomogram(degrade(clean, rng, snr, wedge), mask, truth)


# --------------------------------------------------------------------------------------------
# single particles for training: the same particle simulated twice


def particle_volume(
    p: Particle,
    rng: np.random.Generator,
    snr: float,
    wedge: float | None,
    box: int,
    dilate: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One particle alone in a ``box``³ volume, degraded; returns (volume float32, mask int32 label 1).

    ``dilate`` grows the mask by that many voxels (an imperfect segmentation).
    """
    own = box_size(p)
    density, body = render(p, own)
    clean = np.zeros((box,) * 3, np.float32)
    mask = np.zeros((box,) * 3, bool)
    if own <= box:
        lo = (box - own) // 2
        sl = (slice(lo, lo + own),) * 3
        clean[sl] = density
        mask[sl] = body
    else:  # larger than the box: keep its centre
        lo = (own - box) // 2
        sl = (slice(lo, lo + box),) * 3
        clean[:] = density[sl]
        mask[:] = body[sl]
    if dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=int(dilate))
    return degrade(clean, rng, snr, wedge), mask.astype(np.int32)
