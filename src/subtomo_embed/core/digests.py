"""Content fingerprints: what makes a merge stale, whatever the files' times and places.

A results folder is copied (``cp -r``, ``rsync`` without ``-t``: new modification times) and moved
(another path, another file system); what was made from it must stay valid there. So a file's
identity here is its name, its size and a hash of its bytes (:func:`io.file_digest`), never its
modification time. Hashing reads every byte once; :class:`DigestCache` keeps each file's digest in
``.content_digests.json`` beside the outputs and gives it back only while the file's size,
modification time, inode and device are those it was hashed with (a copy has new inodes: it is
hashed once more, and gives the same digest). The cache is untrusted input like any file: a
malformed entry is ignored, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from . import io
from .errors import InputDataError, SubtomoError

log = logging.getLogger(__name__)

CACHE_NAME = ".content_digests.json"
MAX_CACHE_BYTES = 16 * 2**20  # a larger cache file is ignored (and rewritten)


class DigestCache:
    """Digests of files' bytes, reused while a file's size, time, inode and device are unchanged."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list] = _read_entries(path) if path is not None else {}
        self._used: set[str] = set()
        self._changed = False

    def digest(self, file: Path) -> str:
        """The hash of ``file``'s bytes (an :class:`InputDataError` naming it when it cannot be read)."""
        file = Path(file).absolute()
        try:
            st = file.stat()
        except OSError as err:
            raise InputDataError(f"cannot read the file ({err.strerror})", file) from None
        stamp = [int(st.st_size), int(st.st_mtime_ns), int(st.st_ino), int(st.st_dev)]
        entry = self._entries.get(str(file))
        self._used.add(str(file))
        if entry is not None and entry[:4] == stamp:
            return str(entry[4])
        try:
            digest = io.file_digest(file)
        except OSError as err:
            raise InputDataError(f"cannot read the file ({err.strerror})", file) from None
        self._entries[str(file)] = [*stamp, digest]
        self._changed = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically) if it changed, with the digests of the files this run used
        only (a removed or copied-away file's entry goes); a folder that cannot take it is no error."""
        unused = set(self._entries) - self._used
        if self.path is None or not (self._changed or unused) or not self.path.parent.is_dir():
            return
        kept = {name: entry for name, entry in self._entries.items() if name in self._used}
        try:
            with io.atomic_output(self.path) as tmp:
                tmp.write_text(json.dumps(kept, separators=(",", ":")))
            self._changed = False
        except (OSError, SubtomoError) as err:
            log.info("content digests not cached in %s (%s)", self.path.parent, err)


def _read_entries(path: Path) -> dict[str, list]:
    """The cache's well-formed entries: path -> [size, mtime_ns, inode, device, hex digest]."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_CACHE_BYTES:
            return {}
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        name: entry
        for name, entry in raw.items()
        if isinstance(entry, list)
        and len(entry) == 5
        and all(isinstance(v, int) and not isinstance(v, bool) for v in entry[:4])
        and isinstance(entry[4], str)
        and len(entry[4]) <= 64
        and all(c in "0123456789abcdef" for c in entry[4])
    }


def content_fingerprint(files: Sequence[Path], cache: DigestCache, **settings) -> str:
    """A hash of the files' names, sizes and contents and of ``settings``: equal means the output
    made from them is current, wherever the files were copied or moved to and whenever."""
    records = []
    for p in files:
        path = Path(p)
        digest = cache.digest(path)  # first: an unreadable file is an error naming it
        records.append([path.name, int(os.stat(path).st_size), digest])
    payload = json.dumps({"files": records, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()
