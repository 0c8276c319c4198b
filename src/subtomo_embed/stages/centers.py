"""Embeddings from particle picks (CryoSiam's ``simsiam_embeddings_from_centers_predict``).

For every tomogram, its picks (one file for all tomograms or one per tomogram, see
:mod:`subtomo_embed.core.picks`) become boxes of ``centers_patch_size`` voxels centred on each
pick, normalized exactly as ``predict`` normalizes, optionally sphere-masked, fitted to
``patch_size`` and embedded. The outputs keep ``predict``'s layout, so merge, visualize and
clustering work unchanged:

* ``<stem>_embeds.h5``, ``<stem>_instance_labels.h5`` (the running pick id, 1-based over the
  picks input, or the input's own ``rlnLabel``/``label``);
* ``<stem>_instance_regions.csv``: CryoSiam's columns (box as bbox, ``area`` = box volume,
  centroid = the pick in tomogram voxels) plus every original column, prefixed ``pick:``;
* ``<stem>_instance_regions.star``: the picks' original rows, in the convention they came in,
  plus ``rlnLabel`` — the clustering steps add ``rlnClass`` to exactly these rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import io, volumes
from ..core import picks as P
from ..core.config import Config
from ..core.errors import ConfigError, InputDataError
from ..core.extract import cut_centered_patch
from ..core.patch_contract import patch_contract
from .embedding import Instances, Job, Run, RunSummary, embed_tomograms, embedding_settings
from .provenance import keep_config
from .tomograms import extraction_settings, list_tomograms, prepare_output_folder

log = logging.getLogger(__name__)


@dataclass
class TomogramPicks:
    stem: str
    picks: pd.DataFrame  # original columns, this tomogram's rows
    labels: np.ndarray  # pick ids
    convention: P.Convention
    source: Path


def centers_box_size(cfg: Config) -> int:
    """``centers_patch_size``: the edge of the cubic box cut around each pick (voxels)."""
    if not cfg.centers_file:
        raise ConfigError("key 'centers_file' must be set for predict-centers", cfg.source)
    if not cfg.centers_patch_size:
        raise ConfigError("key 'centers_patch_size' must be set for predict-centers", cfg.source)
    return int(cfg.centers_patch_size)


def pick_ids(table: pd.DataFrame, first: int) -> np.ndarray:
    """The picks' own ``rlnLabel``/``label`` if they have one, else a running id from ``first``."""
    for column in ("rlnLabel", "label"):
        if column in table.columns:
            return table[column].to_numpy(dtype=np.int64)
    return np.arange(first, first + len(table), dtype=np.int64)


class PicksSource:
    """Where each tomogram's picks come from: one file (split by its tomogram column) or a folder.

    Picks that give the run nothing at all to embed (a header only, names of none of the selected
    tomograms) are an error before any work, unless the run is ``pinned`` to one tomogram
    (``--filename``: a task of a larger run, as the pipeline's are, given the picks of all): then
    it is a warning and the tomogram is skipped ("no picks, skipped", no outputs, exit 0).
    """

    def __init__(self, cfg: Config, stems: list[str], pinned: bool = False):
        self.cfg = cfg
        self.path = cfg.path("centers_file")
        self.folder = self.path.is_dir()
        self.stems = stems
        self.pinned = pinned
        self.single: pd.DataFrame | None = None
        if not self.folder:
            table = P.read_picks(self.path)
            if len(table) == 0:
                self._nothing("picks file holds no picks (a header only)")
            self.labels = pick_ids(table, 1)
            self.convention = P.detect_convention(table, cfg.centers.units, cfg.centers.origin, self.path)
            column = P.tomogram_column(table, cfg.centers.tomogram_column, self.path)
            if column is None:
                if len(stems) > 1:
                    raise InputDataError(
                        f"picks name no tomogram (no column {', '.join(P.TOMOGRAM_COLUMNS)}) but {len(stems)} "
                        "tomograms are selected: add the column, set centers.tomogram_column, or use --filename",
                        self.path,
                    )
                self.names = np.array([stems[0]] * len(table), dtype=object)
            else:
                self.names = np.array([P.tomogram_name(v, cfg.file_extension) for v in table[column]], dtype=object)
            self.single = table
            unknown = sorted(set(self.names) - set(stems))
            if unknown and len(unknown) == len(set(self.names)):
                self._nothing(
                    f"picks name none of the {len(stems)} selected tomogram(s) ({_some(stems)}) in column "
                    f"'{column}': they name {_some(unknown)}"
                )
            elif unknown:
                log.info("picks for %d tomogram(s) not selected here (e.g. %s)", len(unknown), unknown[0])
        elif not any(self.path.iterdir()):
            raise InputDataError("centers_file is an empty folder", self.path)

    def _nothing(self, why: str) -> None:
        """Nothing to embed: an error, or (pinned to one tomogram) a warning."""
        if not self.pinned:
            raise InputDataError(f"{why}: nothing to embed", self.path)
        log.warning("%s: %s", self.path, why)

    def of(self, stem: str) -> TomogramPicks | None:
        if self.single is not None:
            rows = np.flatnonzero(self.names == stem)
            if rows.size == 0:
                return None
            return TomogramPicks(
                stem, self.single.iloc[rows].reset_index(drop=True), self.labels[rows], self.convention, self.path
            )
        path = P.picks_file_for(self.path, stem, frozenset(self.stems) - {stem})
        if path is None:
            return None
        table = P.read_picks(path)
        column = P.tomogram_column(table, self.cfg.centers.tomogram_column, path)
        if column is not None and len(table):  # the file's own column says whose picks these are
            names = np.array([P.tomogram_name(v, self.cfg.file_extension) for v in table[column]], dtype=object)
            if not (names == stem).any():
                log.warning(
                    "%s: its column '%s' names %s, not %s: not used for %s", path, column, _some(names), stem, stem
                )
                return None
            table = table.iloc[np.flatnonzero(names == stem)].reset_index(drop=True)
        convention = P.detect_convention(table, self.cfg.centers.units, self.cfg.centers.origin, path)
        return TomogramPicks(stem, table, pick_ids(table, 1), convention, path)

    def to_embed(self, stem: str) -> TomogramPicks | None:
        """The tomogram's picks, or None when it has none (logged: "<stem>: no picks, skipped")."""
        picks = self.of(stem)
        if picks is None or len(picks.picks) == 0:
            log.warning("%s: no picks, skipped", stem)
            return None
        return picks


def _some(names) -> str:
    """A few of ``names``, for a message."""
    unique = sorted({str(n) for n in names})
    return ", ".join(repr(n) for n in unique[:3]) + (f" and {len(unique) - 3} more" if len(unique) > 3 else "")


def tomogram_geometry(cfg: Config, tomogram: Path, shape: tuple[int, ...], units: str = "angstrom") -> P.Geometry:
    c = cfg.centers
    voxel = P.as_triple(c.voxel_size, "centers.voxel_size", cfg.source) or volumes.mrc_voxel_size(tomogram)
    picks_voxel = P.as_triple(c.picks_voxel_size, "centers.picks_voxel_size", cfg.source)
    if voxel is None:  # issue 13: never 1 Å made up for Å picks or another binning
        if units == "angstrom" or picks_voxel is not None:
            raise InputDataError(
                "the MRC header's voxel size is not a size (0, NaN or Inf) and these picks need "
                "it: set centers.voxel_size",
                tomogram,
            )
        voxel = (1.0, 1.0, 1.0)  # voxel picks of this tomogram: the size is not used
    z, y, x = (int(n) for n in shape)
    return P.Geometry((z, y, x), voxel, picks_voxel)


def plan_picks(
    picks: TomogramPicks, geometry: P.Geometry, size: int, border: str
) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The regions table of a tomogram's picks, which rows of ``picks`` it keeps, and the counts."""
    positions = P.to_voxels(picks.picks, picks.convention, geometry)
    shape = np.asarray(geometry.shape)
    finite = np.isfinite(positions).all(axis=1)
    inside = finite & ((positions >= -0.5) & (positions < shape - 0.5)).all(axis=1)
    starts = P.box_start(np.where(finite[:, None], positions, 0), size)
    whole = ((starts >= 0) & (starts + size <= shape)).all(axis=1)
    keep = inside & (whole if border == "skip" else True)
    counts = {
        "picks": len(positions),
        "outside the tomogram": int((~inside).sum()),
        "box crossing the border": int((inside & ~whole).sum()),
    }
    rows = np.flatnonzero(keep)
    table = pd.DataFrame(
        {
            "label": picks.labels[rows],
            "area": np.full(rows.size, size**3, dtype=np.int64),
            **{f"bbox-{i}": starts[rows, i] for i in range(3)},
            **{f"bbox-{i + 3}": starts[rows, i] + size for i in range(3)},
            **{f"centroid-{i}": positions[rows, i] for i in range(3)},
            "hull_area": np.zeros(rows.size, dtype=np.int64),
        }
    )
    if table["label"].duplicated().any():
        raise InputDataError("picks have duplicate labels (rlnLabel/label)", picks.source)
    return P.with_original_columns(table, picks.picks.iloc[rows]), rows, counts


def picks_star(table: pd.DataFrame) -> pd.DataFrame:
    """The picks' original rows (their columns, their convention) plus ``rlnLabel``."""
    original = P.original_columns(table)
    assert original is not None  # the table was made from picks
    star = original.copy()
    if "rlnLabel" not in star.columns:
        star["rlnLabel"] = table["label"].to_numpy(np.int64)
    return star


def load_picked_tomogram(
    cfg: Config, tomogram: Path, picks: TomogramPicks, size: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """The tomogram (memory-mapped) and the regions table of its picks whose boxes can be cut; the
    picks' conventions logged; a box larger than the tomogram, or no pick left, is an error."""
    stem = cfg.stem(tomogram.name)
    volume, _ = volumes.open_mrc_volume(tomogram)
    if size > min(volume.shape):  # as predict's patch_size: a box beyond the tomogram is a mistake
        raise ConfigError(
            f"centers_patch_size {size} is larger than the tomogram {tomogram.name} {list(volume.shape)}",
            cfg.origin("centers_patch_size"),
        )
    geometry = tomogram_geometry(cfg, tomogram, volume.shape, picks.convention.units)
    table, _, counts = plan_picks(picks, geometry, size, cfg.centers.border)
    _log_picks(cfg, stem, picks, geometry, counts)
    if len(table) == 0:
        raise InputDataError(
            f"none of the {counts['picks']} picks of {stem} can be cut (check the coordinate convention in the log)",
            picks.source,
        )
    return volume, table


def pick_boxes(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(first voxel of each pick's box, the pick), tomogram voxels (z, y, x), from its regions table."""
    return table[[f"bbox-{i}" for i in range(3)]].to_numpy(), table[[f"centroid-{i}" for i in range(3)]].to_numpy()


def centers_job(run: Run, source: PicksSource, tomogram: Path, size: int) -> Job | None:
    cfg = run.cfg
    stem = cfg.stem(tomogram.name)
    picks = source.to_embed(stem)
    if picks is None:
        return None
    rows = pd.util.hash_pandas_object(picks.picks, index=False).to_numpy().tobytes()
    stamp = io.fingerprint(
        [tomogram, picks.source],
        extraction=extraction_settings(cfg),
        centers_patch_size=cfg.centers_patch_size,
        centers=cfg.centers.model_dump(),
        **embedding_settings(cfg),
        checkpoint=run.model.digest,
        picks=hashlib.sha256(rows).hexdigest(),
    )

    def load() -> Instances:
        volume, table = load_picked_tomogram(cfg, tomogram, picks, size)
        starts, positions = pick_boxes(table)
        contract = patch_contract(cfg)
        patches = (
            cut_centered_patch(
                volume, s, size, contract.patch_size, contract.norm, p, cfg.centers.mask_radius, str(tomogram)
            )
            for s, p in zip(starts, positions)
        )
        return Instances(len(table), patches, lambda: table, picks_star, exact_floats=True)

    return Job(stem, stamp, load)


def _log_picks(cfg: Config, stem: str, picks: TomogramPicks, geometry: P.Geometry, counts: dict) -> None:
    scale = geometry.scale() if picks.convention.units == "voxels" else None
    log.info(
        "%s: %d picks (%s), tomogram %s voxels of %s Å%s; %d outside the tomogram (skipped), %d boxes "
        "crossing the border (%s)",
        stem,
        counts["picks"],
        picks.convention.describe(),
        "×".join(map(str, geometry.shape)),
        "×".join(f"{v:g}" for v in geometry.voxel_size),
        f", picks scaled by {'×'.join(f'{s:g}' for s in scale)}"
        if scale is not None and not np.allclose(scale, 1)
        else "",
        counts["outside the tomogram"],
        counts["box crossing the border"],
        "zero-padded" if cfg.centers.border == "pad" else "skipped",
    )


def predict_centers(cfg: Config, filename: str | None, start: Callable[[Path], Run]) -> RunSummary:
    """Embed a box around every pick of every selected tomogram (``predict-centers``:
    :func:`.embedding.run_predict` with ``centers``, whose ``start`` loads the model for the output folder)."""
    size = centers_box_size(cfg)
    tomograms = list_tomograms(cfg, filename)
    source = PicksSource(cfg, [cfg.stem(t.name) for t in tomograms], pinned=filename is not None)
    out = prepare_output_folder(cfg.path("prediction_folder"), cfg)
    run = start(out)
    log.info(
        "embedding the picks of %d tomogram(s) from %s: boxes of %d³ voxels → patches %s, %s, on %s",
        len(tomograms),
        source.path,
        size,
        "×".join(map(str, patch_contract(cfg).patch_size)),
        f"sphere mask radius {cfg.centers.mask_radius:g}" if cfg.centers.mask_radius else "no mask",
        run.device,
    )
    summary = embed_tomograms(run, [(cfg.stem(t.name), partial(centers_job, run, source, t, size)) for t in tomograms])
    if not source.pinned and summary.nothing and not (summary.done or summary.skipped or summary.failed):
        raise InputDataError(
            f"no picks for any of the {len(tomograms)} selected tomogram(s): nothing embedded", source.path
        )
    if summary.done or summary.skipped or summary.failed:  # a run that made nothing leaves nothing
        keep_config(cfg, out, "predict-centers")
    return summary
