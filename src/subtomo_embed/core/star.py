"""The one STAR writer (and reader) of the package, following RELION 5's conventions.

Every file is a ``data_optics`` block, then ``data_particles`` (a ``loop_`` of one row per particle:
``rlnTomoName``, ``rlnCoordinateX/Y/Z`` or ``rlnCenteredCoordinateX/Y/ZAngst``, ..., ``rlnOpticsGroup``),
as RELION 5 writes particles (:func:`relion_blocks`): the particles' optics columns
(:data:`OPTICS_LABELS`, e.g. ``rlnImagePixelSize``, the voxel size of the tomogram the coordinates
are in, where it is known) move to the optics block, one optics group per distinct set of values.
Every value is written so that RELION and the ``starfile`` package read back exactly what was
written: text is double-quoted when it has a space, starts with a character STAR gives a meaning
(``_ # $ ' " [ ] ;``), holds ``#`` or a quote, or is a STAR word (``data_…``, ``loop_``, ``save_…``,
``global_``, ``stop_``); a ``"`` inside is doubled. Floats are written with 6 decimals as RELION
writes them, or (``exact``) as the shortest text that reads back as the same number. There is no
time stamp, so a re-run writes the same bytes.

API (also for the explorer's download and the napari exports):

* :func:`star_text` ``(particles, exact=False, *, optics=None, pixel_size=None) -> str``: the file's text;
* :func:`write_star` ``(path, particles, exact=False, *, optics=None, pixel_size=None)``: that text,
  written atomically;
* :func:`read_star` ``(path) -> DataFrame | dict``: a STAR file, name columns read as text;
* :func:`read_particles` ``(path) -> DataFrame``: its particles, each row with its optics group's
  columns (what :func:`write_star` moves back to an optics block).

Names themselves are checked by :mod:`.names` (a tomogram name never holds a quote, a TAB or a
newline); other text columns copied from a user's file (picks) are written by the same rule,
best effort: a TAB or newline inside a value cannot be written and is an error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputDataError
from .io import _short, atomic_output

if TYPE_CHECKING:
    import pandas as pd

HEADER = "# Written by subtomo-embed\n"
NAME_COLUMNS = ("rlnTomoName", "rlnMicrographName", "rlnImageName", "rlnOpticsGroupName", "rlnTomoTiltSeriesName")
# RELION's optics-group labels (3dem/relion src/metadata_label.h): moved from a particles table to its optics block
OPTICS_LABELS = (
    "rlnOpticsGroupName",
    "rlnImagePixelSize",
    "rlnTomoTiltSeriesPixelSize",
    "rlnMicrographOriginalPixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnTomoSubtomogramBinning",
    "rlnCtfDataAreCtfPremultiplied",
)
_NEEDS_QUOTES = re.compile(r"""^$|^[_#$'"\[\];]|[\s#'"]|^(data_|loop_|save_|global_$|stop_$)""", re.IGNORECASE)


def quoted(value: str) -> str:
    """A text value as one STAR token: bare when that reads back the same, else in double quotes."""
    if "\n" in value or "\r" in value or "\t" in value:
        raise ValueError(f"a STAR value cannot hold a TAB or a line break ({value!r})")
    if not _NEEDS_QUOTES.search(value):
        return value
    return '"' + value.replace('"', '""') + '"'


def shortest_text(v: float) -> str:
    """The shortest text that reads back as the same float (Python's repr), its exponent form spelled out."""
    text = repr(v)
    return np.format_float_positional(v, unique=True, trim="0") if "e" in text and math.isfinite(v) else text


def _float_text(v: float, exact: bool) -> str:
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return shortest_text(v) if exact else f"{v:.6f}"


def _column_texts(values: pd.Series, exact: bool) -> list[str]:
    kind = values.dtype.kind
    if kind == "f":
        return [_float_text(v, exact) for v in values.to_numpy(np.float64).tolist()]
    if kind in "iub" and not values.isna().any():
        return [str(int(v)) for v in values.tolist()]
    return [_cell_text(v, exact) for v in values.tolist()]


def _cell_text(v: object, exact: bool) -> str:
    import pandas as pd

    if v is None or v is pd.NA or v is pd.NaT:
        return "nan"
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _float_text(float(v), exact)
    text = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
    return quoted(text)


def _block(name: str, table: pd.DataFrame, exact: bool) -> str:
    lines = [f"data_{name}", "", "loop_"]
    lines += [f"_{column} #{i + 1}" for i, column in enumerate(table.columns)]
    columns = [_column_texts(table[c], exact) for c in table.columns]
    lines += ["\t".join(row) for row in zip(*columns)]
    return "\n".join(lines) + "\n"


def relion_blocks(particles: pd.DataFrame, pixel_size: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``(optics, particles)`` blocks of ``particles`` as RELION 5 has them: the optics columns
    (:data:`OPTICS_LABELS`; ``rlnImagePixelSize`` = ``pixel_size`` when given and not there) moved to
    one row per optics group, and every particle's ``rlnOpticsGroup`` (the last column, when new);
    a cluster id ``rlnClass`` (CryoSiam's name) is also RELION's ``rlnClassNumber``, when not there.

    The groups are the distinct combinations of the particles' own ``rlnOpticsGroup`` (when there)
    and optics columns, numbered 1, 2, ... in order of first appearance (a table concatenated from
    files with a group 1 each, at different pixel sizes, gets groups 1 and 2). Their
    ``rlnOpticsGroupName`` is kept when it names each group once, else ``opticsGroup<n>``. No rows:
    one group."""
    import pandas as pd

    particles = particles.copy(deep=False)
    if pixel_size is not None and "rlnImagePixelSize" not in particles.columns:
        particles["rlnImagePixelSize"] = float(pixel_size)
    moved = [c for c in OPTICS_LABELS if c in particles.columns]
    keys = [c for c in ("rlnOpticsGroup", *moved) if c in particles.columns]
    if keys and len(particles):
        codes = particles.groupby(keys, dropna=False, sort=False).ngroup().to_numpy(np.int64)
        first = np.unique(codes, return_index=True)[1]
        optics = particles[moved].iloc[first].reset_index(drop=True)
    else:
        codes = np.zeros(len(particles), np.int64)
        optics = particles[moved].iloc[:1].reset_index(drop=True)
        if not len(particles):
            optics = pd.DataFrame({"rlnImagePixelSize": [np.nan if pixel_size is None else float(pixel_size)]})
    numbers = np.arange(1, len(optics) + 1)
    names = optics.pop("rlnOpticsGroupName") if "rlnOpticsGroupName" in optics.columns else None
    if names is None or names.isna().any() or names.astype(str).duplicated().any():
        names = pd.Series([f"opticsGroup{n}" for n in numbers])
    optics = optics.dropna(axis=1, how="all")
    optics.insert(0, "rlnOpticsGroupName", names.astype(str).to_numpy())
    optics.insert(0, "rlnOpticsGroup", numbers)
    particles = particles.drop(columns=moved)
    if "rlnClass" in particles.columns and "rlnClassNumber" not in particles.columns:
        particles["rlnClassNumber"] = particles["rlnClass"]
    particles["rlnOpticsGroup"] = codes + 1
    return optics, particles


def star_text(
    particles: pd.DataFrame,
    exact: bool = False,
    *,
    optics: pd.DataFrame | None = None,
    pixel_size: float | None = None,
) -> str:
    """The STAR text of ``particles``: a ``data_optics`` loop then a ``data_particles`` loop,
    :func:`relion_blocks` (``optics`` given: that table and the particles as they are). Column names
    are used as they are (without the leading ``_``). A TAB or line break in a value is a
    :class:`ValueError` (names never hold one: :mod:`.names`)."""
    if optics is None:
        optics, particles = relion_blocks(particles, pixel_size)
    blocks = [_block("optics", optics, exact), _block("particles", particles, exact)]
    return HEADER + "\n" + "\n\n".join(blocks)


def write_star(
    path: str | Path,
    particles: pd.DataFrame,
    exact: bool = False,
    *,
    optics: pd.DataFrame | None = None,
    pixel_size: float | None = None,
) -> None:
    """:func:`star_text` written to ``path`` atomically (a temporary name, renamed when complete)."""
    text = star_text(particles, exact, optics=optics, pixel_size=pixel_size)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_star(path: str | Path) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A STAR file (``starfile``): one block as a table, several as a dict by block name; the name
    columns (:data:`NAME_COLUMNS`) read as text (``007`` stays ``007``)."""
    import starfile

    path = Path(path)
    try:
        return starfile.read(path, always_dict=False, parse_as_string=list(NAME_COLUMNS))
    except Exception as err:  # starfile raises many kinds
        raise InputDataError(f"not a readable STAR file ({_short(err)})", path) from None


def read_particles(path: str | Path) -> pd.DataFrame:
    """The particles of a STAR file (its ``particles`` block, else its only or first block), each
    row with its optics group's columns (``rlnOpticsGroupName``, ``rlnImagePixelSize``, ...) when
    the file has a ``data_optics`` block: what :func:`write_star` moves back to an optics block."""
    import pandas as pd

    star = read_star(path)
    if not isinstance(star, dict):
        return star
    particles = star.get("particles", next(iter(star.values()), pd.DataFrame()))
    optics = star.get("optics")
    if (
        not isinstance(optics, pd.DataFrame)
        or optics is particles
        or "rlnOpticsGroup" not in optics.columns
        or "rlnOpticsGroup" not in particles.columns
        or optics["rlnOpticsGroup"].duplicated().any()
    ):
        return particles
    extra = [c for c in optics.columns if c != "rlnOpticsGroup" and c not in particles.columns]
    table = optics.set_index("rlnOpticsGroup")[extra]
    joined = table.reindex(particles["rlnOpticsGroup"].to_numpy()).reset_index(drop=True)
    return pd.concat([particles.reset_index(drop=True), joined], axis=1)
