"""What every command shares: the config options, logging, and turning errors into exit codes.

A command body runs inside :func:`guarded`: a :class:`SubtomoError` becomes one line on stderr
(``error: <file>: <problem>``) and the error class's exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import ConfigError, ResourceError, SubtomoError

log = logging.getLogger("subtomo_embed")

ConfigFile = Annotated[
    Optional[Path],
    typer.Option("--config_file", "--config-file", "-c", help="The YAML config (CryoSiam's layout)."),
]
Overrides = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key: --set key.sub=value (YAML value). Repeatable."),
]
Filename = Annotated[
    Optional[str],
    typer.Option("--filename", help="Process only this tomogram (a file name in data_folder)."),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


def setup_logging(quiet: bool = False, log_file: Path | None = None) -> None:
    level = logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("subtomo_embed")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    root.propagate = False
    if log_file is not None:
        root.addHandler(_log_file_handler(log_file))


def _log_file_handler(log_file: Path) -> logging.Handler:
    """A handler appending to ``log_file`` (in ``log_dir``); a log_dir that is a file or cannot be
    written stops the command rather than losing the log silently."""
    folder = log_file.parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError("log_dir is a file, not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    except OSError as err:
        raise ResourceError(f"cannot write the log file in log_dir ({err.strerror or err})", log_file) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    return handler


@contextlib.contextmanager
def guarded(debug: bool = False):
    """Run a command body; expected failures print one line and exit with their code."""
    try:
        yield
    except SubtomoError as err:
        if debug:
            raise
        typer.echo(f"{err.kind}: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except MemoryError:
        if debug:
            raise
        oom = ResourceError("out of memory; reduce hyper_parameters.batch_size or the number of tomograms at once")
        typer.echo(f"{oom.kind}: {oom}", err=True)
        raise typer.Exit(oom.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
