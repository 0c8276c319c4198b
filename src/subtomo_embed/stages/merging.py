"""Merging: every tomogram's embeddings into one ``embeddings.h5`` + ``embeddings_table.csv``.

The numerical checks are in ``core.merge``. Inputs (from the embedding step, in ``--input-dir``):
``<stem>_embeds.h5`` (``embeddings`` [dim, N]), ``<stem>_instance_labels.h5`` (``labels``),
``<stem>_instance_regions.csv``; or an already merged ``embeddings.h5`` (+ ``embeddings_table.csv``
or the per-tomogram regions CSVs), which is how the pipeline stages them.

The steps that use the merged embeddings run as plain steps: :func:`plan_merged` finds and checks
the inputs and counts the embeddings (nothing written); the caller checks what it needs (enough
instances, writable folders); :func:`load_merged` writes the merge if one is due, and reads it.
Every file goes through ``atomic_output``, so bad input leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import chunked, digests, h5files, io, layout, tables
from ..core import merge as M
from ..core.config import Config
from ..core.errors import InputDataError
from .context import Folders

log = logging.getLogger(__name__)

MERGE_LAYOUT_VERSION = 1  # part of the fingerprint: a new layout rebuilds every merge


@dataclass
class Merged:
    embeddings: np.ndarray | h5files.MergedRows  # [N, dim] float32; read on demand beyond scale.memory_gb
    counts: np.ndarray  # [n_tomograms]
    stems: list[str]
    table: pd.DataFrame  # tomogram, label, row, regions columns
    path: Path
    key: str  # identifies this version of the merged embeddings
    working_dim: int = 64  # out of core: principal components the clustering and projections use
    offsets: np.ndarray = field(init=False)
    _working: dict[bool, np.ndarray] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.offsets = M.offsets(self.counts)

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def in_memory(self) -> bool:
        return isinstance(self.embeddings, np.ndarray)

    def working(self, unit_rows: bool = False) -> np.ndarray:
        """The rows clustering and projections use: in memory the embeddings themselves; out of core
        their first ``working_dim`` principal components, made in one streamed pass and kept
        (``unit_rows``: of the rows scaled to unit length, where Euclidean distance orders as cosine)."""
        if isinstance(self.embeddings, np.ndarray):
            return self.embeddings
        if unit_rows not in self._working:
            self._working[unit_rows] = chunked.reduce(self.embeddings, self.working_dim, normalize=unit_rows)
        return self._working[unit_rows]

    def rows(self, i: int) -> slice:
        """Tomogram i's rows of the merged embeddings."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def regions(self, i: int) -> pd.DataFrame:
        """Tomogram i's regions rows (CryoSiam columns) in embedding order."""
        part = self.table.iloc[self.rows(i)]
        return part.drop(columns=["tomogram", "row"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# merge: plan (read and check everything), then write


@dataclass(frozen=True)
class TomogramEmbeddings:
    """One tomogram's inputs to a merge."""

    embeds: Path
    labels: Path | None
    regions: Path

    def files(self) -> list[Path]:
        return [p for p in (self.embeds, self.labels, self.regions) if p is not None]


@dataclass
class MergePlan:
    """What a merge will write, with every input checked (pass 1); nothing written yet."""

    stems: list[str]
    inputs: list[TomogramEmbeddings]
    key: str
    merged_path: Path
    table_path: Path
    up_to_date: bool
    digests: digests.DigestCache | None = None  # the inputs' content digests, saved once the merge is used
    total: int = 0
    dim: int = 0
    counts: list[int] = field(default_factory=list)
    table: pd.DataFrame | None = None


def per_tomogram_stems(cfg: Config, folder: Path, files: list[str] | None) -> list[str]:
    """Sorted stems with ``<stem>_embeds.h5`` in ``folder`` (or those listed in ``files``)."""
    if files:
        return sorted({cfg.stem(f) for f in files})
    stems = (
        layout.stem_of(p, layout.EMBEDS_SUFFIX)
        for p in folder.glob(f"*{layout.EMBEDS_SUFFIX}")
        if p.is_file() and not p.name.startswith(io.TMP_MARK)
    )
    return sorted(s for s in stems if s)


def _tomogram_inputs(folder: Path, stem: str) -> TomogramEmbeddings:
    names = layout.TomogramOutputs(folder, stem)
    if not names.embeds.is_file():
        raise InputDataError("embeddings file does not exist (listed in clustering_files?)", names.embeds)
    if not names.regions_csv.is_file():
        raise InputDataError("regions table of these embeddings does not exist", names.regions_csv)
    return TomogramEmbeddings(names.embeds, names.labels if names.labels.is_file() else None, names.regions_csv)


def plan_merge(cfg: Config, input_dir: Path, output_dir: Path, force: bool = False) -> MergePlan:
    """Find and check the per-tomogram inputs; decide whether the merge in ``output_dir`` is up to date."""
    stems = per_tomogram_stems(cfg, input_dir, cfg.clustering_files)
    if not stems:
        raise InputDataError(f"no embeddings found (no *{layout.EMBEDS_SUFFIX} files)", input_dir)
    inputs = [_tomogram_inputs(input_dir, stem) for stem in stems]
    cache = digests.DigestCache(output_dir / digests.CACHE_NAME)
    files = [p for t in inputs for p in t.files()]
    key = digests.content_fingerprint(files, cache, stems=stems, layout=MERGE_LAYOUT_VERSION)
    merged_path, table_path = layout.merged(output_dir), layout.merged_table(output_dir)
    fresh = merged_path.is_file() and table_path.is_file() and io.read_h5_attr(merged_path, io.FINGERPRINT_ATTR) == key
    plan = MergePlan(stems, inputs, key, merged_path, table_path, fresh and not force, cache)
    if plan.up_to_date:
        plan.total = io.h5_shape(merged_path, "embeddings")[0]
        return plan
    if merged_path.is_file():
        log.info("inputs changed since the last merge (or --force): rebuilding %s", merged_path)

    # pass 1: shapes, labels and regions, all checked before anything is written
    regions_list: list[pd.DataFrame] = []
    for tomogram in inputs:
        shape = io.h5_shape(tomogram.embeds, "embeddings")
        if len(shape) != 2:
            raise InputDataError(f"dataset 'embeddings' must be 2D [dim, N], got shape {shape}", tomogram.embeds)
        if not plan.counts:
            plan.dim = shape[0]
        elif shape[0] != plan.dim:
            raise InputDataError(
                f"embedding dimension {shape[0]} differs from {plan.dim} of {stems[0]}{layout.EMBEDS_SUFFIX}",
                tomogram.embeds,
            )
        n = shape[1]
        lab = io.read_h5_dataset(tomogram.labels, "labels", n) if tomogram.labels is not None else None
        try:
            regions_list.append(M.align_regions(tables.read_regions_csv(tomogram.regions), lab, n))
        except M.MergeInputError as err:
            raise InputDataError(str(err), tomogram.labels if err.about == "labels" else tomogram.regions) from None
        plan.counts.append(n)
    plan.total = int(sum(plan.counts))
    if plan.total == 0:
        raise InputDataError("no embeddings found: every tomogram has 0 instances", input_dir)
    plan.table = M.tidy_table(stems, regions_list)
    return plan


def write_merge(cfg: Config, plan: MergePlan) -> Path:
    """Pass 2: stream the embeddings into ``embeddings.h5`` (checking each tomogram's values); the
    table is written inside the same atomic block, so a failure leaves neither file."""
    if plan.up_to_date:
        log.info("merged embeddings are up to date: %s", plan.merged_path)
        if plan.digests is not None:
            plan.digests.save()
        return plan.merged_path
    table = plan.table
    assert table is not None
    io.check_writable_folder(plan.merged_path.parent)
    log.info("merging %d embeddings (dim %d) of %d tomograms", plan.total, plan.dim, len(plan.stems))

    def tomogram_rows():
        for tomogram in io.progress(plan.inputs, "merge"):
            try:
                yield M.embedding_rows(io.read_h5_dataset(tomogram.embeds, "embeddings"), plan.dim)
            except M.MergeInputError as err:
                raise InputDataError(str(err), tomogram.embeds) from None

    h5files.write_merged_embeddings(
        plan.merged_path,
        tomogram_rows(),
        plan.counts,
        plan.dim,
        plan.stems,
        table["label"].to_numpy(np.int64),
        {io.FINGERPRINT_ATTR: plan.key, "file_extension": cfg.file_extension},
        then=lambda: tables.write_regions_csv(plan.table_path, table),
    )
    if plan.digests is not None:
        plan.digests.save()
    log.info("wrote %s and %s", plan.merged_path, plan.table_path)
    return plan.merged_path


def merge_embeddings(cfg: Config, input_dir: Path, output_dir: Path, force: bool = False) -> Path:
    """Merge ``<stem>_embeds.h5`` of every tomogram (or ``clustering_files``) into ``embeddings.h5``
    and ``embeddings_table.csv`` in ``output_dir``; reuse them only if their inputs are unchanged."""
    return write_merge(cfg, plan_merge(cfg, input_dir, output_dir, force))


def run_merge(cfg: Config, folders: Folders, force: bool = False) -> Path:
    return merge_embeddings(cfg, folders.input_dir, folders.output_dir, force=force)


# --------------------------------------------------------------------------------------------
# the merged embeddings for the analysis steps: plan, (the caller checks), load


@dataclass
class MergedSource:
    """Where the analysis steps' embeddings come from, and how many there are; nothing written yet."""

    n: int
    about: Path  # what an error about the number of embeddings names
    plan: MergePlan | None = None  # a merge of the per-tomogram files to write (or reuse)
    path: Path | None = None  # else this merged file, used as it is


def plan_merged(cfg: Config, folders: Folders) -> MergedSource:
    """Merge (or re-merge) the per-tomogram files of the input folder when it has them, else use the
    ``embeddings.h5`` found in the input (or output) folder."""
    if per_tomogram_stems(cfg, folders.input_dir, None):
        plan = plan_merge(cfg, folders.input_dir, folders.output_dir)
        return MergedSource(plan.total, plan.merged_path if plan.up_to_date else folders.input_dir, plan=plan)
    candidates = [layout.merged(folders.input_dir), layout.merged(folders.output_dir)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise InputDataError(
            f"no embeddings found (no *{layout.EMBEDS_SUFFIX} files and no {layout.MERGED_NAME})", folders.input_dir
        )
    log.info("using merged embeddings %s", path)
    shape = io.h5_shape(path, "embeddings")
    if len(shape) != 2:
        raise InputDataError(f"dataset 'embeddings' must be 2D [N, dim], got shape {shape}", path)
    return MergedSource(shape[0], path, path=path)


def load_merged(cfg: Config, folders: Folders, source: MergedSource | None = None) -> Merged:
    """The merged embeddings of ``source`` (planned here if not given), merged first if a merge is due."""
    source = source or plan_merged(cfg, folders)
    path = write_merge(cfg, source.plan) if source.plan is not None else source.path
    assert path is not None
    contents = h5files.read_merged_embeddings(path, cfg.scale.memory_gb * 2**30)
    embeddings, counts = contents.embeddings, contents.counts
    if not isinstance(embeddings, np.ndarray):
        log.info(
            "%d x %d embeddings (%.1f GB) exceed scale.memory_gb=%g: read in chunks, clustered and projected "
            "on %d principal components",
            *embeddings.shape,
            4 * embeddings.shape[0] * embeddings.shape[1] / 2**30,
            cfg.scale.memory_gb,
            min(cfg.scale.working_dim, embeddings.shape[1]),
        )
    n = embeddings.shape[0]
    if n == 0:
        raise InputDataError("no embeddings found: the merged file is empty", path)
    if (counts < 0).any():
        raise InputDataError(f"number_of_samples holds a negative count ({int(counts.min())})", path)
    if int(counts.sum()) != n:
        raise InputDataError(f"number_of_samples sums to {int(counts.sum())} but there are {n} embeddings", path)
    if contents.labels is not None and len(contents.labels) != n:
        raise InputDataError(f"dataset 'labels' has {len(contents.labels)} entries but there are {n} embeddings", path)
    try:
        M.check_finite(embeddings)
    except M.MergeInputError as err:
        raise InputDataError(str(err), path) from None
    stems = contents.stems if contents.stems is not None else _stems_without_names(cfg, folders, path, len(counts))
    if len(stems) != len(counts):
        raise InputDataError(f"{len(stems)} tomogram names but {len(counts)} entries in number_of_samples", path)
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:  # each tomogram's outputs would overwrite the other's
        raise InputDataError(f"tomogram {twice[0]!r} appears twice in 'tomograms'", path)
    table = _merged_table(folders, path, stems, counts, contents.labels)
    if contents.key is not None:
        key = contents.key
    else:  # a CryoSiam merge: its bytes are its identity
        cache = digests.DigestCache(path.parent / digests.CACHE_NAME)
        key = digests.content_fingerprint([path], cache)
        cache.save()
    return Merged(embeddings, counts, stems, table, path, key, cfg.scale.working_dim)


def _stems_without_names(cfg: Config, folders: Folders, path: Path, n_tomograms: int) -> list[str]:
    """CryoSiam's embeddings.h5 has no tomogram names: take clustering_files or the regions CSVs beside it."""
    if cfg.clustering_files:
        return sorted({cfg.stem(f) for f in cfg.clustering_files})
    stems = (
        layout.stem_of(p, layout.REGIONS_SUFFIX)
        for p in folders.input_dir.glob(f"*{layout.REGIONS_SUFFIX}")
        if not p.name.startswith(io.TMP_MARK)
    )
    found = sorted(s for s in stems if s)
    if len(found) != n_tomograms:
        raise InputDataError(
            f"merged file names no tomograms and {len(found)} regions CSVs do not match its {n_tomograms} tomograms; "
            "set clustering_files",
            path,
        )
    return found


def _check_table_matches(
    table: pd.DataFrame, table_path: Path, path: Path, tomograms: np.ndarray, labels: np.ndarray | None
) -> None:
    """The merged table says, row by row, the tomogram and label that ``embeddings.h5`` says (else a
    table from another merge would name the wrong tomograms, or pair classes with the wrong labels)."""
    names = table["tomogram"].astype(str).to_numpy(dtype=object)
    checks = [("names tomogram", names, tomograms, repr)]
    if labels is not None:  # labels compared as text: exact beyond 2^53
        checks.append(("has label", table["label"].astype(str).to_numpy(dtype=object), labels.astype(str), str))
    for says, listed, merged, shown in checks:
        wrong = np.flatnonzero(listed != merged)
        if wrong.size:
            row = int(wrong[0])
            raise InputDataError(
                f"row {row + 1} {says} {listed[row]!r} but {path.name} has {shown(merged[row])} there "
                f"({wrong.size} rows differ): the table is not this merge's",
                table_path,
            )


def _merged_table(
    folders: Folders, path: Path, stems: list[str], counts: np.ndarray, labels: np.ndarray | None
) -> pd.DataFrame:
    table_path = layout.merged_table(path.parent)
    if table_path.is_file():
        table = tables.read_names_table(table_path, "tomogram")
        missing = [c for c in (*M.TABLE_KEYS, "area") if c not in table.columns]
        if missing:
            raise InputDataError(f"table lacks columns {missing}", table_path)
        if len(table) != int(counts.sum()):
            raise InputDataError(
                f"table has {len(table)} rows but {path.name} has {int(counts.sum())} embeddings", table_path
            )
        if not np.array_equal(table["row"].to_numpy(), np.arange(len(table))):
            raise InputDataError("column 'row' must number the rows 0..N-1 in merged order", table_path)
        _check_table_matches(table, table_path, path, np.repeat(np.asarray(stems, dtype=object), counts), labels)
        return table
    # rebuild from the per-tomogram regions CSVs
    regions = []
    off = M.offsets(counts)
    for i, stem in enumerate(stems):
        csv = layout.TomogramOutputs(folders.input_dir, stem).regions_csv
        if not csv.is_file():
            raise InputDataError(f"regions table does not exist (needed beside {path.name})", csv)
        lab = labels[off[i] : off[i + 1]] if labels is not None else None
        try:
            regions.append(M.align_regions(tables.read_regions_csv(csv), lab, int(counts[i])))
        except M.MergeInputError as err:
            raise InputDataError(str(err), csv) from None
    return M.tidy_table(stems, regions)
