"""The embedded default: simulate a small dataset, embed it, cluster and draw it, score it.

``subtomo-embed demo`` (``make demo``) runs the whole job on one machine with no GPU, no
Nextflow and no internet, with the committed model ``models/demo_simsiam.ckpt`` (made by
``subtomo-embed train``; ``--retrain`` makes a new one first), and ends by printing the
adjusted Rand index (ARI) of KMeans and spectral clusters against the true classes, next to an
untrained network of the same shape and two classical descriptors (radial profile + inertia;
spherical-harmonic power on radial shells, the strong rotation-invariant baseline).

A simulated dataset folder (``subtomo-embed simulate``) holds ``data/<TS>.mrc``,
``masks/<TS>_instance_preds.h5`` (CryoSiam's layout) and ``truth.csv``; ``evaluate`` scores a
model on any such folder (:mod:`.evaluation`). Training the demo's model: :mod:`.training`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import io, layout, volumes
from ..core.config import Config, load_config
from ..core.errors import ConfigError, ResourceError
from ..core.simulate import DEFAULT_SIZE_RANGE, simulate_tomogram
from .evaluation import read_truth, score_dataset
from .structures import Molecules

log = logging.getLogger(__name__)

# the demo's config and model are package data (src/subtomo_embed/data), so an installed wheel has them;
# the package is a regular one on disk, so its resources are plain paths
DATA = Path(str(resources.files("subtomo_embed") / "data"))
DEMO_CONFIG = DATA / "configs" / "demo.yaml"
DEMO_MODEL = DATA / "models" / "demo_simsiam.ckpt"
TRUTH_COLUMNS = ["tomogram", "label", "class", "class_name", "size", "aspect", "z", "y", "x", "snr", "wedge"]


@dataclass(frozen=True)
class Difficulty:
    tag: str
    name: str
    snr: float
    wedge: float | None


EASY = Difficulty("easy", "SNR 3, no wedge", 3.0, None)
HARD = Difficulty("hard", "SNR 1, ±60° wedge", 1.0, 60.0)

ASSEMBLY_COLUMNS = ["class_seed", "family", "subunits", "subunit_radius"]
STRUCTURE_COLUMNS = ["atoms", "copies", "mass_kda"]


@dataclass(frozen=True)
class Structure:
    """A class set of structured assemblies (:func:`..core.assemblies.random_class_set`): ``n_classes``
    drawn from ``class_seed`` (another seed, other classes), one outer diameter drawn in
    ``diameter_range`` voxels, one mass; ``membrane`` puts each particle on a slab of membrane."""

    n_classes: int = 5
    class_seed: int = 0
    diameter_range: tuple[float, float] = (12.0, 24.0)
    membrane: bool = False

    def classes(self):
        from ..core.assemblies import random_class_set

        low, high = self.diameter_range
        if not 0 < low <= high:
            raise ConfigError(f"assembly diameters must satisfy 0 < min <= max, got {low:g} and {high:g}")
        try:
            return random_class_set(self.class_seed, self.n_classes, diameter_range=(low, high), membrane=self.membrane)
        except ValueError as err:
            raise ConfigError(str(err)) from None


# --------------------------------------------------------------------------------------------
# simulate


def run_simulate(
    root: Path,
    n_tomograms: int = 2,
    shape: tuple[int, int, int] = (64, 192, 192),
    n_particles: int = 70,
    snr: float = 3.0,
    wedge: float | None = None,
    seed: int = 0,
    prefix: str = "TS",
    size_range: tuple[float, float] = DEFAULT_SIZE_RANGE,
    structure: Structure | None = None,
    molecules: Molecules | None = None,
) -> pd.DataFrame:
    """Write ``data/<TS>.mrc``, ``masks/<TS>_instance_preds.h5`` and ``truth.csv`` under ``root``.

    ``truth.csv``: one row per particle — tomogram (stem), label (its value in the mask), class,
    class_name, size, aspect, the centre z, y, x in voxels (equal to the mask's centroid), snr, wedge.
    Without ``structure``: the five envelope shapes of :mod:`..core.simulate` (radius in ``size_range``).
    With it: the assemblies of its class set (:mod:`..core.assemblies`), band-passed; truth.csv then
    also holds class_seed, family, subunits and subunit_radius (size is the outer radius), and
    ``classes.json`` the class definitions (sub-unit centres and radius).
    With ``molecules``: atomic structures, one class each (:mod:`.structures`); truth.csv then also
    holds atoms, copies, mass_kda, and ``classes.json`` each structure's assembly, mass and volume;
    the MRC files carry the maps' voxel size.
    """
    from ..core.assemblies import class_definition, simulate_assembly_tomogram

    shape = check_request(shape, n_particles)
    root = Path(root)
    check_disk(root, n_tomograms, shape)
    rng = np.random.default_rng(seed)
    classes = structure.classes() if structure is not None else None
    if molecules is None:
        check_particle_sizes(shape, size_range, classes)
    voxel_size = 10.0
    if molecules is not None:
        from ..core.structures import simulate_structure_tomogram
        from .structures import check_fit

        settings = molecules.settings()
        voxel_size = settings.voxel_size
        loaded = molecules.load()
        check_fit(loaded, settings, shape, margin=4)
    rows = []
    for t in range(n_tomograms):
        stem = f"{prefix}_{t + 1:02d}"
        if molecules is not None:
            tomo = simulate_structure_tomogram(
                shape,
                n_particles,
                rng,
                loaded,
                settings,
                snr=snr,
                wedge=wedge,
                bandpass=molecules.bandpass,
                mask_error=molecules.mask_error,
            )
        elif classes is None:
            tomo = simulate_tomogram(shape, n_particles, rng, snr=snr, wedge=wedge, size_range=size_range)
        else:
            tomo = simulate_assembly_tomogram(shape, n_particles, rng, classes, snr=snr, wedge=wedge)
        volumes.write_mrc(root / "data" / f"{stem}.mrc", tomo.volume, voxel_size=voxel_size)
        io.write_h5(layout.instance_mask(root / "masks", stem), {"instances": tomo.mask})
        rows += [{"tomogram": stem, **r, "snr": float(snr), "wedge": float(wedge or 0.0)} for r in tomo.truth]
    columns = TRUTH_COLUMNS
    if molecules is not None:
        from .structures import class_definitions

        columns = TRUTH_COLUMNS + STRUCTURE_COLUMNS
        write_json(root / "classes.json", {"structures": class_definitions(loaded, settings)})
    if structure is not None:
        columns = TRUTH_COLUMNS + ASSEMBLY_COLUMNS
        rows = [{**r, "class_seed": structure.class_seed} for r in rows]
        definitions = {"class_seed": structure.class_seed, "classes": [class_definition(a) for a in classes or []]}
        write_json(root / "classes.json", definitions)
    truth = pd.DataFrame(rows, columns=columns)
    with io.atomic_output(root / "truth.csv") as tmp:
        truth.to_csv(tmp, index=False)
    what = "particles"
    if structure is not None:
        what = f"assemblies of {structure.n_classes} classes (class seed {structure.class_seed})"
    elif molecules is not None:
        what = f"molecules of {len(loaded)} structures ({molecules.voxel_size:g} Å voxels)"
    log.info(
        "simulated %d tomograms %s with %d %s (SNR %g, wedge %s, seed %d) → %s",
        n_tomograms,
        tuple(shape),
        len(truth),
        what,
        snr,
        f"±{wedge:g}°" if wedge else "none",
        seed,
        root,
    )
    return truth


def check_request(shape: tuple[int, int, int], n_particles: int, margin: int = 4) -> tuple[int, int, int]:
    """The tomogram shape as three ints, once it and the particle count are in bounds (before anything
    is allocated)."""
    from ..core.simulate import MAX_VOXELS, max_particles

    sizes = tuple(int(s) for s in shape)
    text = " ".join(map(str, sizes))
    if len(sizes) != 3 or min(sizes) < 2 * margin + 1:
        raise ConfigError(f"--shape {text}: needs three sizes z y x of at least {2 * margin + 1} voxels each")
    if float(np.prod(sizes, dtype=np.float64)) > MAX_VOXELS:
        raise ConfigError(f"--shape {text}: more than {MAX_VOXELS:,} voxels in one tomogram; use more --tomograms")
    fit = max_particles((sizes[0], sizes[1], sizes[2]), margin)
    if not 1 <= n_particles <= fit:
        raise ConfigError(
            f"--particles {n_particles}: a {'×'.join(map(str, sizes))} tomogram holds 1 to {fit:,} particles "
            f"({margin}-voxel margins); lower --particles or enlarge --shape"
        )
    return sizes[0], sizes[1], sizes[2]


def check_disk(root: Path, n_tomograms: int, shape: tuple[int, int, int]) -> None:
    """Refuse a run whose tomograms alone (float32) would not fit the free space where ``root`` goes."""
    import shutil

    need = float(n_tomograms) * float(np.prod(shape, dtype=np.float64)) * 4
    existing = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ResourceError(
            f"--tomograms {n_tomograms}: {n_tomograms:,} tomograms of {'×'.join(map(str, shape))} need at least "
            f"{need / 1e9:,.1f} GB, {free / 1e9:,.1f} GB are free; lower --tomograms or --shape",
            existing,
        )


def check_particle_sizes(
    shape: tuple[int, int, int], size_range: tuple[float, float], classes: list | None, margin: int = 4
) -> None:
    """Refuse shapes (radii in ``size_range``) or assemblies (``classes``) wider than ``shape`` less its
    margins, or whose render box would pass :data:`..core.simulate.MAX_PARTICLE_BOX` (before drawing)."""
    from ..core.assemblies import assembly_box
    from ..core.simulate import MAX_PARTICLE_BOX, Particle, box_size

    room = min(min(shape) - 2 * margin, MAX_PARTICLE_BOX)
    where = f"a --shape of {'×'.join(map(str, shape))} holds with {margin}-voxel margins"
    if classes:
        widest = max(classes, key=assembly_box)
        if assembly_box(widest) > room:
            raise ConfigError(
                f"--max-diameter: assemblies {2 * widest.outer_radius:.1f} voxels across (a box of "
                f"{assembly_box(widest)}) are wider than {where} (and at most {MAX_PARTICLE_BOX}); lower "
                "--max-diameter or enlarge --shape"
            )
        return
    low, high = size_range
    if not 0 < low <= high:
        raise ConfigError(f"--min-size {low:g} --max-size {high:g}: particle radii need 0 < min <= max")
    box = box_size(Particle(0, high, np.eye(3), 1.15))
    if 2 * high > room or box > MAX_PARTICLE_BOX:
        raise ConfigError(
            f"--max-size {high:g}: particles of radius {high:g} voxels are wider than {where} (and their box "
            f"at most {MAX_PARTICLE_BOX}); lower --max-size or enlarge --shape"
        )


def write_json(path: Path, value: dict) -> None:
    with io.atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")


def dataset_config(
    data_root: Path, model: Path | None = None, config: Path | None = None, log_dir: Path | None = None
) -> Config:
    """The demo config (or ``config``) pointed at a simulated dataset folder."""
    data_root = Path(data_root).absolute()
    overrides = [
        f"data_folder={data_root / 'data'}",
        f"instances_mask_folder={data_root / 'masks'}",
        f"prediction_folder={data_root / 'predictions'}",
        f"visualization.prediction_folder={data_root / 'predictions' / 'vis'}",
        f"log_dir={log_dir or data_root}",
    ]
    if model is not None:
        overrides.append(f"trained_model={Path(model).absolute()}")
    cfg = load_config(config or DEMO_CONFIG, overrides)
    if cfg.trained_model and not Path(cfg.trained_model).is_absolute():
        cfg.trained_model = str((DATA / cfg.trained_model) if config is None else Path(cfg.trained_model).absolute())
    return cfg


def run_evaluate(
    data_root: Path, model: Path | None = None, config: Path | None = None, device: str = "auto"
) -> dict[str, tuple[float, float]]:
    """Embed a simulated dataset with ``predict`` and score it against its truth table."""
    from .embedding import run_predict
    from .tomograms import list_tomograms

    cfg = dataset_config(data_root, model, config)
    truth = read_truth(data_root, [cfg.stem(t.name) for t in list_tomograms(cfg)])  # before the whole predict
    run_predict(cfg, device=device)
    return score_dataset(cfg, truth)


# --------------------------------------------------------------------------------------------
# the demo


def run_demo(
    output: Path,
    retrain: bool = False,
    steps: int | None = None,
    tomograms: int = 2,
    particles: int = 70,
    shape: tuple[int, int, int] = (64, 192, 192),
    seed: int = 1,
    model: Path | None = None,
    device: str = "auto",
) -> dict:
    """The whole job on simulated data at two difficulties; prints and returns the ARI table.

    The easier set gets every output and figure (predict, kmeans, spectral, visualize); both
    sets are scored for the trained model, an untrained twin and the two classical descriptors.
    """
    from .clustering import run_kmeans, run_spectral
    from .context import resolve_folders
    from .embedding import run_predict
    from .training import retrain_demo_model
    from .visualize import run_visualize

    start = time.perf_counter()
    output = Path(output).absolute()
    model = Path(model).absolute() if model else DEMO_MODEL
    if retrain:
        model = retrain_demo_model(output / "training" / "last.ckpt", steps, device=device)
    results = {}
    for i, difficulty in enumerate((EASY, HARD)):
        root = output / difficulty.tag
        truth = run_simulate(root, tomograms, shape, particles, difficulty.snr, difficulty.wedge, seed=seed + 100 * i)
        cfg = dataset_config(root, model, log_dir=output)
        run_predict(cfg, device=device, overwrite=True)
        if difficulty is EASY:  # the full job, with every output and figure, on the easier set
            folders = resolve_folders(cfg, None, None, None)
            run_kmeans(cfg, folders)
            run_spectral(cfg, folders)
            run_visualize(cfg, folders)
        results[difficulty.name] = score_dataset(cfg, truth)
    write_scores(results, output / "ari.csv")
    print_report(results, output, time.perf_counter() - start, model)
    return results


def write_scores(results: dict, path: Path) -> None:
    rows = [
        {"dataset": d, "method": m, "kmeans_ari": km, "spectral_ari": sp}
        for d, by_method in results.items()
        for m, (km, sp) in by_method.items()
    ]
    with io.atomic_output(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.4f")


def format_table(results: dict) -> list[str]:
    methods = list(next(iter(results.values())))
    w = max(26, *(len(m) + 1 for m in methods))
    lines = [
        f"  {'':{w}s}" + "".join(f"{name:>26s}" for name in results),
        f"  {'':{w}s}" + "".join(f"{'KMeans':>13s}{'spectral':>13s}" for _ in results),
    ]
    for m in methods:
        lines.append(f"  {m:{w}s}" + "".join(f"{results[d][m][0]:13.2f}{results[d][m][1]:13.2f}" for d in results))
    return lines


def print_report(results: dict, output: Path, seconds: float, model: Path) -> None:
    lines = [
        "",
        f"subtomo-embed demo finished in {seconds:.0f} s (model: {model})",
        "",
        "Adjusted Rand index of the clusters against the true shape classes (1 = perfect, 0 = chance):",
        "",
    ]
    lines += format_table(results)
    vis = output / EASY.tag / "predictions" / "vis"
    pngs = sorted(vis.rglob("*.png")) if vis.is_dir() else []
    lines += [
        "",
        f"Embeddings and clusters: {output / EASY.tag / 'predictions'}",
        f"Scores: {output / 'ari.csv'}",
        f"Figures ({len(pngs)} PNGs): {vis}",
    ]
    for p in pngs[:10]:
        lines.append(f"  {p.relative_to(output)}")
    if len(pngs) > 10:
        lines.append(f"  ... and {len(pngs) - 10} more")
    explorer = layout.explorer(vis)
    if explorer.is_file():
        lines += ["", f"Explore the embeddings (open in a browser): {explorer}"]
    print("\n".join(lines), flush=True)
