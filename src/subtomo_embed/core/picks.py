"""Particle picks: read STAR/CSV/copick files, and convert coordinates explicitly.

Every pick ends up as a position in *tomogram voxels*: z, y, x, 0-based, with the origin at the
centre of voxel (0, 0, 0) of the tomogram being embedded. Each input convention maps to it by
one explicit rule (:class:`Convention`), and back by its exact inverse:

=====================  ==========================  ===================================================
convention             columns (auto-detected)     to tomogram voxels (per axis)
=====================  ==========================  ===================================================
voxels, corner         ``rlnCoordinateX/Y/Z``,     ``v = p · picks_voxel_size / voxel_size``
                       ``x,y,z``, ``centroid-*``   (the factor is 1 unless the picks come from a
                                                   tomogram of another binning)
ångström, corner       copick ``location``         ``v = a / voxel_size``
ångström, centred      ``rlnCenteredCoordinate     ``v = a / voxel_size + n / 2`` (RELION 5: the
                       X/Y/ZAngst``                origin is the tomogram's centre, ``n/2`` voxels)
voxels, centred        (by option only)            ``v = p · factor + n / 2``
=====================  ==========================  ===================================================

``voxel_size`` is the tomogram's, per axis, from its MRC header unless overridden; ``n`` the
tomogram's size along the axis. The original columns of every pick are kept (see
:data:`PICK_PREFIX`) so outputs can carry them back unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

PICK_PREFIX = "pick:"  # regions-table columns that hold a pick's original columns
PICK_SUFFIXES = (".star", ".csv", ".json")
TOMOGRAM_COLUMNS = ("rlnTomoName", "rlnMicrographName", "tomo", "tomogram", "tomo_name", "run_name")
PICK_ID_COLUMNS = ("rlnLabel", "label")  # a pick's own id, the first of these present

RELION5 = ("rlnCenteredCoordinateZAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateXAngst")
RELION = ("rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX")
CRYOSIAM = ("centroid-0", "centroid-1", "centroid-2")
PLAIN = ("z", "y", "x")
COPICK = ("copick_z", "copick_y", "copick_x")  # columns made from copick's location (Å)


@dataclass(frozen=True)
class Convention:
    """How a file's coordinates are written: which columns (z, y, x order), units and origin."""

    columns: tuple[str, str, str]
    units: str  # "voxels" | "angstrom"
    origin: str  # "corner" | "centered"

    def describe(self) -> str:
        return f"{'/'.join(self.columns)} in {self.units}, {self.origin} origin"


def detect_convention(
    table: pd.DataFrame, units: str = "auto", origin: str = "auto", source: Path | None = None
) -> Convention:
    """The coordinate columns of a picks table and their convention (``units``/``origin`` override)."""
    known = [
        (RELION5, "angstrom", "centered"),
        (COPICK, "angstrom", "corner"),
        (RELION, "voxels", "corner"),
        (CRYOSIAM, "voxels", "corner"),
        (PLAIN, "voxels", "corner"),
    ]
    for columns, default_units, default_origin in known:
        if all(c in table.columns for c in columns):
            for column in columns:
                _check_numbers(table[column], column, source, finite=True)
            return Convention(
                columns, default_units if units == "auto" else units, default_origin if origin == "auto" else origin
            )
    raise InputDataError(
        "picks have no coordinate columns (expected rlnCenteredCoordinateX/Y/ZAngst, rlnCoordinateX/Y/Z, "
        "x,y,z or centroid-0..2)",
        source,
    )


def _check_numbers(values: pd.Series, column: str, source: Path | None, finite: bool) -> np.ndarray:
    """``values`` as float64, or an InputDataError naming the first row that is not a (finite) number."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) if finite else np.isnan(numbers)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputDataError(
            f"picks column '{column}' row {row + 1} is not a {'finite ' if finite else ''}number "
            f"({values.iloc[row]!r})",
            source,
        )
    return numbers


def _checked_ids(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    """The picks with their own id column (:data:`PICK_ID_COLUMNS`) as int64, or an InputDataError
    naming the first id that is empty, text, fractional or beyond int64 (an empty id must never
    become -2^63)."""
    column = next((c for c in PICK_ID_COLUMNS if c in table.columns), None)
    if column is None or len(table) == 0:
        return table
    if (
        pd.api.types.is_integer_dtype(table[column].dtype)
        and getattr(table[column].dtype, "itemsize", 16) <= 8
        and table[column].dtype != np.uint64
    ):
        return table
    values = table[column]
    text = values.astype(str).str.strip()
    ok = text.str.fullmatch(r"[+-]?\d+(\.0*)?")
    if not ok.all():
        row = int(np.flatnonzero(~ok.to_numpy())[0])
        raise InputDataError(
            f"picks column '{column}' row {row + 1} is not an integer id ({values.iloc[row]!r})", source
        )
    ids = [int(t.split(".")[0]) for t in text]
    too_big = [i for i, v in enumerate(ids) if not -(2**63) <= v < 2**63]
    if too_big:
        raise InputDataError(
            f"picks column '{column}' row {too_big[0] + 1} holds {ids[too_big[0]]}, beyond a 64-bit integer id", source
        )
    return table.assign(**{column: np.asarray(ids, dtype=np.int64)})


# --------------------------------------------------------------------------------------------
# reading


def read_picks(path: Path) -> pd.DataFrame:
    """One picks file as a table of its original columns (STAR ``particles`` block, CSV or copick JSON)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError("picks file does not exist", path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        table = _read_star_particles(path)
    elif suffix == ".csv":
        try:
            table = pd.read_csv(path, dtype=dict.fromkeys(TOMOGRAM_COLUMNS, str))  # names as text: 007 stays 007
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise InputDataError(f"not a readable CSV file ({str(err).splitlines()[0][:120]})", path) from None
    elif suffix == ".json":
        table = _read_copick(path)
    else:
        raise InputDataError(f"unknown picks format '{suffix}' (use .star, .csv or copick .json)", path)
    if len(table) == 0:
        log.warning("%s: no picks", path)
    return _checked_ids(table.reset_index(drop=True), path)


def _read_star_particles(path: Path) -> pd.DataFrame:
    from . import tables

    data = tables.read_star(path)
    if isinstance(data, dict):
        if "particles" in data:
            data = data["particles"]
        else:
            loops = [v for v in data.values() if isinstance(v, pd.DataFrame) and len(v.columns) > 1]
            if len(loops) != 1:
                raise InputDataError(f"STAR file has blocks {list(data)} but no 'particles' block", path)
            data = loops[0]
    if not isinstance(data, pd.DataFrame):
        raise InputDataError("STAR file has no table of picks", path)
    return data


def _read_copick(path: Path) -> pd.DataFrame:
    """copick points: ``{"points": [{"location": {"x","y","z"} (Å), ...}], "run_name": ...}``."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputDataError(f"not a readable JSON file ({str(err)[:120]})", path) from None
    points = doc.get("points") if isinstance(doc, dict) else None
    if not isinstance(points, list):
        raise InputDataError("copick JSON has no 'points' list", path)
    if not isinstance(doc.get("run_name", ""), (str, type(None))):
        raise InputDataError(f"copick 'run_name' is a {type(doc['run_name']).__name__}, not a name", path)
    rows = []
    for i, point in enumerate(points):
        try:
            loc = point["location"]
            row = {"copick_x": float(loc["x"]), "copick_y": float(loc["y"]), "copick_z": float(loc["z"])}
        except (KeyError, TypeError, ValueError):
            raise InputDataError(f"copick point {i} has no numeric location x, y, z", path) from None
        for key in ("instance_id", "score"):
            if key in point:
                if not isinstance(point[key], (int, float, str, type(None))):  # a list or dict: no table cell
                    raise InputDataError(
                        f"copick point {i}: '{key}' is a {type(point[key]).__name__}, not a number or a name", path
                    )
                row[key] = point[key]
        if doc.get("run_name"):
            row["run_name"] = doc["run_name"]
        rows.append(row)
    if str(doc.get("unit", "angstrom")).lower() not in ("angstrom", "å", "a"):
        raise InputDataError(f"copick unit '{doc.get('unit')}' is not supported (angstrom only)", path)
    return pd.DataFrame(rows, columns=["copick_x", "copick_y", "copick_z"] if not rows else None)


def tomogram_name(value: object, file_extension: str) -> str:
    """The tomogram stem a picks row names: path and ``:mrc`` dropped, then ``file_extension``."""
    name = os.path.basename(str(value).strip())
    if name.endswith(":mrc"):
        name = name[:-4]
    for ext in (file_extension, ".mrc", ".rec", ".st", ".tomostar"):
        if ext and name.endswith(ext):
            return name[: -len(ext)]
    return name


def tomogram_column(table: pd.DataFrame, wanted: str | None, source: Path) -> str | None:
    if wanted:
        if wanted not in table.columns:
            raise InputDataError(f"picks have no column '{wanted}' (centers.tomogram_column)", source)
        return wanted
    return next((c for c in TOMOGRAM_COLUMNS if c in table.columns), None)


def picks_file_for(folder: Path, stem: str, others: frozenset[str] = frozenset()) -> Path | None:
    """In a folder of per-tomogram picks: ``<stem>.star|csv|json`` or ``<stem>_*.star|csv|json``, but
    never the exact file of another tomogram (a stem in ``others``: ``TS_1_b.csv`` is ``TS_1_b``'s)."""
    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in PICK_SUFFIXES
        and (p.stem == stem or (p.name.startswith(stem + "_") and p.stem not in others))
    )
    exact = [p for p in found if p.stem == stem]
    if exact:
        found = exact
    if len(found) > 1:
        raise InputDataError(f"several picks files for {stem}: {[p.name for p in found]}", folder)
    return found[0] if found else None


# --------------------------------------------------------------------------------------------
# conversion


@dataclass(frozen=True)
class Geometry:
    """What converting a tomogram's picks needs: its size and voxel size (z, y, x, Å), and the
    voxel size of voxel-unit picks (``None``: the tomogram's own)."""

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    picks_voxel_size: tuple[float, float, float] | None = None

    def scale(self) -> np.ndarray:
        if self.picks_voxel_size is None:
            return np.ones(3)
        return np.asarray(self.picks_voxel_size, float) / np.asarray(self.voxel_size, float)


def to_voxels(table: pd.DataFrame, convention: Convention, geometry: Geometry) -> np.ndarray:
    """Positions [N, 3] (z, y, x) in tomogram voxels, 0-based, corner origin."""
    values = table[list(convention.columns)].to_numpy(dtype=np.float64)
    if convention.units == "angstrom":
        positions = values / np.asarray(geometry.voxel_size, float)
    else:
        positions = values * geometry.scale()
    if convention.origin == "centered":
        positions = positions + np.asarray(geometry.shape, float) / 2.0
    return positions


def from_voxels(positions: np.ndarray, convention: Convention, geometry: Geometry) -> np.ndarray:
    """The inverse of :func:`to_voxels`: values [N, 3] for ``convention.columns``."""
    values = np.asarray(positions, dtype=np.float64)
    if convention.origin == "centered":
        values = values - np.asarray(geometry.shape, float) / 2.0
    if convention.units == "angstrom":
        return values * np.asarray(geometry.voxel_size, float)
    return values / geometry.scale()


def as_triple(value, key: str, source: str) -> tuple[float, float, float] | None:
    """A voxel size given as one number or [z, y, x]."""
    if value is None:
        return None
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"key '{key}' must be a positive number or [z, y, x] (got {value!r})", source)
    z, y, x = (float(v) for v in values)
    return z, y, x


def box_start(position: np.ndarray, size: int) -> np.ndarray:
    """First voxel of a ``size``-voxel box centred on a position: the voxel holding it, minus ``size // 2``."""
    return np.floor(np.asarray(position, float) + 0.5).astype(np.int64) - size // 2


def with_original_columns(table: pd.DataFrame, picks: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus the picks' original columns, prefixed with :data:`PICK_PREFIX`."""
    originals = picks.reset_index(drop=True).add_prefix(PICK_PREFIX)
    return pd.concat([table.reset_index(drop=True), originals], axis=1)


def original_columns(table: pd.DataFrame) -> pd.DataFrame | None:
    """The picks' original columns (prefix dropped), or None for a table made from masks."""
    cols = [c for c in table.columns if c.startswith(PICK_PREFIX)]
    if not cols:
        return None
    return table[cols].rename(columns=lambda c: c[len(PICK_PREFIX) :])
