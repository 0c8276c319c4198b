"""Commands of the embedded default: ``simulate``, ``evaluate``, ``demo`` (``train``: :mod:`.training`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigFile, Debug, Quiet, guarded, log_into, setup_logging
from .training import Device


class Kind(str, Enum):
    shapes = "shapes"
    assemblies = "assemblies"


def simulate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for data/, masks/ and truth.csv.")],
    tomograms: Annotated[int, typer.Option(min=1, help="Number of tomograms.")] = 2,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Tomogram shape z y x (voxels).")] = (64, 192, 192),
    particles: Annotated[int, typer.Option(min=1, help="Particles per tomogram (classes balanced).")] = 70,
    snr: Annotated[float, typer.Option(min=1e-6, help="Signal-to-noise ratio (variance ratio, unit contrast).")] = 3.0,
    wedge: Annotated[float, typer.Option(min=0, max=89, help="Missing wedge: tilt range ±degrees (0 = none).")] = 0.0,
    min_size: Annotated[float, typer.Option(help="Shapes: smallest particle radius (voxels), every class.")] = 4.0,
    max_size: Annotated[float, typer.Option(help="Shapes: largest particle radius (voxels), every class.")] = 7.0,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    kind: Annotated[
        Kind,
        typer.Option(
            help="shapes: five envelope shapes (sphere, shell, rod, torus, dumbbell). assemblies: sub-unit "
            "assemblies that share one envelope and one mass and differ in arrangement (band-passed)."
        ),
    ] = Kind.shapes,
    classes: Annotated[int, typer.Option("--classes", min=2, help="Assemblies: number of classes.")] = 5,
    class_seed: Annotated[
        int, typer.Option(help="Assemblies: seed of the class definitions (another seed, other classes).")
    ] = 0,
    min_diameter: Annotated[
        float, typer.Option(help="Assemblies: the class set's diameter is drawn from here...")
    ] = 12.0,
    max_diameter: Annotated[float, typer.Option(help="...to here (voxels).")] = 24.0,
    membrane: Annotated[bool, typer.Option("--membrane", help="Assemblies: each on a slab of membrane.")] = False,
    structures: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--structures",
            help="Real molecules instead: PDB/mmCIF files (.gz, .bz2 too) or folders of them, one class per file "
            "(named by it); repeatable. Each is its biological assembly 1, first model, without hydrogens or waters.",
        ),
    ] = None,
    voxel_size: Annotated[float, typer.Option(help="Structures: voxel size of the maps and tomograms (Å).")] = 5.0,
    resolution: Annotated[
        float, typer.Option(help="Structures: resolution of the maps (Å; Gaussian sigma 0.225 × it).")
    ] = 20.0,
    bandpass: Annotated[
        bool, typer.Option("--bandpass", help="Structures: a CTF-like band-pass over the tomogram, as assemblies get.")
    ] = False,
    waters: Annotated[bool, typer.Option("--waters", help="Structures: keep the files' waters.")] = False,
    mask_error: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Structures: a segmentation's error in size: each mask encloses the molecule's volume times a "
            "factor drawn log-uniformly in [1/(1+E), 1+E] (0: the molecule's volume).",
        ),
    ] = 0.0,
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Simulate tomograms of particles of known classes with CryoSiam-layout instance masks and a truth table.

    --kind shapes (default): five envelope shapes. --kind assemblies: structured assemblies (rings, double
    rings, point-group and helical arrangements of sub-units) drawn by --class-seed; classes.json holds their
    definitions. --structures: density maps of real molecules from PDB/mmCIF files at --voxel-size and
    --resolution (atoms weighted by atomic number); classes.json describes each."""
    setup_logging(quiet)
    with guarded(debug):
        from ..core.errors import ConfigError
        from ..stages.demo import Structure, run_simulate
        from ..stages.structures import Molecules

        if structures and kind is Kind.assemblies:
            raise ConfigError("--structures and --kind assemblies are two kinds of classes: choose one")
        structure = (
            Structure(classes, class_seed, (min_diameter, max_diameter), membrane) if kind is Kind.assemblies else None
        )
        molecules = (
            Molecules(tuple(structures), voxel_size, resolution, bandpass, waters, mask_error) if structures else None
        )
        run_simulate(
            output,
            tomograms,
            shape,
            particles,
            snr,
            wedge or None,
            seed,
            size_range=(min_size, max_size),
            structure=structure,
            molecules=molecules,
        )


def evaluate(
    data: Annotated[Path, typer.Option("--data", help="A folder made by `subtomo-embed simulate`.")],
    model: Annotated[
        Optional[Path], typer.Option("--model", help="Checkpoint (default: the config's trained_model).")
    ] = None,
    config_file: ConfigFile = None,
    device: Device = "auto",
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """Embed a simulated dataset with `predict` and print the ARI of KMeans and spectral clusters
    against the true classes, for the model, an untrained twin, the radial descriptor (radial profile +
    inertia) and the spherical-harmonic descriptor (rotation-invariant power per degree on radial shells)."""
    setup_logging(quiet)
    with guarded(debug):
        from ..stages.demo import format_table, run_evaluate

        scores = run_evaluate(data, model, config_file, device)
        typer.echo("\n".join(["Adjusted Rand index against the true classes:"] + format_table({str(data): scores})))


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where everything goes.")] = Path("demo_output"),
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train a new model first instead of the committed one.")
    ] = False,
    steps: Annotated[Optional[int], typer.Option(help="Training steps with --retrain (default: the config's).")] = None,
    model: Annotated[
        Optional[Path], typer.Option("--model", help="Use this checkpoint instead of the committed one.")
    ] = None,
    tomograms: Annotated[int, typer.Option(min=1, help="Simulated tomograms per difficulty.")] = 2,
    particles: Annotated[int, typer.Option(min=20, help="Particles per tomogram.")] = 70,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Tomogram shape z y x (voxels).")] = (64, 192, 192),
    device: Device = "auto",
    debug: Debug = False,
    quiet: Quiet = False,
) -> None:
    """The whole job on simulated data: simulate, embed, cluster, draw, and score against the truth.

    The committed model and config ship inside the package; --tomograms/--particles/--shape make a
    smaller (quicker) dataset."""
    setup_logging(quiet)
    with guarded(debug):
        log_into(quiet, output.absolute())  # an --output that is a file: one line
        from ..stages.demo import run_demo

        run_demo(
            output, retrain, steps, tomograms=tomograms, particles=particles, shape=shape, model=model, device=device
        )


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
    app.command("evaluate")(evaluate)
    app.command("demo")(demo)
