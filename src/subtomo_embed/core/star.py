"""The one STAR writer (and reader) of the package, following RELION 5's conventions.

A file is an optional ``data_optics`` block, then ``data_particles`` (a ``loop_`` of one row per
particle: ``rlnTomoName``, ``rlnCoordinateX/Y/Z`` or ``rlnCenteredCoordinateX/Y/ZAngst``, ...).
Every value is written so that RELION and the ``starfile`` package read back exactly what was
written: text is double-quoted when it has a space, starts with a character STAR gives a meaning
(``_ # $ ' " [ ] ;``), holds ``#`` or a quote, or is a STAR word (``data_…``, ``loop_``, ``save_…``,
``global_``, ``stop_``); a ``"`` inside is doubled. Floats are written with 6 decimals as RELION
writes them, or (``exact``) as the shortest text that reads back as the same number. There is no
time stamp, so a re-run writes the same bytes.

API (also for the explorer's download and the napari exports):

* :func:`star_text` ``(particles, exact=False, *, optics=None) -> str``: the file's text;
* :func:`write_star` ``(path, particles, exact=False, *, optics=None)``: that text, written atomically;
* :func:`read_star` ``(path) -> DataFrame | dict``: a STAR file, name columns read as text.

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


def star_text(particles: pd.DataFrame, exact: bool = False, *, optics: pd.DataFrame | None = None) -> str:
    """The STAR text of ``particles`` (a ``data_particles`` loop), after ``optics`` (a ``data_optics``
    loop, e.g. ``rlnOpticsGroup``, ``rlnOpticsGroupName``, ``rlnTomoTiltSeriesPixelSize``) when given.
    Column names are used as they are (without the leading ``_``). A TAB or line break in a value is
    a :class:`ValueError` (names never hold one: :mod:`.names`)."""
    blocks = [] if optics is None else [_block("optics", optics, exact)]
    blocks.append(_block("particles", particles, exact))
    return HEADER + "\n" + "\n\n".join(blocks)


def write_star(
    path: str | Path, particles: pd.DataFrame, exact: bool = False, *, optics: pd.DataFrame | None = None
) -> None:
    """:func:`star_text` written to ``path`` atomically (a temporary name, renamed when complete)."""
    text = star_text(particles, exact, optics=optics)
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
