"""The record of a run's outputs (``.<step>_outputs.json``), in names relative to the record's folder.

A re-run removes what the previous run wrote and this one does not (no ``kmeans_cluster_5_*``
after a re-run with k=3). The record names each file relative to its own folder, so a results
folder that was copied or moved still knows its outputs (an absolute name points at the
original, which is never ours to touch). Only files named in the record, in one of this run's
folders, whose names are ours, that are plain files (not links) are ever removed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from . import io

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 16 * 2**20


def replace_outputs_record(
    record: Path, written: Iterable[Path], folders: Iterable[Path], is_ours: Callable[[str], bool], what: str
) -> list[Path]:
    """Remove the files the previous run recorded in ``record`` that this run did not write, then
    record this run's ``written`` files (relative to ``record``'s folder); returns those removed."""
    base = Path(record).absolute().parent
    now = {Path(os.path.normpath(Path(p).absolute())) for p in written}
    ours = {Path(os.path.normpath(Path(f).absolute())) for f in folders}
    stale = [
        p
        for p in previous_outputs(record)
        if p not in now and p.parent in ours and is_ours(p.name) and p.is_file() and not p.is_symlink()
    ]
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d outputs of %s that this run does not write (e.g. %s)", len(stale), what, stale[0].name)
    names = sorted(os.path.relpath(p, base) for p in now)
    with io.atomic_output(record) as tmp:
        tmp.write_text(json.dumps(names, indent=0))
    return stale


def previous_outputs(record: Path) -> list[Path]:
    """The files a record names, absolute: relative names are taken from the record's folder (an
    absolute name, as older records hold, is kept as it is and so only matches where it lies)."""
    base = Path(record).absolute().parent
    try:
        if Path(record).stat().st_size > MAX_RECORD_BYTES:
            return []
        names = json.loads(Path(record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [Path(os.path.normpath(base / n)) for n in names if isinstance(n, str) and n and "\0" not in n]
