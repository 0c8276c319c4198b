"""Tests that need a tool outside Python (podman, chromium, napari, Qt) skip with a message on a
user's machine without it. CI sets SUBTOMO_REQUIRE_TOOLS=1 (.ci/run installs every tool), and there
a missing tool fails the test instead: a CI run where such a test skipped must not pass."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("SUBTOMO_REQUIRE_TOOLS") == "1"


def require(available: bool, what: str) -> None:
    """Skip (or, in CI, fail) the calling test unless ``available``; ``what`` says what is missing."""
    if available:
        return
    message = f"{what} (install it to run this test; .ci/run does)"
    if REQUIRED:
        pytest.fail(f"SUBTOMO_REQUIRE_TOOLS=1 and {message}", pytrace=False)
    pytest.skip(message)


def require_executable(name: str) -> str:
    """The path of executable ``name``, or skip/fail as :func:`require` does."""
    path = shutil.which(name)
    require(path is not None, f"`{name}` is not on PATH")
    return str(path)


def require_module(name: str) -> None:
    """Skip/fail unless the Python module ``name`` imports."""
    try:
        __import__(name)
    except Exception as err:  # noqa: BLE001 - any import failure means the tool is unusable here
        require(False, f"Python module `{name}` does not import ({type(err).__name__}: {err})")
