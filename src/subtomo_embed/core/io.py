"""Files on disk: atomic writes, fingerprints, the outputs record and HDF5 reading and writing (MRC
volumes and instance masks: :mod:`.volumes`; tables: :mod:`.tables`).

Array-in/array-out code lives elsewhere; this module only reads and writes. Inputs are always
opened read-only. Every output goes through :func:`atomic_output`: written to a temporary name
in the destination folder and renamed when complete, so an interrupted run never leaves a
file that looks finished.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from .errors import InputDataError, ResourceError

log = logging.getLogger(__name__)

TMP_MARK = ".subtomo-tmp-"
FINGERPRINT_ATTR = "input_fingerprint"  # root attribute of an HDF5 output: the fingerprint of what made it


# --------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The one way the package writes a file, so no output follows a planted link: the temporary is
    created here, new and private to this run (``O_EXCL | O_NOFOLLOW``: an existing file or link of
    that name is an error, never written through), and the rename replaces whatever is at ``path``
    (a link itself, not its target). Something there that cannot be replaced (a folder) is a
    :class:`ResourceError` naming it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResourceError(f"cannot create output folder: {err.strerror}", path.parent) from None
    tmp = path.with_name(f"{TMP_MARK}{_WRITER}~{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        _create_private(tmp)
        yield tmp
        together = _TOGETHER.get()
        if together is None:
            _put_in_place(tmp, path)
        else:
            together.append((tmp, path))  # put in place with the others when the set is complete
    except OSError as err:
        _remove_quietly(tmp)
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or _says_no_space(err):
            raise ResourceError("no space left on the device while writing", path) from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ResourceError("output folder is not writable", path.parent) from None
        raise
    except RuntimeError as err:  # h5py reports failed writes as RuntimeError
        _remove_quietly(tmp)
        if _says_no_space(err):
            raise ResourceError("no space left on the device while writing", path) from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


_TOGETHER: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("together", default=None)


@contextlib.contextmanager
def outputs_together(journal: Path, what: str, finish: Callable[[], object] | None = None) -> Iterator[None]:
    """The outputs of one run, replaced together: every file :func:`atomic_output` writes in the
    block stays under its temporary name until the block has succeeded; then all are put in place
    at once and ``finish`` runs (e.g. the record of outputs, removing the previous run's others).
    If the block fails, its temporaries are removed and the previous outputs are left as they were:
    a re-run's outputs are all new or all old, never a mix.

    While the files are put in place, ``journal`` lists them; it is removed when all are. A journal
    found at the start means the previous run of ``what`` was stopped in that short step (its
    outputs may be a mix of two runs): said in the log, and this run replaces them.
    """
    if journal.is_file():
        log.warning(
            "%s: the previous %s run was stopped while putting its outputs in place: they may be a mix of two "
            "runs; this run replaces them",
            journal,
            what,
        )
    remove_stale_temporaries(journal.parent)  # a killed run's staged files
    staged: list[tuple[Path, Path]] = []
    token = _TOGETHER.set(staged)
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            _remove_quietly(tmp)
        raise
    finally:
        _TOGETHER.reset(token)
    try:
        for _, path in staged:  # what cannot be replaced is found before anything is
            if path.is_dir() and not path.is_symlink():
                raise ResourceError("cannot replace what is there with the output (Is a directory)", path)
        with atomic_output(journal) as tmp:
            tmp.write_text(json.dumps([str(path) for _, path in staged], indent=0))
    except BaseException:
        for tmp, _ in staged:
            _remove_quietly(tmp)
        raise
    for tmp, path in staged:
        _put_in_place(tmp, path)
    if finish is not None:
        finish()
    journal.unlink(missing_ok=True)  # (another run on the folder may have finished first)


def _create_private(tmp: Path) -> None:
    """A new, empty file at ``tmp``: never an existing file, never through a link."""
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    except (FileExistsError, IsADirectoryError) as err:
        raise ResourceError(
            f"the temporary name is taken ({err.strerror}): a planted file or link? nothing was written", tmp
        ) from None


def _put_in_place(tmp: Path, path: Path) -> None:
    """``os.replace``; a folder (or anything a file cannot replace) at ``path`` is a ResourceError."""
    try:
        os.replace(tmp, path)
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as err:
        raise ResourceError(f"cannot replace what is there with the output ({err.strerror})", path) from None
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EBUSY, errno.EXDEV):
            raise ResourceError(f"cannot replace what is there with the output ({err.strerror})", path) from None
        raise


def _says_no_space(err: BaseException) -> bool:
    """HDF5 reports a failed write without an errno; its message still says why."""
    text = str(err).lower()
    return any(s in text for s in ("no space left", "file too large", "disk quota"))


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def check_writable_folder(folder: str | Path, create: bool = True) -> Path:
    """Make sure we can write into ``folder`` before any work is done: create it if needed, or with
    ``create=False`` only check that it could be created (bad input must write nothing)."""
    folder = Path(folder)
    if not create:
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise ResourceError("output folder is not writable", folder)
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResourceError(f"cannot create output folder ({err.strerror})", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResourceError("output folder is not writable", folder)
    return folder


def progress(items: Iterable | None = None, desc: str = "", unit: str = "tomogram", total: int | None = None):
    """A progress bar on a terminal (tqdm), nothing otherwise; use it as an iterable or a context."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: extract forks its workers while a bar is open
    return tqdm(items, total=total, desc=desc, unit=unit, leave=False, disable=None, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# fingerprints: what makes an output stale


def fingerprint(files: Sequence[Path | None] = (), **settings) -> str:
    """A hash of the input files' identities (name, size, modification time in ns; None for an input
    that is not there) and of the settings that shape an output: equal means the output is current."""
    records = [None if p is None else _identity(Path(p)) for p in files]
    payload = json.dumps({"files": records, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _identity(path: Path) -> list:
    try:
        st = path.stat()
    except OSError as err:
        raise InputDataError(f"cannot read the file ({err.strerror})", path) from None
    return [path.name, int(st.st_size), int(st.st_mtime_ns)]


def file_digest(path: str | Path) -> str:
    """A hash of a file's bytes (a checkpoint: the same weights under a new time stamp are the same)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


_WRITER = f"{os.getpid()}@{socket.gethostname()}"  # temporaries say who writes them
STALE_AFTER_S = 24 * 3600  # a temporary of another host is stale after a day


def _writer_is_gone(tmp: Path) -> bool:
    """True if the process that made ``tmp`` has ended (same host), or it is old (another host)."""
    writer = tmp.name[len(TMP_MARK) :].partition("~")[0]
    pid_text, _, host = writer.partition("@")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
        return False
    with contextlib.suppress(OSError):
        return time.time() - tmp.stat().st_mtime > STALE_AFTER_S
    return False


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries left by interrupted runs (they are never mistaken for outputs).

    A temporary still being written by another live run on the same folder is left alone, so
    two runs at once do not break each other.
    """
    count = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f"{TMP_MARK}*"):
            if _writer_is_gone(p):
                _remove_quietly(p)
                count += 1
    if count:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", count, folder)
    return count


# --------------------------------------------------------------------------------------------
# the record of a step's outputs


def replace_outputs_record(
    record: Path, written: Iterable[Path], folders: Iterable[Path], is_ours: Callable[[str], bool], what: str
) -> list[Path]:
    """Remove the files the previous run recorded in ``record`` that this run did not write, then
    record this run's ``written`` files; returns those removed.

    A re-run thus leaves exactly its own outputs (no ``kmeans_cluster_5_*`` after k=3), and only
    files named in the record, in one of ``folders``, whose names are ours (``is_ours``), that are
    plain files (not links) are ever removed: never a file this package did not write.
    """
    now = {Path(p).absolute() for p in written}
    ours = {Path(f).absolute() for f in folders}
    try:
        names = json.loads(Path(record).read_text())
    except (OSError, ValueError):
        names = []
    previous = [Path(n) for n in names if isinstance(n, str)] if isinstance(names, list) else []
    stale = [
        p
        for p in previous
        if p not in now and p.parent in ours and is_ours(p.name) and p.is_file() and not p.is_symlink()
    ]
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d outputs of %s that this run does not write (e.g. %s)", len(stale), what, stale[0].name)
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps([str(p) for p in sorted(now)], indent=0))
    return stale


# --------------------------------------------------------------------------------------------
# HDF5


def write_h5(path: str | Path, datasets: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write datasets (and root attributes) to an HDF5 file atomically."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, data in datasets.items():
                f.create_dataset(name, data=data)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v


def open_h5_file(path: str | Path) -> h5py.File:
    """The one HDF5 reader policy: ``path`` opened read-only, refused (an :class:`InputDataError`
    naming it) unless every byte it gives is its own (:func:`foreign_storage`). The caller closes it."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError("file does not exist", path)
    try:
        f = h5py.File(path, "r")
    except (OSError, KeyError, ValueError) as err:
        raise InputDataError(f"not a readable HDF5 file ({_short(err)})", path) from None
    try:
        found = foreign_storage(f)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        f.close()
        raise InputDataError(f"not a readable HDF5 file ({_short(err)})", path) from None
    if found:
        f.close()
        raise InputDataError(f"{found}: it would read another file; refusing it (copy the data into the file)", path)
    return f


def foreign_storage(f: h5py.File) -> str | None:
    """What in ``f`` reads data from outside it, or None: an external link, a virtual dataset, a
    dataset in external raw files. Soft links stay inside the file once no external link exists.
    Nothing is followed while looking (objects are visited through hard links only)."""
    found: list[str] = []

    def link(name: str, item) -> None:
        if isinstance(item, h5py.ExternalLink) and not found:
            found.append(f"HDF5 '{name}' is an external link to {item.filename}:{item.path}")

    def stored(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and not found:
            if obj.is_virtual:
                found.append(f"HDF5 dataset '{name}' is a virtual dataset (its data are mapped from other files)")
            elif obj.external:
                found.append(f"HDF5 dataset '{name}' keeps its data in external files ({obj.external[0][0]!s})")

    f.visititems_links(link)
    if not found:
        f.visititems(stored)
    return found[0] if found else None


@contextlib.contextmanager
def open_h5(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file opened by :func:`open_h5_file`. Anything h5py cannot read in it, while the block
    runs, is an :class:`InputDataError` naming the file: the one place that says "not a readable HDF5 file"."""
    path = Path(path)
    f = open_h5_file(path)
    try:
        with f:
            yield f
    except InputDataError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputDataError(f"not a readable HDF5 file ({_short(err)})", path) from None


def dataset(f: h5py.File | h5py.Group, name: str) -> h5py.Dataset:
    """``f[name]``, or an :class:`InputDataError` naming the file that lacks it or holds a group there."""
    if name not in f:
        raise InputDataError(f"HDF5 file has no dataset '{name}'", Path(f.file.filename))
    found = f[name]
    if not isinstance(found, h5py.Dataset):
        raise InputDataError(f"'{name}' is an HDF5 group, not a dataset", Path(f.file.filename))
    return found


def read_sized(f: h5py.File | h5py.Group, name: str, size: int | None = None, what: str = "embeddings") -> np.ndarray:
    """``f[name]`` read whole; with ``size``, its declared number of entries is checked first (one
    per ``what``): a small file that declares a huge dataset is refused without allocating it."""
    found = dataset(f, name)
    if size is not None and found.size != size:
        raise InputDataError(
            f"dataset '{name}' has {found.size} entries but there are {size} {what}", Path(f.file.filename)
        )
    return found[()]


def read_h5_dataset(path: str | Path, name: str, size: int | None = None, what: str = "embeddings") -> np.ndarray:
    """One dataset of an HDF5 file (:func:`read_sized`)."""
    with open_h5(path) as f:
        return read_sized(f, name, size, what)


def h5_shape(path: str | Path, name: str) -> tuple[int, ...]:
    with open_h5(path) as f:
        return tuple(dataset(f, name).shape)


def read_h5_attrs(path: str | Path) -> dict[str, object] | None:
    """The root attributes (text decoded); None when the file is missing or unreadable (for a cache
    or a staleness mark, where that only means "not up to date")."""
    try:
        with open_h5(path) as f:
            attrs = dict(f.attrs)
    except InputDataError:
        return None
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}


def read_h5_attr(path: str | Path, name: str) -> str | None:
    """One root attribute as text; None when it, or the file, is missing or unreadable."""
    value = (read_h5_attrs(path) or {}).get(name)
    return None if value is None else str(value)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]
