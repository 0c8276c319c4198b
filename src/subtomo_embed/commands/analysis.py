"""Commands of the global steps: ``merge``, ``visualize``, ``kmeans``, ``spectral``.

CryoSiam's names (``simsiam_visualize_embeddings``, ``simsiam_embeddings_kmeans_clustering``,
``simsiam_embeddings_spectral_clustering``) are hidden aliases. ``visualize``, ``kmeans`` and
``spectral`` merge first when the input folder holds per-tomogram embeddings.
"""

from __future__ import annotations

import contextlib
from importlib import import_module
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigFile, Debug, Overrides, Quiet, configured

InputDir = Annotated[
    Optional[Path],
    typer.Option(
        "--input-dir",
        help="Folder with <stem>_embeds.h5, _instance_labels.h5, _instance_regions.csv, or a merged "
        "embeddings.h5 (default: prediction_folder).",
    ),
]
OutputDir = Annotated[
    Optional[Path], typer.Option("--output-dir", help="Where merged and cluster files go (default: prediction_folder).")
]
VisDir = Annotated[
    Optional[Path],
    typer.Option(
        "--vis-dir",
        help="Where figures and coordinates go (default: visualization.prediction_folder, else <output-dir>/vis).",
    ),
]


@contextlib.contextmanager
def _with_folders(config_file, overrides, folders: tuple[Path | None, Path | None, Path | None], debug, quiet):
    """A command's body with its config and its folders (input, output, vis; see :func:`configured`)."""
    with configured(config_file, overrides, debug, quiet) as cfg:
        from ..stages.context import resolve_folders

        yield cfg, resolve_folders(cfg, *folders)


def merge(
    config_file: ConfigFile = None,
    overrides: Overrides = None,
    input_dir: InputDir = None,
    output_dir: OutputDir = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the merge is up to date.")] = False,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Merge every tomogram's embeddings into embeddings.h5 and the table embeddings_table.csv."""
    with _with_folders(config_file, overrides, (input_dir, output_dir, None), debug, quiet) as (cfg, folders):
        from ..stages.merging import run_merge

        run_merge(cfg, folders, force=force)


def _step(stage: str, function: str, doc: str):
    """A command that runs ``stages.<stage>.<function>(cfg, folders)`` (imported when it runs)."""

    def command(
        config_file: ConfigFile = None,
        overrides: Overrides = None,
        input_dir: InputDir = None,
        output_dir: OutputDir = None,
        vis_dir: VisDir = None,
        debug: Debug = False,
        quiet: Quiet = False,
    ) -> None:
        with _with_folders(config_file, overrides, (input_dir, output_dir, vis_dir), debug, quiet) as (cfg, folders):
            run = getattr(import_module(f"subtomo_embed.stages.{stage}"), function)
            run(cfg, folders)

    command.__doc__ = doc
    return command


visualize = _step(
    "visualize",
    "run_visualize",
    "UMAP/PCA projections (all tomograms and each tomogram), coordinates CSV, PNGs and distance maps.",
)
kmeans = _step(
    "clustering",
    "run_kmeans",
    "KMeans clustering of the embeddings (clustering_kmeans.num_clusters; 0-based cluster ids).",
)
spectral = _step(
    "clustering",
    "run_spectral",
    "Spectral clustering on a sparse k-NN graph (clustering_spectral; 1-based cluster ids as CryoSiam).",
)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
    app.command("visualize")(visualize)
    app.command("kmeans")(kmeans)
    app.command("spectral")(spectral)
    app.command("simsiam_visualize_embeddings", hidden=True)(visualize)
    app.command("simsiam_embeddings_kmeans_clustering", hidden=True)(kmeans)
    app.command("simsiam_embeddings_spectral_clustering", hidden=True)(spectral)
