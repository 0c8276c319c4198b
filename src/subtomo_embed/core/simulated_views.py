"""Views of simulated particles for SimSiam training, patches cut exactly as ``predict`` cuts them.

Positive pairs: the same particle (class, size, aspect) simulated twice, independently: each
view has its own random orientation (any angle), its own noise at its own SNR, its own
missing wedge (or none), its own slight rescaling and mask dilation, and its own intensity
gain. The two views share the particle's shape and nothing else, so the network cannot match
them by their noise or their mask outline (views of one noisy copy are matched that way: the
loss falls to -0.98 while the embedding learns nothing about shape). A share ``assembly_fraction``
of the pairs are sub-unit assemblies (:mod:`.assemblies`) instead of envelope shapes: one class of a
fresh random class set, simulated twice the same way, so the network learns how sub-units are
arranged, not only the outline; a share ``family_set_fraction`` of those class sets are of one family
(rings, or double rings, of several orders at one mass), so that order within one envelope is a
difference to see. Each pair carries its class (the envelope shape, or the assembly's
arrangement: :func:`class_targets`), for the supervised terms of :mod:`.train`.

Each view is a small volume holding the particle plus its instance mask (label 1); its patch is
cut by :func:`~subtomo_embed.core.extract.plan_extraction` and
:func:`~subtomo_embed.core.extract.cut_patch` with the config's patch contract
(:class:`~.patch_contract.PatchContract`: ``expand_labels``, ``masking_type``, ``patch_size`` and
normalization): the same function calls as ``predict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from .assemblies import ARRANGEMENTS, random_class_set, scaled, simulate_particle
from .extract import cut_patch, plan_extraction
from .patch_contract import PatchContract
from .real_views import random_dilation
from .simulate import CLASSES as SHAPE_CLASSES
from .simulate import DEFAULT_SIZE_RANGE, another_view, particle_volume, random_particle


@dataclass(frozen=True)
class ViewSettings:
    """How the two views of a simulated particle are made (recorded in the checkpoint's training state):
    the config's patch contract, and the simulation and augmentation ranges, each drawn independently
    for each view."""

    contract: PatchContract = field(default_factory=PatchContract)
    snr_range: tuple[float, float] = (0.7, 6.0)  # log-uniform per view
    wedge_probability: float = 0.5  # per view
    wedge_range: tuple[float, float] = (45.0, 70.0)  # degrees, uniform per view
    size_range: tuple[float, float] = DEFAULT_SIZE_RANGE
    scale_jitter: float = 0.35  # each view's size times a factor in [1/1.35, 1.35] (a random-resized-crop)
    aspect_jitter: float = 0.1  # each view's aspect times a factor in [1/1.1, 1.1]
    mask_dilation: int = 1  # each view's mask dilated by 0..this voxels
    gain_range: tuple[float, float] = (0.75, 1.33)  # intensity gain per view, log-uniform
    offset_range: tuple[float, float] = (-0.15, 0.15)  # intensity offset per view
    # the share of pairs that are sub-unit assemblies (core.assemblies) instead of envelope shapes
    assembly_fraction: float = 0.0
    assembly_scale_jitter: float = 0.1  # each assembly view's size times a factor in [1/1.1, 1.1]
    # the share of assembly pairs drawn from a class set of one family (rings of several orders, or double
    # rings), one envelope and one mass: order within one envelope as the difference to see
    family_set_fraction: float = 0.0

    @property
    def box(self) -> int:
        """The edge of the small volume a view is simulated in (the patch's, plus a margin)."""
        return max(self.contract.patch_size) + 8


def draw_degradation(rng: np.random.Generator, s: ViewSettings) -> tuple[float, float | None, int]:
    """One view's (SNR, missing-wedge half-angle or None, mask dilation in voxels)."""
    snr = float(np.exp(rng.uniform(np.log(s.snr_range[0]), np.log(s.snr_range[1]))))
    wedge = float(rng.uniform(*s.wedge_range)) if rng.random() < s.wedge_probability else None
    return snr, wedge, random_dilation(rng, s.mask_dilation)


def jitter_intensity(volume: np.ndarray, rng: np.random.Generator, s: ViewSettings) -> np.ndarray:
    """The view's intensity gain (log-uniform) and offset."""
    gain = float(np.exp(rng.uniform(np.log(s.gain_range[0]), np.log(s.gain_range[1]))))
    return (volume * np.float32(gain) + np.float32(rng.uniform(*s.offset_range))).astype(np.float32)


def view_volume(p, rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray]:
    """One view of a particle as a small tomogram and its instance mask (label 1): simulated,
    degraded at a random SNR, with or without a missing wedge, mask dilated, gain and offset."""
    snr, wedge, dilate = draw_degradation(rng, s)
    volume, mask = particle_volume(p, rng, snr, wedge, s.box, dilate)
    return jitter_intensity(volume, rng, s), mask


def assembly_view_volume(assembly, rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray]:
    """One view of a sub-unit assembly, like :func:`view_volume`: its own orientation (uniform over
    SO(3)), size jitter, SNR, wedge, CTF-like band-pass, mask dilation, gain and offset."""
    snr, wedge, dilate = draw_degradation(rng, s)
    factor = float(np.exp(rng.uniform(-np.log1p(s.assembly_scale_jitter), np.log1p(s.assembly_scale_jitter))))
    volume, mask = simulate_particle(scaled(assembly, factor), rng, s.box, snr, wedge)
    if dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate).astype(np.int32)
    return jitter_intensity(volume, rng, s), mask


def extract_view(volume: np.ndarray, mask: np.ndarray, s: ViewSettings) -> np.ndarray:
    """The patch ``predict`` would cut for the instance of ``mask``: the same function calls."""
    plan = plan_extraction(mask, s.contract.expand_labels)
    if len(plan) == 0:  # cannot happen for the simulator's shapes; keep the stream going
        return np.zeros(s.contract.patch_size, np.float32)
    patch, _ = cut_patch(volume, plan.regions[0], s.contract, "simulated particle")
    return patch


def make_view(p, rng: np.random.Generator, s: ViewSettings) -> np.ndarray:
    return extract_view(*view_volume(p, rng, s), s)


# Training draws its assembly classes from class seeds at or above this; evaluation sets and the docs
# use small class seeds, so the classes a model is scored on are not the ones it was trained on.
TRAINING_CLASS_SEEDS = (1_000_000, 2**31 - 1)
ASSEMBLY_CLASS_OFFSET = 100  # pair class ids: shapes 0.., assemblies 100 + index in assemblies.ARRANGEMENTS
SIMULATED_CLASS_END = 1000  # ids from here on are other pair makers' (structures, the user's particles)
ORDER_FAMILIES = ("ring", "dihedral")  # family_set_fraction's families: one envelope, several orders


def training_class_set(rng: np.random.Generator, s: ViewSettings) -> list:
    """A fresh class set for an assembly pair (3-7 classes of one diameter and mass,
    :func:`~.assemblies.random_class_set`), or, with probability ``s.family_set_fraction``, 3-5 classes
    of one family of :data:`ORDER_FAMILIES` (rings of 3-8, double rings of 4-6 sub-units a ring), which
    differ only in order."""
    if s.family_set_fraction > 0 and rng.random() < s.family_set_fraction:
        family = ORDER_FAMILIES[int(rng.integers(len(ORDER_FAMILIES)))]
        return random_class_set(int(rng.integers(*TRAINING_CLASS_SEEDS)), int(rng.integers(3, 6)), families=(family,))
    return random_class_set(int(rng.integers(*TRAINING_CLASS_SEEDS)), int(rng.integers(3, 8)))


def make_assembly_pair(rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """Two independent simulations of one assembly: a class drawn from a fresh class set
    (:func:`training_class_set`), each view its own rotation and degradation. The pair's class id is
    the arrangement's (ring4, octahedral, ...: the same for that arrangement at any size, in any class set)."""
    classes = training_class_set(rng, s)
    assembly = classes[int(rng.integers(len(classes)))]
    views = [extract_view(*assembly_view_volume(assembly, rng, s), s) for _ in range(2)]
    return views[0], views[1], ASSEMBLY_CLASS_OFFSET + ARRANGEMENTS.index(assembly.arrangement)


def make_pair(rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """A positive pair: an envelope shape (:mod:`.simulate`) or, with probability
    ``s.assembly_fraction``, a sub-unit assembly (:func:`make_assembly_pair`)."""
    if s.assembly_fraction > 0 and rng.random() < s.assembly_fraction:
        return make_assembly_pair(rng, s)
    base = random_particle(rng, None, s.size_range)
    a = another_view(base, rng, s.scale_jitter, s.aspect_jitter)
    b = another_view(base, rng, s.scale_jitter, s.aspect_jitter)
    return make_view(a, rng, s), make_view(b, rng, s), base.cls


def simulated_class_count() -> int:
    """How many classes simulated pairs carry: the envelope shapes, then every assembly arrangement."""
    return len(SHAPE_CLASSES) + len(ARRANGEMENTS)


def simulated_classes(classes) -> np.ndarray:
    """Which of a batch's pair class ids are the simulator's (the classifier term names only those)."""
    return np.asarray(classes) < SIMULATED_CLASS_END


def class_targets(classes) -> torch.Tensor:
    """Simulated pairs' class ids (shapes 0.., assemblies ``ASSEMBLY_CLASS_OFFSET`` + arrangement) as 0..K-1."""
    c = np.asarray(classes, dtype=np.int64)
    return torch.as_tensor(np.where(c >= ASSEMBLY_CLASS_OFFSET, c - ASSEMBLY_CLASS_OFFSET + len(SHAPE_CLASSES), c))
