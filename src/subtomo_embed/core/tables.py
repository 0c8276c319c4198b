"""Tables: CryoSiam regions CSVs, RELION STAR files and plain CSV tables, read and written.

Every table is read with one error translation (an :class:`InputDataError` naming the file) and
written through :func:`.io.atomic_output`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputDataError
from .io import _short, atomic_output
from .star import read_particles, read_star, shortest_text, write_star  # noqa: F401  (the one STAR reader and writer, core/star.py)

if TYPE_CHECKING:
    import pandas as pd

REGION_COLUMNS = [
    "label",
    "area",
    *[f"bbox-{i}" for i in range(6)],
    *[f"centroid-{i}" for i in range(3)],
    "hull_area",
]
STAR_RENAMES = {
    "label": "rlnLabel",
    "area": "rlnArea",
    **{f"bbox-{i}": f"rlnBbox-{i}" for i in range(6)},
    "centroid-0": "rlnCoordinateZ",
    "centroid-1": "rlnCoordinateY",
    "centroid-2": "rlnCoordinateX",
}


def read_regions_csv(path: str | Path) -> pd.DataFrame:
    """Read a CryoSiam regions CSV (label, area, bbox-*, centroid-*, ...)."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputDataError(f"not a readable regions CSV ({_short(err)})", path) from None
    needed = ["label", "area", *[f"bbox-{i}" for i in range(6)]]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputDataError(f"regions CSV lacks columns {missing}", path)
    for c in needed:
        df[c] = integer_column(df[c], c, path)
    bounds = df[[f"bbox-{i}" for i in range(6)]].to_numpy()
    bad = np.flatnonzero((bounds[:, :3] >= bounds[:, 3:]).any(axis=1))  # (picks' boxes may start below 0)
    if bad.size:
        row = int(bad[0])
        raise InputDataError(
            f"label {df['label'].iloc[row]} (row {row + 1}) has an empty or inverted bbox {bounds[row].tolist()}", path
        )
    twice = df["label"].duplicated(keep=False).to_numpy()
    if twice.any():
        rows = np.flatnonzero(twice)
        first = df["label"].iloc[rows[0]]
        again = rows[df["label"].iloc[rows].to_numpy() == first]
        raise InputDataError(
            f"label {first} appears twice (rows {again[0] + 1} and {again[1] + 1}): each instance "
            "would be embedded twice",
            path,
        )
    return df


def integer_column(values: pd.Series, column: str, path: Path) -> np.ndarray:
    """A table column as int64, or an InputDataError naming the first row that is not an integer."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) | (numbers != np.round(numbers)) | (np.abs(numbers) >= 2.0**63)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"column '{column}' row {row + 1} is not an integer ({values.iloc[row]!r})", path)
    if values.dtype.kind in "iu":
        return values.to_numpy(dtype=np.int64)
    return numbers.astype(np.int64)


def write_regions_csv(path: str | Path, regions: pd.DataFrame) -> None:
    with atomic_output(path) as tmp:
        regions.to_csv(tmp, index=False)


def regions_to_star_table(
    regions: pd.DataFrame,
    tomogram: str | None = None,
    shape: tuple[int, int, int] | None = None,
    voxel_size: tuple[float, float, float] | None = None,
) -> pd.DataFrame:
    """CryoSiam's STAR columns for a regions table (``hull_area`` dropped, RELION names).

    With the tomogram's name, size and voxel size (z, y, x, Å) it also gets ``rlnTomoName`` and
    RELION 5's ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram's centre, ``n/2``
    voxels), so it can go straight to subtomogram averaging, and the voxel size (x) as
    ``rlnImagePixelSize`` (an optics column: the STAR writer moves it to ``data_optics``).
    """
    star = regions.drop(columns=[c for c in regions.columns if c == "hull_area" or c.startswith("pick:")])
    star = star.rename(columns=STAR_RENAMES)
    if tomogram is not None:
        star.insert(0, "rlnTomoName", tomogram)
    if shape is not None and voxel_size is not None:
        for axis, name in enumerate("ZYX"):
            centroid = regions[f"centroid-{axis}"].to_numpy(np.float64)
            star[f"rlnCenteredCoordinate{name}Angst"] = (centroid - shape[axis] / 2.0) * voxel_size[axis]
        star["rlnImagePixelSize"] = float(voxel_size[2])
    return star


def exact_floats(table: pd.DataFrame) -> pd.DataFrame:
    """Float columns as the shortest text that reads back as the same number (``-33.123456``,
    ``90.0``): values read from another STAR file go back out unchanged, and stay floats."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype.kind == "f":
            out[column] = [shortest_text(v) for v in out[column].to_numpy(np.float64).tolist()]
    return out


def read_names_table(path: str | Path, *name_columns: str) -> pd.DataFrame:
    """A CSV table whose ``name_columns`` hold names, read back as they were written: text, never
    coerced to a missing value (``NA``, ``None``, ``null`` are names); only an empty cell is missing."""
    return read_table(path, dtype=dict.fromkeys(name_columns, str), keep_default_na=False, na_values=[""])


def read_table(path: str | Path, **read_csv) -> pd.DataFrame:
    """A CSV table (``pandas.read_csv`` options)."""
    import pandas as pd

    try:
        return pd.read_csv(path, **read_csv)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputDataError(f"not a readable table ({_short(err)})", Path(path)) from None
