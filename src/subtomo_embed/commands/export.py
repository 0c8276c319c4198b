"""``export-copick``: a clustered STAR file of ours as a copick project (:mod:`..core.copick_export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import Debug, Quiet, guarded, setup_logging


def export_copick(
    star: Annotated[
        Path,
        typer.Argument(
            help="A clustered STAR file: <m>_particles.star, <m>_cluster_<c>_particles.star, or a selection "
            "saved by the explorer or napari.",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The copick project's folder (created).")],
    user: Annotated[str, typer.Option("--user", help="copick user id of the picks.")] = "subtomo-embed",
    session: Annotated[str, typer.Option("--session", help="copick session id ('0': made by a tool).")] = "0",
    prefix: Annotated[str, typer.Option("--prefix", help="Object names: <prefix>-<cluster id>.")] = "cluster",
    pixel_size: Annotated[
        Optional[float],
        typer.Option(
            "--pixel-size", help="Voxel size of the coordinates in Å (default: the file's rlnImagePixelSize)."
        ),
    ] = None,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Write the clusters of a STAR file as copick picks: one pickable object per cluster (rlnClass),
    one run per tomogram (rlnTomoName), points in Å, and the project's copick_config.json."""
    setup_logging(quiet)
    with guarded(debug):
        from ..core.copick_export import write_copick
        from ..core.errors import ConfigError
        from ..core.star import read_particles

        particles = read_particles(star)
        try:
            done = write_copick(
                particles, output, user=user, session=session, prefix=prefix, pixel_size=pixel_size, source=star
            )
        except ValueError as err:  # a name copick refuses, a pixel size that is not one
            raise ConfigError(str(err)) from None
        sizes = ", ".join(f"{name}: {n}" for name, n in done.counts.items())
        typer.echo(f"wrote {len(done.picks)} pick files ({sizes}) and {done.config}")


def register(app: typer.Typer) -> None:
    app.command("export-copick")(export_copick)
