"""The one rule for tomogram names (stems): what is accepted, what is refused, and how a name is
shown where a format gives some characters a meaning.

A name becomes part of file names, HDF5 strings, CSV and STAR cells, figure labels and the
explorer's text, and travels to spreadsheets, RELION and notebooks. :func:`check_name` accepts a
name only if every one of those reads it back unchanged; anything else is refused with a one-line
error (an :class:`InputDataError` naming where the name came from), before any work is done.

Accepted: any other text, Unicode and spaces included (``TS ü 01``, ``TS #1``, ``$x$``, ``007``),
up to :data:`MAX_NAME_BYTES` bytes of UTF-8. Refused, and why:

* a folder part (``/``, ``\\``), ``.``, ``..``, NUL, empty: it would leave the output folder;
* control and format characters (TAB, newline, U+202E, ...): they break every line-based format;
* quotes (``'``, ``"``): STAR readers (``starfile``, which turns ``'`` into ``"``) do not give them back;
* ``<``, ``>``: markup in plotly labels (a live link in the explorer);
* a leading ``=``, ``+``, ``@``, ``-``: spreadsheets run such a cell as a formula (and ``-``
  reads as an option on a command line);
* a leading ``.``: hidden, and ``.subtomo-tmp-*`` would be removed as an interrupted run's temporary;
* names that read as a missing value (``NA``, ``None``, ``null``, ``nan``, ``N/A``, ... any case):
  pandas, R and spreadsheets read them back as empty;
* our own output names (``all_tomograms``, ``kmeans_clusters``, ``spectral_clusters``): the
  per-tomogram files would overwrite the global ones;
* longer than :data:`MAX_NAME_BYTES` bytes: with our suffixes and temporary names a file name
  would pass the 255-byte limit of file systems.

Figures show text literally (matplotlib's ``text.parse_math`` is off, ``core/visualize.py``), so ``$…$``
in a name is shown as written.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from .errors import InputDataError

MAX_NAME_BYTES = 120
RESERVED = frozenset({"all_tomograms", "kmeans_clusters", "spectral_clusters"})  # global outputs' prefixes
MISSING = frozenset(
    # pandas' default missing-value strings, and R's / spreadsheets' own, compared case-insensitively
    s.lower()
    for s in (
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
        "NaT",
        "nil",
    )
)
_FORMULA_START = "=+@-"
_REFUSED_ANYWHERE = "'\"<>"


def why_refused(name: str) -> str | None:
    """Why ``name`` is not a tomogram name, or None when it is one."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        return "is not a plain file name (a folder part, '..', NUL or empty); refusing to use it in a path"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")), None)
    if bad is not None:
        return f"holds the control character U+{ord(bad):04X}, which breaks tables and STAR files"
    quote = next((c for c in name if c in _REFUSED_ANYWHERE), None)
    if quote is not None:
        return f"holds {quote!r}, which STAR readers or the explorer's labels do not give back as written"
    if name[0] in _FORMULA_START:
        return f"starts with {name[0]!r}, which a spreadsheet runs as a formula"
    if name[0] == ".":
        return "starts with '.' (a hidden file, or one of our temporaries)"
    if name.strip().lower() in MISSING:
        return "reads as a missing value (NA, None, null, NaN, ...) in pandas, R and spreadsheets"
    if name in RESERVED:
        return "is the name of one of our own outputs (its files would overwrite the global ones)"
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; at most {MAX_NAME_BYTES} (with our suffixes a file name passes 255)"
    return None


def check_name(name: object, source: Path | str | None = None) -> str:
    """``name`` as text if it is a tomogram name (:func:`why_refused`), else an :class:`InputDataError`
    naming ``source``. Every stem that becomes part of a path, a table or a label passes here."""
    text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    why = why_refused(text)
    if why is not None:
        raise InputDataError(f"tomogram name {_shown(text)} {why}", source)
    return text


def _shown(text: str) -> str:
    """The name in a message: repr (control characters escaped), cut to a readable length."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:60] + f"... ({len(text)} characters)"
