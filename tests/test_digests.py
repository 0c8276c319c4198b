"""core.digests: a fingerprint of file contents (never times), its digests cached while a file is unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from subtomo_embed.core import digests as D


def test_fingerprint_follows_contents_not_times_or_places(tmp_path):
    a = tmp_path / "a" / "TS_01_embeds.h5"
    a.parent.mkdir()
    a.write_bytes(b"\x00" * 1000)
    key = D.content_fingerprint([a], D.DigestCache(None), stems=["TS_01"])
    b = tmp_path / "b" / "TS_01_embeds.h5"
    b.parent.mkdir()
    shutil.copyfile(a, b)  # a copy, new time, new inode, another folder
    os.utime(b, (1, 1))
    assert D.content_fingerprint([b], D.DigestCache(None), stems=["TS_01"]) == key
    b.write_bytes(b"\x00" * 999 + b"\x01")  # one byte changed, same size
    assert D.content_fingerprint([b], D.DigestCache(None), stems=["TS_01"]) != key
    assert D.content_fingerprint([a], D.DigestCache(None), stems=["TS_02"]) != key


def test_a_cached_digest_is_used_only_while_the_file_is_unchanged(tmp_path):
    f = tmp_path / "x.h5"
    f.write_bytes(b"abc" * 100)
    cache_path = tmp_path / D.CACHE_NAME
    cache = D.DigestCache(cache_path)
    true = cache.digest(f)
    assert true == hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    cache.save()
    entries = json.loads(cache_path.read_text())
    entries[str(f)][4] = "0123abcd"  # a cache that lies, with the file's own stamp
    cache_path.write_text(json.dumps(entries))
    assert D.DigestCache(cache_path).digest(f) == "0123abcd"  # reused: the file was not read again
    os.utime(f, ns=(1, f.stat().st_mtime_ns + 1))  # touched: read again
    assert D.DigestCache(cache_path).digest(f) == true


def test_a_malformed_cache_is_ignored(tmp_path):
    f = tmp_path / "x.h5"
    f.write_bytes(b"abc")
    cache_path = tmp_path / D.CACHE_NAME
    true = D.DigestCache(None).digest(f)
    st = f.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
    bad_digest = json.dumps({str(f): [*stamp, "../../x"]})  # the file's own stamp, a digest that is no hex
    for text in (
        "not json",
        "[1, 2]",
        bad_digest,
        json.dumps({str(f): [*stamp[:3], True, true]}),
        json.dumps({str(f): "x"}),
    ):
        cache_path.write_text(text)
        assert D.DigestCache(cache_path).digest(f) == true
