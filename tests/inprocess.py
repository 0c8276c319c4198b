"""Run ``subtomo-embed`` inside the test process: the same command line and the same exit codes and
messages, without a new interpreter's start-up (importing torch alone takes seconds). For tests where
a separate process is not the point; tests of the executables themselves run them as processes."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from subtomo_embed.cli import app


def run_cli(args: list, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``subtomo-embed ARGS`` (the leading ``subtomo-embed`` may be given); a CompletedProcess."""
    args = [str(a) for a in args]
    if args and args[0] == "subtomo-embed":
        args = args[1:]
    before = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(before)
        logger = logging.getLogger("subtomo_embed")  # the command's handlers write to the runner's streams
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
    return subprocess.CompletedProcess(["subtomo-embed", *args], result.exit_code, result.stdout, result.stderr)
