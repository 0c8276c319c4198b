"""Commands of the per-tomogram stage: ``predict`` (= ``extract`` + ``embed`` in one process)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigFile, Debug, Filename, Overrides, Quiet, configured, exit_if_failed

Device = Annotated[
    str,
    typer.Option("--device", help="auto (parameters.gpu_devices, CPU fallback), cpu, cuda or cuda:N."),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo tomograms whose outputs are already complete.")]
KeepGoing = Annotated[bool, typer.Option("--keep-going", help="Report a failing tomogram and go on with the others.")]
OutputDir = Annotated[Optional[Path], typer.Option("--output-dir", help="Where to write (default: prediction_folder).")]


def predict(
    config_file: ConfigFile = None,
    filename: Filename = None,
    overrides: Overrides = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    keep_going: KeepGoing = False,
    skip_missing_masks: Annotated[
        bool, typer.Option("--skip-missing-masks", help="Skip tomograms without a mask instead of failing.")
    ] = False,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Embed every instance of every tomogram (CryoSiam's simsiam_embeddings_predict)."""
    skip = ["skip_missing_masks=true"] if skip_missing_masks else []
    with configured(config_file, (overrides or []) + skip, debug, quiet) as cfg:
        from ..stages.embedding import run_predict

        summary = run_predict(cfg, filename, device, overwrite, keep_going)
    exit_if_failed(summary)


def predict_centers(
    config_file: ConfigFile = None,
    filename: Filename = None,
    overrides: Overrides = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    keep_going: KeepGoing = False,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Embed a box of centers_patch_size around every pick in centers_file (STAR, CSV or copick JSON;
    CryoSiam's simsiam_embeddings_from_centers_predict)."""
    with configured(config_file, overrides, debug, quiet) as cfg:
        from ..stages.embedding import run_predict

        summary = run_predict(cfg, filename, device, overwrite, keep_going, centers=True)
    exit_if_failed(summary)


def extract(
    config_file: ConfigFile = None,
    filename: Filename = None,
    overrides: Overrides = None,
    tomogram: Annotated[
        Optional[Path], typer.Option("--tomogram", help="A tomogram (MRC), instead of data_folder.")
    ] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="Its instance mask (.h5 or MRC).")] = None,
    regions: Annotated[
        Optional[Path], typer.Option("--regions", help="CryoSiam's <stem>_instance_regions.csv for the boxes.")
    ] = None,
    output_dir: OutputDir = None,
    overwrite: Overwrite = False,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Cut the masked, normalized patch of every instance into <stem>_patches.h5 (CPU step)."""
    with configured(config_file, overrides, debug, quiet) as cfg:
        from ..stages.extraction import run_extract

        run_extract(cfg, tomogram, mask, regions, output_dir, filename, overwrite)


def embed(
    config_file: ConfigFile = None,
    filename: Filename = None,
    overrides: Overrides = None,
    patches: Annotated[
        Optional[list[Path]], typer.Option("--patches", help="<stem>_patches.h5 file(s) from `extract`.")
    ] = None,
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", help="The model checkpoint (default: trained_model).")
    ] = None,
    output_dir: OutputDir = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    keep_going: KeepGoing = False,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Embed <stem>_patches.h5 files with the checkpoint; write CryoSiam's per-tomogram outputs (GPU step)."""
    with configured(config_file, overrides, debug, quiet) as cfg:
        from ..stages.embedding import run_embed

        summary = run_embed(cfg, patches, checkpoint, output_dir, device, filename, overwrite, keep_going)
    exit_if_failed(summary)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("simsiam_embeddings_predict", hidden=True)(predict)
    app.command("predict-centers")(predict_centers)
    app.command("simsiam_embeddings_from_centers_predict", hidden=True)(predict_centers)
    app.command("extract")(extract)
    app.command("embed")(embed)
