"""The ``train`` command: SimSiam training on simulated particles, or fine-tuning on the config's own
tomograms (``--from-data``); the work is :mod:`..stages.training`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigFile, Debug, Overrides, Quiet, guarded, log, setup_logging

Device = Annotated[str, typer.Option("--device", help="auto (GPU if there is one), cpu, cuda or cuda:N.")]


def train(
    config_file: ConfigFile = None,
    overrides: Overrides = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (resumed if it exists).")] = Path(
        "training/last.ckpt"
    ),
    steps: Annotated[Optional[int], typer.Option(help="Total steps (default hyper_parameters.max_steps).")] = None,
    device: Device = "auto",
    restart: Annotated[
        bool, typer.Option("--restart", help="Start from scratch even if the checkpoint exists.")
    ] = False,
    time_limit: Annotated[
        Optional[float], typer.Option("--time-limit", help="Stop after this many minutes (saved; run again to go on).")
    ] = None,
    save_every: Annotated[int, typer.Option(min=1, help="Write the checkpoint every this many steps.")] = 25,
    workers: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Processes that make the training pairs (0: one background thread). Default: up to 4 on a GPU, "
            "0 on a CPU. The weights do not depend on it.",
        ),
    ] = None,
    export: Annotated[Optional[Path], typer.Option(help="Also write a copy without optimizer state here.")] = None,
    from_data: Annotated[
        bool,
        typer.Option(
            "--from-data",
            help="Fine-tune on the config's own tomograms + instance masks (data_folder, instances_mask_folder), "
            "or, without masks, their picks (centers_file, centers_patch_size).",
        ),
    ] = False,
    start_from: Annotated[
        Optional[Path],
        typer.Option(
            "--from",
            help="Start from this checkpoint's weights and network (with --from-data the default is trained_model; "
            "without it, a fresh network).",
        ),
    ] = None,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """SimSiam training, patches cut exactly as predict cuts them (resumable).

    By default on simulated particles (envelope shapes; sub-unit assemblies for a share
    hyper_parameters.assembly_fraction of the pairs), from a fresh network or --from's. With --from-data:
    self-supervised fine-tuning of a checkpoint (--from, else the config's trained_model; ours or
    CryoSiam's) on the config's own tomograms and instance masks, two augmented views (rotation,
    noise, wedge, mask dilation, intensity) per real particle.
    Without --config_file the demo's config (package data: subtomo_embed/data/configs/demo.yaml) is used
    for simulated training. The checkpoint is in CryoSiam's layout: `predict` (and CryoSiam) load it as `trained_model`.
    """
    setup_logging(quiet)
    with guarded(debug):
        from ..core.config import load_config
        from ..core.train import Sitting, StartingPoint
        from ..stages.demo import DEMO_CONFIG
        from ..stages.training import export_model, fine_tune_from_config, starting_checkpoint, train_from_config

        # simulated training defaults to the demo's config; fine-tuning to the package defaults + --set
        cfg = load_config(config_file if config_file or from_data else DEMO_CONFIG, overrides)
        if restart and output.exists():
            output.unlink()
        limit = time_limit * 60 if time_limit else None
        sitting = Sitting(save_every=save_every, time_limit=limit, progress=not quiet, workers=workers)
        if from_data:
            ckpt = fine_tune_from_config(cfg, output, start_from, steps, device, sitting)
        else:
            start = StartingPoint(start_from, cfg.contrastive) if start_from is not None else None
            ckpt = train_from_config(cfg, output, steps, device, sitting, starting_point=start)
        if export and from_data:  # averaged with the weights it started from (hyper_parameters.finetuned_share)
            export_model(ckpt, export, starting_checkpoint(cfg, start_from), cfg.hyper_parameters.finetuned_share)
        elif export:
            export_model(ckpt, export)
        elif from_data and cfg.hyper_parameters.finetuned_share < 1.0:
            log.info("give predict an --export copy: its weights are averaged with the starting ones (finetuned_share)")
        typer.echo(f"checkpoint: {ckpt}" + (f", exported: {export}" if export else ""))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
