"""The ``subtomo-embed`` command line: one typer app, with CryoSiam's command names as aliases.

Commands are thin: they parse options, load the config once and call a stage function.
Heavy imports (torch, monai, umap) happen inside the stages, so ``--help`` is instant.
"""

from __future__ import annotations

import typer

from . import __version__

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
    from .commands import embedding

    embedding.register(app)
    for name in ("analysis", "demo", "centers"):
        try:
            module = __import__(f"subtomo_embed.commands.{name}", fromlist=["register"])
        except ModuleNotFoundError as err:
            if err.name != f"subtomo_embed.commands.{name}":
                raise
            continue
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="subtomo-embed")


if __name__ == "__main__":
    main()
