"""The ``subtomo-embed`` command line: one typer app, with CryoSiam's command names as aliases.

Commands are thin: they parse options, load the config once and call a stage function.
Heavy imports (torch, monai, umap) happen inside the stages, so ``--help`` is instant.
"""

from __future__ import annotations

import os

import typer

from . import __version__
from .caches import use_writable_caches

app = typer.Typer(
    name="subtomo-embed",
    help="CryoSiam-compatible subtomogram embeddings: extract, embed, merge, visualize and cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"subtomo-embed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def _register_all() -> None:
    from .commands import analysis, demo, embedding, export, training

    for module in (embedding, analysis, export, demo, training):
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """The process entry point (console script and ``bin/``): run the command, then end the process.

    The command has closed every output by the time it returns, so after Python's exit
    handlers (logging, multiprocessing, ...) the process ends without tearing down its
    modules, which takes SciPy and NumPy ~0.2 s. For use inside a Python session, call ``app``.
    Before any library is imported, numba's and matplotlib's caches get a writable folder (caches.py).
    """
    use_writable_caches(os.environ)
    try:
        app(args=argv, prog_name="subtomo-embed")
    except SystemExit as done:
        _end_process(done.code)
    _end_process(0)


def _end_process(code) -> None:
    import atexit
    import os
    import sys
    import threading

    if isinstance(code, str):  # as Python does for SystemExit("message")
        print(code, file=sys.stderr)
        code = 1
    code = 0 if code is None else int(code)
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)  # let Python wait for them, as it always does
    # Nothing is lost by skipping the teardown: every output is complete before it is renamed into
    # place (io.atomic_output), the exit handlers flush and close the log files (logging.shutdown),
    # and the standard streams are flushed below (tests/test_cli_exit.py runs real processes).
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
