"""Reading atomic structures: PDB and mmCIF files, plain or compressed, into a :class:`.structures.Molecule`.

Parsing is gemmi's (PDB and PDBx/mmCIF, their assemblies); this module decides what of a real
file becomes the molecule:

- **compression**: gzip and bzip2, recognized by their first bytes (not the suffix); at most
  :data:`MAX_FILE_BYTES` once decompressed;
- **format**: mmCIF if the text starts with a ``data_`` block (after comments), else PDB; PDB
  lines are read to column 78 (the charge columns 79–80, often garbage in old files, are not needed);
- **models**: the first;
- **alternate locations**: per residue, the conformer (altloc) of the highest summed occupancy
  (the first on a tie); atoms without an altloc are kept;
- **assembly**: the file's biological assembly ``1`` (the first listed if none is named ``1``):
  PDB ``REMARK 350 BIOMT``, mmCIF ``_pdbx_struct_assembly_gen`` + ``_pdbx_struct_oper_list``;
  a file without one gives its model as it is (the asymmetric unit); at most :data:`MAX_ATOMS`
  atoms, checked before the copies are made;
- **atoms**: hydrogens (and deuterium) dropped, as most experimental models have none; waters
  dropped unless ``waters=True``; ligands, ions and nucleic acids kept; atoms of unknown element
  dropped.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputDataError
from .structures import Molecule

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 30  # decompressed
MAX_ATOMS = 10_000_000  # in an assembly (a virus capsid of 60 copies: about a million)
SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
COMPRESSED = (".gz", ".bz2")
_CIF_START = re.compile(rb"\A(?:\s*#[^\n]*\n|\s+)*data_", re.IGNORECASE)


def structure_name(path: Path) -> str:
    """A structure's class name: the file name without its format and compression suffixes."""
    name = path.name
    for suffix in COMPRESSED + SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def is_structure_file(path: Path) -> bool:
    name = path.name.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    return name.endswith(SUFFIXES)


def structure_files(paths: Sequence[Path]) -> list[Path]:
    """Files named, and the structure files (``*.pdb``, ``*.ent``, ``*.cif``, ``*.mmcif``, each maybe
    ``.gz``/``.bz2``) directly in folders named, in that order; each name (class) once."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_structure_file(p))
            if not found:
                raise InputDataError(f"no structure files ({', '.join(SUFFIXES)}, maybe .gz or .bz2) here", path)
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputDataError("no such file or folder", path)
    seen: dict[str, Path] = {}
    for path in files:
        name = structure_name(path)
        if name in seen:
            raise InputDataError(f"two structures named {name!r} (classes are named by file): {seen[name]}", path)
        seen[name] = path
    return files


def read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's content, gunzipped or bunzipped if it is compressed, at most ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            magic = f.read(3)
        opener = gzip.open if magic[:2] == b"\x1f\x8b" else bz2.open if magic == b"BZh" else open
        with opener(path, "rb") as f:
            data = f.read(limit + 1)
    except (OSError, EOFError, ValueError) as err:
        raise InputDataError(f"cannot read the structure ({getattr(err, 'strerror', None) or err})", path) from None
    if len(data) > limit:
        raise InputDataError(f"structure is larger than {limit >> 20} MiB once decompressed", path)
    return data


def brief(err: Exception) -> str:
    """A parser's message on one line, at most 200 characters."""
    return " ".join(str(err).split())[:200]


def parse(data: bytes, path: Path):
    """A gemmi Structure from a file's bytes (mmCIF or PDB)."""
    import gemmi

    try:
        if _CIF_START.match(data):
            document = gemmi.cif.read_string(data)
            if len(document) == 0:
                raise ValueError("no data block")
            return gemmi.make_structure_from_block(document[0])
        return gemmi.read_pdb_string(data, max_line_length=78)
    except (RuntimeError, ValueError, IndexError) as err:
        kind = "mmCIF" if _CIF_START.match(data) else "PDB"
        raise InputDataError(f"not a readable {kind} file ({brief(err)})", path) from None


def assembly_model(structure, path: Path):
    """The first model as the file's assembly 1 (or as it is, without assemblies); the assembly's name
    and how many copies of chains it makes."""
    import gemmi

    model = structure[0]
    if len(structure.assemblies) == 0:
        return model, "", 1
    assembly = next((a for a in structure.assemblies if a.name == "1"), structure.assemblies[0])
    copies = max((len(g.operators) for g in assembly.generators), default=1)
    atoms = sum(len(g.operators) for g in assembly.generators) * model.count_atom_sites()
    if atoms > MAX_ATOMS:
        raise InputDataError(
            f"assembly {assembly.name} would hold up to {atoms:,} atoms ({copies:,} copies), more than {MAX_ATOMS:,}",
            path,
        )
    try:
        built = gemmi.make_assembly(assembly, model, gemmi.HowToNameCopiedChain.Dup)
    except (RuntimeError, ValueError) as err:
        raise InputDataError(f"cannot build assembly {assembly.name} ({brief(err)})", path) from None
    return built, assembly.name, copies


def conformer_atoms(residues: list) -> list:
    """Atoms of residues at one position: those without an altloc, and those of the altloc with the
    highest summed occupancy (the first seen on a tie)."""
    occupancy: dict[str, float] = defaultdict(float)
    for residue in residues:
        for atom in residue:
            if atom.altloc != "\0":
                occupancy[atom.altloc] += atom.occ
    keep = max(occupancy, key=lambda k: occupancy[k]) if occupancy else None  # max keeps the first on a tie
    return [atom for residue in residues for atom in residue if atom.altloc in ("\0", keep)]


def model_atoms(model, waters: bool = False) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(coords (N, 3) Å, atomic numbers (N,), mass in Da, atoms dropped for an unknown element)."""
    coords, numbers, mass, unknown = [], [], 0.0, 0
    for chain in model:
        positions: dict[tuple, list] = defaultdict(list)
        for residue in chain:
            if waters or not residue.is_water():
                positions[(residue.seqid.num, residue.seqid.icode)].append(residue)
        for residues in positions.values():
            for atom in conformer_atoms(residues):
                element = atom.element
                if element.is_hydrogen:
                    continue
                if element.atomic_number == 0:
                    unknown += 1
                    continue
                coords.append(atom.pos.tolist())
                numbers.append(element.atomic_number)
                mass += element.weight
    return np.array(coords, dtype=np.float64).reshape(-1, 3), np.array(numbers, dtype=np.int64), mass, unknown


def read_structure(path: Path, waters: bool = False, name: str | None = None) -> Molecule:
    """The molecule of a PDB or mmCIF file (see the module's notes); named ``name`` or by the file."""
    path = Path(path)
    structure = parse(read_bytes(path), path)
    if len(structure) == 0:
        raise InputDataError("structure has no atoms (no ATOM/HETATM records or _atom_site rows)", path)
    model, assembly, copies = assembly_model(structure, path)
    coords, numbers, mass, unknown = model_atoms(model, waters)
    if unknown:
        log.warning("%s: %d atoms of unknown element left out", path, unknown)
    if len(coords) == 0:
        raise InputDataError("structure has no atoms other than hydrogens and waters", path)
    if not np.isfinite(coords).all():
        raise InputDataError("structure has coordinates that are not finite numbers", path)
    return Molecule(name or structure_name(path), coords, numbers, mass, copies, assembly)
