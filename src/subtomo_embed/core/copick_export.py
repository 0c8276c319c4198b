"""Clusters as a copick project: one pickable object per cluster, its members as copick points.

From a clustered STAR file of ours (``<m>_particles.star``, a per-cluster file, the explorer's or
napari's selection; :func:`.star.read_particles`), :func:`write_copick` writes into ``folder``::

    copick_config.json                                   # the objects: <prefix>-<cluster id>
    ExperimentRuns/<rlnTomoName>/Picks/<user>_<session>_<prefix>-<c>.json

A run is a tomogram (``rlnTomoName``), an object a cluster (``rlnClass``; a STAR without it is one
object, ``<prefix>``). copick stores a point's ``location`` in Å from the corner of the tomogram:
``rlnCoordinateX/Y/Z`` (voxels) times the voxel size, ``rlnImagePixelSize`` of the file's optics
groups, or ``pixel_size`` when given (as :mod:`.picks` reads copick points back: ``v = a / voxel size``).
The config's ``overlay_root`` is the folder (absolute), so ``copick.from_file(config)`` opens it;
the pick files can also be copied into an existing project's overlay, with the objects added to its
config. Files of an earlier export under the same ``<user>_<session>_<prefix>-`` that this one did
not write are removed (a re-export with fewer clusters leaves none behind). Every file is written
atomically; nothing here imports copick.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputDataError
from .io import atomic_output
from .names import check_name

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CONFIG_NAME = "copick_config.json"
CLASS_COLUMNS = ("rlnClass", "rlnClassNumber")
COORDINATES = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
# copick's rule for object names, user and session ids (copick.util.escape.sanitize_name): no
# underscore (a picks file is <user>_<session>_<object>.json), space, control or path character
_COPICK_INVALID = re.compile(r'[<>:"/\\|?*\x00-\x1F\x7F\s_]')
_IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
# tab10's colours, one per object in turn (RGBA, as copick's config has them)
_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


@dataclass(frozen=True)
class CopickExport:
    """What :func:`write_copick` wrote: the config, the pick files, and each object's point count."""

    config: Path
    picks: list[Path]
    counts: dict[str, int]


def copick_name(value: str, what: str) -> str:
    """``value`` when copick takes it as an object name, user or session id; else a ValueError."""
    if not value or _COPICK_INVALID.search(value) or value.strip("-") != value:
        raise ValueError(
            f"{what} {value!r} is not a copick name (no '_', spaces or <>:\"/\\|?*; not starting with '-')"
        )
    return value


def write_copick(
    particles: pd.DataFrame,
    folder: str | Path,
    *,
    user: str = "subtomo-embed",
    session: str = "0",
    prefix: str = "cluster",
    pixel_size: float | None = None,
    source: Path | None = None,
) -> CopickExport:
    """Write ``particles`` (a clustered STAR's rows with their optics columns) as a copick project in
    ``folder``; ``source`` (the STAR file) names the input in errors."""
    for value, what in ((user, "user"), (session, "session"), (prefix, "object prefix")):
        copick_name(value, what)
    missing = [c for c in ("rlnTomoName", *COORDINATES) if c not in particles.columns]
    if missing:
        raise InputDataError(f"no {', '.join(missing)}: copick points need a tomogram and coordinates", source)
    sizes = _pixel_sizes(particles, pixel_size, source)
    location = particles[list(COORDINATES)].to_numpy(np.float64) * sizes[:, None]  # Å from the corner
    if not np.isfinite(location).all():
        row = int(np.flatnonzero(~np.isfinite(location).all(axis=1))[0])
        raise InputDataError(f"row {row + 1}: a coordinate is not a number", source)
    column = next((c for c in CLASS_COLUMNS if c in particles.columns), None)
    classes = particles[column].tolist() if column else [0] * len(particles)
    class_of = np.array([_class_id(c, source) for c in classes], dtype=np.int64)
    objects = {int(c): f"{prefix}-{c}" if column else prefix for c in np.unique(class_of)}
    runs = particles["rlnTomoName"].astype(str).to_numpy()
    for run in set(runs):
        check_name(run, source)  # a run is a folder: a plain file name, never a path
    folder = Path(folder)
    written: list[Path] = []
    counts = dict.fromkeys(objects.values(), 0)
    for run in sorted(set(runs)):
        in_run = runs == run
        for c, name in objects.items():
            rows = np.flatnonzero(in_run & (class_of == c))
            if not rows.size:
                continue
            path = folder / "ExperimentRuns" / run / "Picks" / f"{user}_{session}_{name}.json"
            run_sizes = np.unique(sizes[rows])
            doc = {
                "pickable_object_name": name,
                "user_id": user,
                "session_id": session,
                "run_name": run,
                "voxel_spacing": float(run_sizes[0]) if run_sizes.size == 1 else None,
                "unit": "angstrom",
                "points": [
                    {
                        "location": {"x": float(x), "y": float(y), "z": float(z)},
                        "transformation_": _IDENTITY,
                        "instance_id": 0,
                        "score": 1.0,
                    }
                    for x, y, z in location[rows].tolist()
                ],
                "trust_orientation": False,  # clusters carry no orientation
            }
            _write_json(path, doc)
            written.append(path)
            counts[name] += int(rows.size)
    config = folder / CONFIG_NAME
    _write_json(config, _config(folder, objects, user, session))
    _remove_stale(folder, f"{user}_{session}_{prefix}", written)
    log.info(
        "copick: %d points of %d objects in %d runs, config %s", len(particles), len(objects), len(set(runs)), config
    )
    return CopickExport(config, written, counts)


def _class_id(value, source: Path | None) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number != round(number) or number < 0:
        raise InputDataError(f"cluster id {value!r} is not a whole number >= 0", source)
    return int(number)


def _pixel_sizes(particles: pd.DataFrame, pixel_size: float | None, source: Path | None) -> np.ndarray:
    """Each row's voxel size in Å: ``pixel_size``, else its optics group's ``rlnImagePixelSize``."""
    if pixel_size is not None:
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"the pixel size must be a positive number of Å (got {pixel_size})")
        return np.full(len(particles), float(pixel_size))
    if "rlnImagePixelSize" in particles.columns:
        sizes = np.asarray(particles["rlnImagePixelSize"], dtype=np.float64)
        if (np.isfinite(sizes) & (sizes > 0)).all():
            return sizes
    raise InputDataError(
        "the voxel size of the coordinates is not known (no rlnImagePixelSize in the file's data_optics): "
        "give it (--pixel-size, Å)",
        source,
    )


def _config(folder: Path, objects: dict[int, str], user: str, session: str) -> dict:
    return {
        "name": "subtomo-embed clusters",
        "description": "Clusters of subtomogram embeddings (subtomo-embed): one pickable object per cluster.",
        "version": "0.2.0",
        "pickable_objects": [
            {"name": name, "is_particle": True, "label": i + 1, "color": [*_COLOURS[i % len(_COLOURS)], 255]}
            for i, name in enumerate(objects.values())
        ],
        "user_id": user,
        "session_id": session,
        "config_type": "filesystem",
        "overlay_root": "local://" + str(folder.resolve()),
        "overlay_fs_args": {"auto_mkdir": True},
    }


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _remove_stale(folder: Path, stem: str, written: list[Path]) -> None:
    """Pick files ``<stem>-<n>.json`` or ``<stem>.json`` (an earlier export's objects) that this
    export did not write; another prefix's files (``<stem>-other-0.json``) are not ours."""
    keep = set(written)
    ours = re.compile(re.escape(stem) + r"(-\d+)?\.json")
    for path in (folder / "ExperimentRuns").glob(f"*/Picks/{stem}*.json"):
        if ours.fullmatch(path.name) and path not in keep and path.is_file() and not path.is_symlink():
            path.unlink()
            log.info("copick: removed %s (an earlier export's object)", path)
