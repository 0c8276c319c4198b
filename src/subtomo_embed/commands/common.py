"""What every command shares: the config options, logging, and turning errors into exit codes.

A command body runs inside :func:`guarded`: a :class:`SubtomoError` becomes one line on stderr
(``error: <file>: <problem>``) and the error class's exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..core import layout
from ..core.errors import ConfigError, ResourceError, SubtomoError

if TYPE_CHECKING:
    from ..core.config import Config

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
    console.addFilter(lambda record: not getattr(record, "log_file_only", False))  # printed by guarded already
    root.addHandler(console)
    root.propagate = False
    if log_file is not None:
        root.addHandler(_log_file_handler(log_file))


def log_into(quiet: bool, log_dir: Path | None) -> None:
    """Log to the terminal and, with ``log_dir``, into its log file (``subtomo-embed.log``)."""
    setup_logging(quiet, layout.log_file(log_dir) if log_dir else None)


@contextlib.contextmanager
def configured(config_file: Path | None, overrides: list[str] | None, debug: bool, quiet: bool) -> Iterator[Config]:
    """A command's body with its config: logging set up (into ``log_dir`` once the config names it),
    the config loaded, and errors turned into exit codes (:func:`guarded`)."""
    setup_logging(quiet)
    with guarded(debug):
        from ..core.config import load_config

        cfg = load_config(config_file, overrides)
        log_into(quiet, cfg.optional_path("log_dir"))
        yield cfg


def exit_if_failed(summary) -> None:
    """Exit code 4 when some tomograms failed (``--keep-going`` went on without them)."""
    if summary.failed:
        raise typer.Exit(4)


def _log_file_handler(log_file: Path) -> logging.Handler:
    """A handler appending to ``log_file`` (in ``log_dir``); a log_dir that is a file or cannot be
    written stops the command rather than losing the log silently. The log is never written
    through a link or into anything but a plain file (a planted link would send it elsewhere)."""
    folder = log_file.parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError("log_dir is a file, not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = _NoFollowFileHandler(log_file)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK) or log_file.is_symlink():
            raise ResourceError(
                "the log file is a symbolic link; remove it (the log is not written through links)", log_file
            ) from None
        raise ResourceError(f"cannot write the log file in log_dir ({err.strerror or err})", log_file) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    return handler


class _NoFollowFileHandler(logging.FileHandler):
    """A FileHandler that opens its file with ``O_NOFOLLOW`` and only if it is a plain file."""

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.baseFilename, flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "the log file is not a plain file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


def _log_error(message: str) -> None:
    """The one-line error into the log file too (the terminal has it from :func:`guarded`)."""
    log.error(message, extra={"log_file_only": True})


@contextlib.contextmanager
def guarded(debug: bool = False):
    """Run a command body; expected failures print one line and exit with their code."""
    try:
        yield
    except SubtomoError as err:
        _log_error(f"{err.kind}: {err}")
        if debug:
            raise
        typer.echo(f"{err.kind}: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except MemoryError:
        if debug:
            raise
        oom = ResourceError("out of memory; reduce hyper_parameters.batch_size or the number of tomograms at once")
        _log_error(f"{oom.kind}: {oom}")
        typer.echo(f"{oom.kind}: {oom}", err=True)
        raise typer.Exit(oom.exit_code) from None
    except KeyboardInterrupt as err:  # Ctrl-C (130), or SIGTERM where a command handles it (errors.Terminated: 143)
        what = getattr(err, "kind", "interrupted")
        _log_error(what)
        typer.echo(what, err=True)
        raise typer.Exit(getattr(err, "exit_code", 130)) from None
