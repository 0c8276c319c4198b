"""Real molecules for ``simulate --structures``: which files, read how, mapped how.

The files are read by :mod:`..core.structures_io` (PDB / mmCIF, gzip / bzip2, assembly 1, first
model, the most occupied altloc, no hydrogens, no waters unless asked) and mapped by
:mod:`..core.structures` (atomic numbers on a grid of ``voxel_size`` Å, blurred to ``resolution``
Å, in units of protein density). Each file is one class, named by the file (its stem).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError
from ..core.simulate import MAX_PARTICLE_BOX
from ..core.structures import MapSettings, Molecule, map_box, volume_voxels
from ..core.structures_io import read_structure, structure_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Molecules:
    """Atomic structures as classes: ``paths`` (files or folders of them), the map's ``voxel_size`` and
    ``resolution`` (Å), a CTF-like ``bandpass`` over the tomogram, ``waters`` kept or not, and the masks'
    error in size (``mask_error``: :func:`..core.structures.simulate_structure_tomogram`)."""

    paths: tuple[Path, ...]
    voxel_size: float = 5.0
    resolution: float = 20.0
    bandpass: bool = False
    waters: bool = False
    mask_error: float = 0.0

    def settings(self) -> MapSettings:
        try:
            return MapSettings(self.voxel_size, self.resolution)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def load(self) -> list[Molecule]:
        """Every structure, read and described in the log (one class each, in the order given)."""
        settings = self.settings()
        molecules = []
        for path in structure_files(self.paths):
            molecule = read_structure(path, self.waters)
            log.info(
                "%s: %s, %d atoms, assembly %s (copies: %d), %.1f kDa, %.0f Å across (%d voxels)",
                molecule.name,
                path,
                len(molecule.coords),
                molecule.assembly or "none (the model as it is)",
                molecule.copies,
                molecule.mass / 1000,
                2 * molecule.radius(),
                round(2 * molecule.radius() / settings.voxel_size),
            )
            molecules.append(molecule)
        if len(molecules) < 2:
            raise ConfigError(f"--structures needs at least 2 structures (classes), got {len(molecules)}")
        return molecules


def check_fit(molecules: list[Molecule], settings: MapSettings, shape: tuple[int, int, int], margin: int) -> None:
    """Refuse a molecule wider than a tomogram of ``shape`` less its margins (before rendering any): at
    uniformly random orientations few of its copies would fit."""
    room = min(shape) - 2 * margin
    for molecule in molecules:
        across = 2 * molecule.radius() / settings.voxel_size
        if across > room:
            raise ConfigError(
                f"structure {molecule.name} is {2 * molecule.radius():.0f} Å across ({across:.0f} voxels at "
                f"{settings.voxel_size:g} Å), more than a --shape of {'×'.join(map(str, shape))} holds with "
                f"{margin}-voxel margins; enlarge --shape or --voxel-size"
            )
        box = map_box(molecule, settings)
        if box > MAX_PARTICLE_BOX:
            raise ConfigError(
                f"structure {molecule.name}: its map at --resolution {settings.resolution:g} Å needs a box of {box} "
                f"voxels (the blur included), more than {MAX_PARTICLE_BOX}; lower --resolution or raise --voxel-size"
            )


def class_definitions(molecules: list[Molecule], settings: MapSettings) -> list[dict]:
    """What defines each class, as plain values (for the dataset's ``classes.json``)."""
    return [
        {
            "name": m.name,
            "atoms": len(m.coords),
            "assembly": m.assembly,
            "copies": m.copies,
            "mass_kda": round(m.mass / 1000, 3),
            "diameter_angstrom": round(2 * m.radius(), 2),
            "volume_voxels": volume_voxels(m, settings),
        }
        for m in molecules
    ]
