"""Real molecules in simulated tomograms: atoms → density maps → tomograms (array in, array out).

A :class:`Molecule` is a set of atoms (coordinates in Å, atomic numbers) as
:mod:`.structures_io` reads them from a PDB or mmCIF file: the file's biological assembly 1,
first model, no hydrogens. Its density map on a grid of ``voxel_size`` Å:

1. atoms turned about the molecule's centre (the atomic-number-weighted centroid) by a rotation
   (volume frame z, y, x), placed at the centre of an odd cubic box;
2. each atom's atomic number spread onto its 8 nearest voxels (trilinear weights: the centroid
   is kept exactly);
3. a Gaussian blur of standard deviation ``0.225 × resolution`` Å (``resolution / (π√2)``, the
   convention of Chimera's ``molmap``) for the resolution;
4. scaled to units of protein density: 1 is :data:`PROTEIN_ELECTRONS` heavy-atom electrons per Å³,
   so a molecule's interior is about 1 at low resolution, the unit contrast of the shapes and
   assemblies of :mod:`.simulate` and :mod:`.assemblies` (their SNR means the same here).

The instance mask is the clean map's contour at one level per molecule: the level that encloses
the molecule's volume (its electrons / :data:`PROTEIN_ELECTRONS`, in voxels) in its map as the file
has it, a contour at the molecule's surface; turned, its voxel count varies a little, as a
segmentation's would (a fixed count per class would give each class away by its mask alone). With a
``mask_error`` e, each particle's contour encloses its volume times a factor drawn log-uniformly in
[1/(1+e), 1+e]: a segmentation's error in size, so the mask's volume no longer names the class.
:func:`simulate_structure_tomogram` places molecules at uniformly random orientations without
overlap (:func:`.simulate.place_particles`), then adds noise, the optional band-pass and the
missing wedge over the whole volume (:func:`.assemblies.degrade_volume`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .assemblies import degrade_volume
from .simulate import Rendered, Tomogram, balanced_order, place_particles, warn_if_crowded

# heavy atoms of proteins (C, N, O, S) carry 0.5 electrons per dalton; a protein is 0.81 Da/Å³
# (1.35 g/cm³), about 7 % of it hydrogen: 0.81 × 0.93 × 0.5 heavy-atom electrons per Å³
PROTEIN_ELECTRONS = 0.81 * 0.93 * 0.5
SIGMA_PER_RESOLUTION = 1 / (np.pi * np.sqrt(2))  # Gaussian sigma of a map of a given resolution


@dataclass(frozen=True)
class Molecule:
    """Atoms of one molecule: ``coords`` (N, 3) in Å, x y z as in the file; ``atomic_numbers`` (N,);
    ``mass`` in daltons; ``copies``: how many copies of the file's model its assembly holds."""

    name: str
    coords: np.ndarray
    atomic_numbers: np.ndarray
    mass: float = 0.0
    copies: int = 1
    assembly: str = ""

    @property
    def electrons(self) -> float:
        return float(self.atomic_numbers.sum())

    def centre(self) -> np.ndarray:
        """The atomic-number-weighted centroid (x, y, z), Å."""
        return np.average(self.coords, axis=0, weights=self.atomic_numbers)

    def radius(self) -> float:
        """The largest distance of an atom from :meth:`centre`, Å."""
        return float(np.linalg.norm(self.coords - self.centre(), axis=1).max())


@dataclass(frozen=True)
class MapSettings:
    """How molecules become maps: ``voxel_size`` and ``resolution`` in Å."""

    voxel_size: float = 5.0
    resolution: float = 20.0

    def __post_init__(self) -> None:
        if not (self.voxel_size > 0 and self.resolution > 0):
            raise ValueError(
                f"voxel size and resolution must be positive, got {self.voxel_size:g} and {self.resolution:g}"
            )

    @property
    def sigma(self) -> float:
        """The blur's standard deviation, voxels."""
        return SIGMA_PER_RESOLUTION * self.resolution / self.voxel_size


def map_box(molecule: Molecule, settings: MapSettings) -> int:
    """An odd cubic box (voxels) that holds the molecule's map whatever its orientation."""
    reach = molecule.radius() / settings.voxel_size + 4 * settings.sigma + 2
    return int(2 * np.ceil(reach) + 1)


def volume_voxels(molecule: Molecule, settings: MapSettings) -> int:
    """The molecule's volume in voxels: its electrons over :data:`PROTEIN_ELECTRONS` per Å³."""
    return max(1, round(molecule.electrons / PROTEIN_ELECTRONS / settings.voxel_size**3))


def splat(points: np.ndarray, weights: np.ndarray, box: int) -> np.ndarray:
    """Weights spread onto a box³ grid at ``points`` (voxel coordinates, z y x) with trilinear weights."""
    base = np.floor(points).astype(np.int64)
    frac = points - base
    flat, spread = [], []
    for corner in np.ndindex(2, 2, 2):
        offset = np.array(corner)
        share = np.prod(np.where(offset, frac, 1 - frac), axis=1)
        index = base + offset
        flat.append(np.ravel_multi_index(index.T, (box,) * 3))
        spread.append(weights * share)
    grid = np.bincount(np.concatenate(flat), weights=np.concatenate(spread), minlength=box**3)
    return grid.reshape((box,) * 3)


def density_map(
    molecule: Molecule, settings: MapSettings, rotation: np.ndarray | None = None, box: int | None = None
) -> np.ndarray:
    """The molecule's density (float32, box³, units of protein density), turned by ``rotation`` (3×3,
    molecule frame z y x → volume frame) about its centre, which is the box's centre."""
    box = box or map_box(molecule, settings)
    zyx = (molecule.coords - molecule.centre())[:, ::-1] / settings.voxel_size
    if rotation is not None:
        zyx = zyx @ np.asarray(rotation).T
    points = zyx + (box - 1) / 2
    if points.min() < 0 or points.max() >= box - 1:
        raise ValueError(f"a box of {box} voxels cannot hold {molecule.name}")
    grid = splat(points, molecule.atomic_numbers.astype(np.float64), box)
    grid = ndimage.gaussian_filter(grid, settings.sigma, mode="constant", truncate=4.0)
    return (grid / (PROTEIN_ELECTRONS * settings.voxel_size**3)).astype(np.float32)


def contour_level(molecule: Molecule, settings: MapSettings) -> float:
    """The density level whose contour encloses the molecule's volume (:func:`volume_voxels`) in its
    map as the file has it: one level per molecule, so the mask's voxel count varies with the
    orientation as a segmentation's would."""
    return level_enclosing(density_map(molecule, settings), volume_voxels(molecule, settings))


def level_enclosing(density: np.ndarray, n_voxels: float) -> float:
    """The density level whose contour encloses ``n_voxels`` voxels of ``density`` (its densest ones)."""
    n = int(min(max(round(n_voxels), 1), density.size))
    return float(np.partition(density, density.size - n, axis=None)[density.size - n])


def render_molecule(
    molecule: Molecule,
    settings: MapSettings,
    rotation: np.ndarray | None = None,
    level: float | None = None,
    volume_factor: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(density float32, mask bool: at or above ``level``, by default :func:`contour_level`) of the
    molecule turned by ``rotation``, centred in its box. With ``volume_factor`` the mask is the contour
    of this map that encloses the molecule's volume times it (a segmentation's error in size)."""
    density = density_map(molecule, settings, rotation)
    if volume_factor is not None:
        level = level_enclosing(density, volume_voxels(molecule, settings) * volume_factor)
    elif level is None:
        level = contour_level(molecule, settings)
    return density, density >= level


def truth_info(c: int, molecule: Molecule, settings: MapSettings) -> dict:
    """A class's truth columns (as :func:`.simulate.place_particles` adds label and centre to them)."""
    return {
        "class": c,
        "class_name": molecule.name,
        "size": round(molecule.radius() / settings.voxel_size, 4),
        "aspect": 1.0,
        "atoms": len(molecule.coords),
        "copies": molecule.copies,
        "mass_kda": round(molecule.mass / 1000, 3),
    }


def simulate_structure_tomogram(
    shape: tuple[int, int, int],
    n_particles: int,
    rng: np.random.Generator,
    molecules: list[Molecule],
    settings: MapSettings,
    snr: float = 3.0,
    wedge: float | None = None,
    bandpass: bool = False,
    margin: int = 4,
    mask_error: float = 0.0,
) -> Tomogram:
    """Molecules (balanced, random order) at uniformly random orientations, placed without overlap;
    then noise, the optional band-pass and the missing wedge over the whole volume. With ``mask_error``
    each mask encloses the molecule's volume times a factor log-uniform in [1/(1+e), 1+e] (module doc),
    drawn from a stream of its own: the molecules, their turns and the noise are those of ``mask_error`` 0.

    Truth rows: label, class (index in ``molecules``), class_name (the molecule's name), size (its
    radius in voxels), aspect (1), atoms, copies, mass_kda, z, y, x (the molecule's centre)."""
    z, y, x = (int(s) for s in shape)
    shape = (z, y, x)
    order = balanced_order(n_particles, list(range(len(molecules))), rng)
    levels = [contour_level(m, settings) for m in molecules]
    mask_rng = rng.spawn(1)[0]  # its own stream: with or without mask_error the same molecules, turns and noise

    def drawn() -> Iterator[Rendered]:
        for c in order:
            rotation = Rotation.random(random_state=rng).as_matrix()
            factor = None
            if mask_error > 0:
                factor = float(np.exp(mask_rng.uniform(-np.log1p(mask_error), np.log1p(mask_error))))
            density, body = render_molecule(molecules[c], settings, rotation, levels[c], factor)
            yield Rendered(density, body, truth_info(c, molecules[c], settings))

    clean, mask, truth = place_particles(shape, drawn(), rng, margin)
    warn_if_crowded(len(truth), n_particles, shape)
    return Tomogram(degrade_volume(clean, rng, snr, wedge, bandpass), mask, truth)
