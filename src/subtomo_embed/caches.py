"""Writable cache folders for numba and matplotlib, whatever HOME is.

umap and pynndescent compile numba functions with ``cache=True``: with no writable cache folder numba
raises "cannot cache function ... no locator available" at import. matplotlib writes its font cache
under its config folder. Both default to folders under HOME, which is unwritable where Nextflow starts
containers (Docker: ``-u uid:gid`` with HOME=/; Apptainer: ``--no-home`` and a read-only image). The
images set ``NUMBA_CACHE_DIR`` and ``MPLCONFIGDIR`` under /tmp; on a shared machine another user may
already own those folders (Apptainer binds the host's /tmp). So at start-up the CLI keeps each folder
only where it is this user's to write, else points the variable at a private folder of this user's.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

# variable -> its library's default folder under HOME (XDG folders when set)
CACHE_VARIABLES = {"NUMBA_CACHE_DIR": ("XDG_CACHE_HOME", ".cache"), "MPLCONFIGDIR": ("XDG_CONFIG_HOME", ".config")}


def use_writable_caches(environ: MutableMapping[str, str]) -> None:
    """Point NUMBA_CACHE_DIR and MPLCONFIGDIR at a private folder where their folder is not this user's."""
    for variable, (xdg, under_home) in CACHE_VARIABLES.items():
        folder = environ.get(variable) or environ.get(xdg) or os.path.join(environ.get("HOME") or "/", under_home)
        if not is_own_writable(Path(folder)):
            environ[variable] = str(private_folder() / variable.lower())


def is_own_writable(folder: Path) -> bool:
    """Whether ``folder`` (or, while missing, the folder that would hold it) is writable by this user and,
    up to a sticky folder such as /tmp, neither owned nor writable by another user."""
    try:
        return _is_own_writable(folder.absolute())
    except OSError:  # a folder on the way this user may not enter
        return False


def _is_own_writable(folder: Path) -> bool:
    path = folder
    while not path.exists() and path != path.parent:
        path = path.parent
    if not (path.is_dir() and os.access(path, os.W_OK | os.X_OK)):
        return False
    for part in (path, *path.parents):
        info = part.stat()
        if info.st_mode & stat.S_ISVTX and part != folder:
            return True  # others may write in a sticky folder (/tmp), but not rename what is ours there
        if info.st_uid not in (os.getuid(), 0) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def private_folder() -> Path:
    """``<tmp>/subtomo-embed-<uid>``, made mode 700, or a fresh one where that name is someone else's."""
    folder = Path(tempfile.gettempdir()) / f"subtomo-embed-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            folder = Path(tempfile.mkdtemp(prefix=f"subtomo-embed-{os.getuid()}-"))
    return folder
