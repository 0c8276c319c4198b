"""Structured particles: assemblies of sub-units whose classes differ in arrangement, not envelope.

The demo's shapes (:mod:`.simulate`) differ in their outline; real cellular particles often differ
only in how their sub-units are assembled (oligomeric state, symmetry). An :class:`Assembly` is a
set of round sub-units (balls) at positions given by a point group or a helix:

===========  ====================================================================
ring         Cn: n sub-units on a circle in one plane
dihedral     Dn: two stacked rings of n, the second turned by 180°/n (a double ring)
tetrahedral  4 sub-units at the vertices of a tetrahedron
octahedral   6 sub-units at the vertices of an octahedron
cubic        8 sub-units at the vertices of a cube (octahedral point group)
icosahedral  12 sub-units at the vertices of an icosahedron
filament     a helical segment: n sub-units with a rise and a twist per sub-unit
===========  ====================================================================

Within a class set made by :func:`random_class_set`, every class has the same outer diameter
(12–24 voxels, drawn by the seed) and, with ``equal_mass``, the same total sub-unit volume: a
descriptor of size or radial mass alone cannot tell them apart. Class definitions (families,
counts, twists, proportions) are drawn from the seed, so a training set and an evaluation set made
with different seeds hold different classes. ``membrane`` puts each particle on a planar slab of
density that runs through the whole patch (the instance mask covers only the particle).

:func:`simulate_particle` draws one particle of a class at a uniformly random orientation, adds
white noise (SNR as a variance ratio against unit contrast), applies a simple CTF-like band-pass
and the missing wedge (``±wedge`` degrees about y), as a reconstruction would;
:func:`simulate_assembly_tomogram` places many such particles in a tomogram (the placement of
:mod:`.simulate`) and degrades the whole volume the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .simulate import Rendered, Tomogram, balanced_order, place_particles, warn_if_crowded, wedge_filter

FAMILIES = ("ring", "dihedral", "tetrahedral", "octahedral", "cubic", "icosahedral", "filament")
MEMBRANE_THICKNESS = 4.0  # voxels
MEMBRANE_GAP = 1.0  # voxels between the particle's lowest sub-unit and the membrane


@dataclass(frozen=True)
class Assembly:
    """One class: sub-unit centres (particle frame, voxels, centred on 0) and one sub-unit radius.

    ``arrangement`` names the arrangement whatever the size (:func:`arrangement_label`): training labels
    a simulated pair by its index in :data:`ARRANGEMENTS`.
    """

    name: str
    family: str
    arrangement: str
    centres: np.ndarray  # (n, 3)
    subunit_radius: float
    membrane: bool = False

    @property
    def outer_radius(self) -> float:
        return float(np.linalg.norm(self.centres, axis=1).max() + self.subunit_radius)


def scaled(assembly: Assembly, factor: float) -> Assembly:
    """The same arrangement ``factor`` times larger (sub-unit centres and radius)."""
    return replace(assembly, centres=assembly.centres * factor, subunit_radius=assembly.subunit_radius * factor)


# --------------------------------------------------------------------------------------------
# sub-unit positions of each family, on a unit scale (the largest centre distance is 1)


def _ring(n: int, phase: float = 0.0, z: float = 0.0) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n + phase
    return np.stack([np.cos(t), np.sin(t), np.full(n, z)], axis=1)


def _unit(positions) -> np.ndarray:
    """Points (n, 3) centred on 0 and scaled so that the farthest is at distance 1."""
    points = np.asarray(positions, dtype=float)
    points = points - points.mean(axis=0)
    return points / np.linalg.norm(points, axis=1).max()


def family_positions(family: str, n: int = 0, height: float = 0.0, twist_degrees: float = 0.0) -> np.ndarray:
    """Unit-scale sub-unit centres of one family (``n``, ``height`` and twist where they apply)."""
    if family == "ring":
        return _unit(_ring(n))
    if family == "dihedral":
        return _unit(np.concatenate([_ring(n, 0.0, height / 2), _ring(n, np.pi / n, -height / 2)]))
    if family == "tetrahedral":
        return _unit([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    if family == "octahedral":
        return _unit(np.concatenate([np.eye(3), -np.eye(3)]))
    if family == "cubic":
        return _unit(list(itertools.product((-1, 1), repeat=3)))
    if family == "icosahedral":
        g = (1 + 5**0.5) / 2
        vertices = [
            v for a, b in itertools.product((-1, 1), repeat=2) for v in ([0, a, b * g], [a, b * g, 0], [b * g, 0, a])
        ]
        return _unit(vertices)
    if family == "filament":
        k = np.arange(n)
        t = np.radians(twist_degrees) * k
        # helix radius 1, rise chosen so the segment is about as long as it is wide
        return _unit(np.stack([np.cos(t), np.sin(t), (k - (n - 1) / 2) * (2.2 / max(n - 1, 1))], axis=1))
    raise ValueError(f"unknown assembly family {family!r} (one of {', '.join(FAMILIES)})")


def _nearest_distance(points: np.ndarray) -> float:
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return float(d[~np.eye(len(points), dtype=bool)].min())


def make_assembly(
    name: str,
    family: str,
    diameter: float,
    mass: float | None = None,
    n: int = 0,
    height: float = 0.0,
    twist_degrees: float = 0.0,
    membrane: bool = False,
) -> Assembly:
    """An assembly of ``family`` with outer diameter ``diameter`` voxels.

    With ``mass`` (total sub-unit volume, voxels³) the sub-unit radius is chosen so that
    ``n · 4/3 π s³ = mass``; otherwise sub-units just touch their nearest neighbour. The
    positions are then scaled so that the outer radius is ``diameter / 2``.
    """
    unit = family_positions(family, n, height, twist_degrees)
    outer = diameter / 2
    if mass is not None:
        s = float((3 * mass / (4 * np.pi * len(unit))) ** (1 / 3))
    else:
        # touching neighbours: centre radius R, s = d_min R / 2, R + s = outer
        half_gap = _nearest_distance(unit) / 2
        s = outer * half_gap / (1 + half_gap)
    s = min(s, 0.45 * outer)  # keep a visible arrangement whatever the mass asks
    return Assembly(name, family, arrangement_label(family, n, twist_degrees), unit * (outer - s), s, membrane)


RING_ORDERS = range(3, 9)
DIHEDRAL_ORDERS = range(4, 7)  # from 4: a staggered double ring of 3 can be an octahedron
FILAMENT_LENGTHS = range(6, 11)
FILAMENT_TWISTS = (60.0, 90.0, 120.0, 144.0, 166.0)


def arrangement_label(family: str, n: int = 0, twist_degrees: float = 0.0) -> str:
    """An arrangement's name whatever its size: ``ring4``, ``dihedral5``, ``octahedral``, ``filament6_t120``."""
    return family + (f"{n}" if n else "") + (f"_t{twist_degrees:g}" if family == "filament" else "")


def _all_arrangements() -> tuple[str, ...]:
    counts = {"ring": RING_ORDERS, "dihedral": DIHEDRAL_ORDERS, "filament": FILAMENT_LENGTHS}
    return tuple(
        arrangement_label(family, n, twist)
        for family in FAMILIES
        for n in counts.get(family, [0])
        for twist in (FILAMENT_TWISTS if family == "filament" else [0.0])
    )


# every arrangement random_class_set can draw, in a fixed order (a class's index here is its training id)
ARRANGEMENTS = _all_arrangements()


def common_mass(specs: list[tuple[str, int, float, float]], diameter: float) -> float:
    """One total sub-unit volume for classes ``(family, n, height, twist)`` of one outer diameter: that
    of the lightest with touching sub-units, so every class keeps its sub-units apart."""
    touching = [make_assembly("", f, diameter, None, n, h, t) for f, n, h, t in specs]
    return min(len(a.centres) * 4 / 3 * np.pi * a.subunit_radius**3 for a in touching)


def random_class_set(
    seed: int,
    n_classes: int,
    families: tuple[str, ...] = FAMILIES,
    diameter_range: tuple[float, float] = (12.0, 24.0),
    equal_mass: bool = True,
    membrane: bool = False,
) -> list[Assembly]:
    """``n_classes`` distinct assemblies drawn from ``seed``: one outer diameter for all, one mass.

    Families are cycled in a seeded order; ring and dihedral orders, filament twists and
    double-ring heights are drawn, so two seeds give two different class sets.
    """
    rng = np.random.default_rng(seed)
    diameter = float(rng.uniform(*diameter_range))
    order = list(rng.permutation(len(families)))
    specs: list[tuple[str, int, float, float]] = []
    seen: set[tuple] = set()
    for attempt in range(20 * n_classes + 100):
        if len(specs) == n_classes:
            break
        family = families[order[attempt % len(order)]]
        n, height, twist = 0, 0.0, 0.0
        if family == "ring":
            n = int(rng.integers(RING_ORDERS[0], RING_ORDERS[-1] + 1))
        elif family == "dihedral":
            n = int(rng.integers(DIHEDRAL_ORDERS[0], DIHEDRAL_ORDERS[-1] + 1))
            height = float(rng.uniform(0.8, 1.4))
        elif family == "filament":
            n = int(rng.integers(FILAMENT_LENGTHS[0], FILAMENT_LENGTHS[-1] + 1))
            twist = float(rng.choice(FILAMENT_TWISTS))
        key = (family, n, round(height, 1), twist)
        if key not in seen:
            seen.add(key)
            specs.append((family, n, height, twist))
    if len(specs) < n_classes:
        raise ValueError(f"cannot draw {n_classes} distinct classes from the families {', '.join(families)}")
    mass = common_mass(specs, diameter) if equal_mass else None
    classes = []
    for i, (family, n, height, twist) in enumerate(specs):
        name = f"{i}:{arrangement_label(family, n, twist)}"
        classes.append(make_assembly(name, family, diameter, mass, n, height, twist, membrane))
    return classes


# --------------------------------------------------------------------------------------------
# rendering and degradation


def render_assembly(assembly: Assembly, rotation: np.ndarray, box: int) -> tuple[np.ndarray, np.ndarray]:
    """(density float32, mask bool) of the assembly, rotated (3×3, particle → volume frame), centred in a box³.

    With ``membrane``, a slab of unit density below the particle (normal along the particle's own
    z axis) crosses the whole box; the mask is the particle's only.
    """
    ax = np.arange(box, dtype=np.float32) - (box - 1) / 2
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)
    centres = assembly.centres @ rotation.T
    mask = np.zeros((box,) * 3, bool)
    s2 = assembly.subunit_radius**2
    for c in centres:
        mask |= ((grid - c.astype(np.float32)) ** 2).sum(-1) <= s2
    density = mask.astype(np.float32)
    if assembly.membrane:
        normal = rotation[:, 2]
        low = float((assembly.centres[:, 2]).min()) - assembly.subunit_radius - MEMBRANE_GAP
        height = grid @ normal.astype(np.float32)
        slab = (height <= low) & (height >= low - MEMBRANE_THICKNESS)
        density = np.maximum(density, slab.astype(np.float32))
    return ndimage.gaussian_filter(density, 0.5), mask


def bandpass_filter(shape: tuple[int, int, int], low: float = 0.02, high: float = 0.3) -> np.ndarray:
    """A CTF-like band-pass (rfft layout): the lowest frequencies and those beyond ``high`` (cycles/voxel) damped."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    k2 = kz**2 + ky**2 + kx**2
    return ((1 - np.exp(-k2 / low**2)) * np.exp(-k2 / high**2)).astype(np.float32)


def degrade_volume(
    clean: np.ndarray, rng: np.random.Generator, snr: float, wedge: float | None, bandpass: bool = True
) -> np.ndarray:
    """White noise (SNR as variance ratio for unit contrast), then band-pass and missing wedge in one FFT."""
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(1 / np.sqrt(snr))
    if not wedge and not bandpass:
        return noisy.astype(np.float32)
    f = np.fft.rfftn(noisy)
    if bandpass:
        f *= bandpass_filter(clean.shape)
    if wedge:
        f *= wedge_filter(clean.shape, wedge)
    return np.fft.irfftn(f, s=clean.shape, axes=(0, 1, 2)).astype(np.float32)


def simulate_particle(
    assembly: Assembly,
    rng: np.random.Generator,
    box: int,
    snr: float = 3.0,
    wedge: float | None = None,
    bandpass: bool = True,
    rotation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One particle of ``assembly`` alone in a box³ at a random orientation (or ``rotation``), degraded.

    Returns (volume float32, mask int32 with label 1).
    """
    rotation = Rotation.random(random_state=rng).as_matrix() if rotation is None else rotation
    density, mask = render_assembly(assembly, rotation, box)
    return degrade_volume(density, rng, snr, wedge, bandpass), mask.astype(np.int32)


def simulate_set(
    classes: list[Assembly],
    per_class: int,
    seed: int,
    box: int,
    snr: float = 3.0,
    wedge: float | None = None,
    bandpass: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_class`` particles of each class: (volumes (N, box, box, box), masks, class ids), class-major order."""
    rng = np.random.default_rng(seed)
    volumes, masks, ids = [], [], []
    for c, assembly in enumerate(classes):
        for _ in range(per_class):
            v, m = simulate_particle(assembly, rng, box, snr, wedge, bandpass)
            volumes.append(v)
            masks.append(m)
            ids.append(c)
    return np.stack(volumes), np.stack(masks), np.array(ids)


# --------------------------------------------------------------------------------------------
# tomograms of assemblies


def assembly_box(assembly: Assembly) -> int:
    """An odd cubic box that holds the assembly (and its piece of membrane) whatever its orientation."""
    reach = assembly.outer_radius + (MEMBRANE_GAP + MEMBRANE_THICKNESS if assembly.membrane else 0.0)
    return int(2 * np.ceil(reach) + 3)


def class_definition(assembly: Assembly) -> dict:
    """What defines a class, as plain values (for a dataset's ``classes.json``)."""
    return {
        "name": assembly.name,
        "family": assembly.family,
        "arrangement": assembly.arrangement,
        "subunits": len(assembly.centres),
        "subunit_radius": round(assembly.subunit_radius, 4),
        "outer_radius": round(assembly.outer_radius, 4),
        "membrane": assembly.membrane,
        "centres": np.round(assembly.centres, 4).tolist(),
    }


def simulate_assembly_tomogram(
    shape: tuple[int, int, int],
    n_particles: int,
    rng: np.random.Generator,
    classes: list[Assembly],
    snr: float = 3.0,
    wedge: float | None = None,
    bandpass: bool = True,
    margin: int = 4,
) -> Tomogram:
    """Assemblies of ``classes`` (balanced, random order) at uniformly random orientations, placed
    without overlap; then noise, band-pass and missing wedge over the whole volume.

    Truth rows: label, class (index in ``classes``), class_name, size (outer radius), aspect (1),
    family, subunits, subunit_radius, z, y, x (the assembly's centre).
    """
    z, y, x = (int(s) for s in shape)
    shape = (z, y, x)
    order = balanced_order(n_particles, list(range(len(classes))), rng)

    def drawn() -> Iterator[Rendered]:
        for c in order:
            assembly = classes[c]
            rotation = Rotation.random(random_state=rng).as_matrix()
            density, body = render_assembly(assembly, rotation, assembly_box(assembly))
            info = {
                "class": c,
                "class_name": assembly.name,
                "size": round(assembly.outer_radius, 4),
                "aspect": 1.0,
                "family": assembly.family,
                "subunits": len(assembly.centres),
                "subunit_radius": round(assembly.subunit_radius, 4),
            }
            yield Rendered(density, body, info)

    clean, mask, truth = place_particles(shape, drawn(), rng, margin)
    warn_if_crowded(len(truth), n_particles, shape)
    return Tomogram(degrade_volume(clean, rng, snr, wedge, bandpass), mask, truth)
