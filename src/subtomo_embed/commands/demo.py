"""Commands of the embedded default: ``simulate``, ``train``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigFile, Debug, Overrides, Quiet, guarded, setup_logging


def simulate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for data/, masks/ and truth.csv.")],
    tomograms: Annotated[int, typer.Option(help="Number of tomograms.")] = 2,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Tomogram shape z y x (voxels).")] = (64, 192, 192),
    particles: Annotated[int, typer.Option(help="Particles per tomogram.")] = 70,
    snr: Annotated[float, typer.Option(help="Signal-to-noise ratio (variance ratio, unit contrast).")] = 3.0,
    wedge: Annotated[float, typer.Option(help="Missing wedge: tilt range ±degrees (0 = none).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Simulate tomograms of five particle shapes, with CryoSiam-layout instance masks and a truth table."""
    setup_logging(quiet)
    with guarded(debug):
        from ..stages.demo import run_simulate

        run_simulate(output, tomograms, shape, particles, snr, wedge or None, seed)


def train(
    config_file: ConfigFile = None,
    overrides: Overrides = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (resumed if it exists).")] = Path(
        "training/last.ckpt"),
    steps: Annotated[Optional[int], typer.Option(help="Total steps (default hyper_parameters.max_steps).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    restart: Annotated[bool, typer.Option("--restart", help="Start from scratch even if the checkpoint exists.")] = False,
    export: Annotated[Optional[Path], typer.Option(help="Also write a copy without optimizer state here.")] = None,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """SimSiam training on simulated particles, patches cut exactly as predict cuts them (resumable)."""
    setup_logging(quiet)
    with guarded(debug):
        from ..core.config import load_config
        from ..core.train import ViewSettings
        from ..core.train import train as run_train
        from ..stages.demo import DEMO_CONFIG, export_model
        from ..stages.embedding import normalization, patch_size

        cfg = load_config(config_file or DEMO_CONFIG, overrides)
        settings = ViewSettings(patch_size(cfg), cfg.masking_type, cfg.expand_labels, normalization(cfg))
        ckpt = run_train(cfg.model_dump(by_alias=True), cfg.parameters.network.model_dump(), settings, output,
                         steps or cfg.hyper_parameters.max_steps, cfg.hyper_parameters.batch_size,
                         cfg.hyper_parameters.learning_rate, cfg.seed, device, resume=not restart,
                         progress=not quiet)
        if export:
            export_model(ckpt, export)


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where everything goes.")] = Path("demo_output"),
    retrain: Annotated[bool, typer.Option("--retrain", help="Train a new model first instead of the committed one.")] = False,
    steps: Annotated[Optional[int], typer.Option(help="Training steps with --retrain.")] = None,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """The whole job on simulated data: simulate, embed, cluster, draw, and score against the truth."""
    setup_logging(quiet, output.absolute() / "subtomo-embed.log")
    with guarded(debug):
        from ..stages.demo import run_demo

        run_demo(output, retrain, steps)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
    app.command("train")(train)
    app.command("demo")(demo)
