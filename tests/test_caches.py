"""numba's and matplotlib's cache folders at CLI start-up (src/subtomo_embed/caches.py). The images run
them under Docker's and Apptainer's conditions (tests/containers/test_images.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from subtomo_embed.caches import is_own_writable, private_folder, use_writable_caches

OTHER_UID = 54321


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """A private temp folder (tempfile's too) with a sticky, world-writable ``shared`` folder in it, like /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return tmp_path


def test_own_folders_and_new_folders_in_a_sticky_folder_are_kept(tmp):
    own = tmp / "shared" / "mine"
    own.mkdir(mode=0o755)
    env = {"NUMBA_CACHE_DIR": str(own / "numba"), "MPLCONFIGDIR": str(tmp / "shared" / "new" / "matplotlib")}
    use_writable_caches(env)
    assert env == {"NUMBA_CACHE_DIR": str(own / "numba"), "MPLCONFIGDIR": str(tmp / "shared" / "new" / "matplotlib")}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_folder_of_another_user_in_the_shared_tmp_is_replaced_by_a_private_one(tmp):
    theirs = tmp / "shared" / "subtomo-embed"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    env = {"NUMBA_CACHE_DIR": str(theirs / "numba"), "MPLCONFIGDIR": str(theirs / "matplotlib")}
    use_writable_caches(env)
    private = tmp / f"subtomo-embed-{os.getuid()}"
    assert env == {"NUMBA_CACHE_DIR": str(private / "numba_cache_dir"), "MPLCONFIGDIR": str(private / "mplconfigdir")}
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_folder_others_can_write_is_not_used(tmp):
    open_folder = tmp / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)  # not sticky: anyone could swap the cache for one of theirs
    assert not is_own_writable(open_folder / "numba")
    assert not is_own_writable(tmp / "shared")  # the shared folder itself, as the cache
    assert is_own_writable(tmp / "shared" / "numba")


def test_a_private_folder_name_someone_else_holds_is_not_reused(tmp):
    squatted = tmp / f"subtomo-embed-{os.getuid()}"
    squatted.mkdir()
    squatted.chmod(0o777)
    fresh = private_folder()
    assert fresh != squatted and fresh.parent == tmp and stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert private_folder() != fresh  # each process that cannot have the shared name gets its own


def test_unset_variables_and_an_unwritable_home_get_a_private_folder(tmp_path):
    """A child process as a user who cannot write its HOME (nobody, when the tests run as root)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    tmp_path.chmod(0o755)
    caches = Path(__file__).parents[1] / "src" / "subtomo_embed" / "caches.py"  # stdlib only: any python runs it
    code = (
        f"import importlib.util as u, os; s = u.spec_from_file_location('caches', {str(caches)!r}); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); m.use_writable_caches(os.environ); "
        "print(os.environ['NUMBA_CACHE_DIR'], os.environ['MPLCONFIGDIR'])"
    )
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    if os.geteuid() == 0:  # nobody, with the system's python (the venv's may lie in root's home)
        python, setuid = "/usr/bin/python3", lambda: os.setuid(65534)
        if not os.access(caches, os.R_OK) or not Path(python).is_file():
            pytest.skip("needs /usr/bin/python3 and a checkout that other users can read")
    else:
        python, setuid = sys.executable, None
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, preexec_fn=setuid)
    assert proc.returncode == 0, proc.stderr
    numba, matplotlib = (Path(p) for p in proc.stdout.split())
    uid = 65534 if os.geteuid() == 0 else os.getuid()
    assert numba.parent == matplotlib.parent and numba.parent.name.startswith(f"subtomo-embed-{uid}")
    assert numba.parent.stat().st_uid == uid
