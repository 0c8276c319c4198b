"""Fine-tuning on the user's own tomograms: ``subtomo-embed train --from-data``.

The particles are the instances ``predict`` would embed: the same tomograms (``data_folder``,
``test_files``/``train_files``), masks (``instances_mask_folder``), growth (``expand_labels``),
size filter (``min/max_particle_size``) and CryoSiam regions tables, found and planned by the
functions ``predict`` calls (:mod:`.tomograms`). Without masks (no ``instances_mask_folder``) and
with ``centers_file``, they are the picks ``predict-centers`` would embed, in its boxes
(``centers_patch_size``, ``centers.*``; :mod:`.centers`). Positive pairs are two augmented views of one
real particle (:mod:`..core.real_views`), cut by ``predict``'s own patch function. Training starts
from a checkpoint (``--from``, else the config's ``trained_model``: ours or CryoSiam's) and is
resumable like simulated training (:func:`..core.train.train`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.config import Config
from ..core.errors import ConfigError, InputDataError
from ..core.real_views import ParticleSource, PickSource, RealViewSettings, make_real_pair

log = logging.getLogger(__name__)


def real_view_settings(cfg: Config) -> RealViewSettings:
    """The config's patch contract (``patch_size``, ``masking_type``, ``parameters.data``) and the
    default augmentation ranges."""
    from .tomograms import normalization, patch_size

    return RealViewSettings(patch_size(cfg), cfg.masking_type, normalization(cfg))


def collect_particles(cfg: Config, filename: str | None = None) -> list[ParticleSource]:
    """Every instance ``predict`` would embed, with its (memory-mapped) tomogram; none is an error."""
    from .tomograms import list_tomograms, load_tomogram_and_mask, locate_inputs, plan_tomogram

    sources: list[ParticleSource] = []
    tomograms = list_tomograms(cfg, filename)
    for tomogram in tomograms:
        inputs = locate_inputs(cfg, tomogram)
        if inputs is None:  # skip_missing_masks
            continue
        volume, mask = load_tomogram_and_mask(inputs)
        plan = plan_tomogram(cfg, inputs, mask)
        del mask  # the regions keep their own voxels
        labels = plan.columns["label"]
        sources += [ParticleSource(volume, r, f"{inputs.stem} label {int(n)}") for r, n in zip(plan.regions, labels)]
        log.info("%s: %d particles for training", inputs.stem, len(plan))
    if not sources:
        raise InputDataError(
            "no instances to train on in the masks of these tomograms (check min_particle_size/max_particle_size)",
            cfg.path("instances_mask_folder"),
        )
    if len(sources) < 2:
        log.warning("only one particle to train on: the embedding will learn little")
    return sources


def collect_picks(cfg: Config, filename: str | None = None) -> list[PickSource]:
    """Every pick ``predict-centers`` would embed (``centers_file``, ``centers_patch_size``, ``centers.*``)."""
    from .centers import PicksSource, centers_box_size, load_picked_tomogram, pick_boxes
    from .tomograms import list_tomograms

    size = centers_box_size(cfg)
    tomograms = list_tomograms(cfg, filename)
    source = PicksSource(cfg, [cfg.stem(t.name) for t in tomograms], pinned=filename is not None)
    sources: list[PickSource] = []
    for tomogram in tomograms:
        stem = cfg.stem(tomogram.name)
        picks = source.to_embed(stem)
        if picks is None:
            continue
        volume, table = load_picked_tomogram(cfg, tomogram, picks, size)
        starts, positions = pick_boxes(table)
        labels = table["label"].to_numpy()
        sources += [
            PickSource(volume, b, c, size, cfg.centers.mask_radius, f"{stem} pick {n}")
            for b, c, n in zip(starts, positions, labels)
        ]
        log.info("%s: %d picks for training", stem, len(table))
    if not sources:
        raise InputDataError("no picks to train on for the selected tomograms", cfg.path("centers_file"))
    return sources


def training_particles(cfg: Config) -> list[ParticleSource] | list[PickSource]:
    """The user's particles: the instance masks' (``instances_mask_folder``) or, without masks and
    with ``centers_file``, the picks'."""
    if cfg.centers_file and not cfg.instances_mask_folder:
        return collect_picks(cfg)
    return collect_particles(cfg)


def starting_checkpoint(cfg: Config, start_from: Path | None) -> Path:
    if start_from is not None:
        return Path(start_from)
    if not cfg.trained_model:
        raise ConfigError("fine-tuning needs a starting checkpoint: set trained_model or give --from", cfg.source)
    return cfg.path("trained_model")


def fine_tune_from_config(
    cfg: Config,
    checkpoint: Path,
    start_from: Path | None = None,
    steps: int | None = None,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
    time_limit: float | None = None,
    save_every: int = 25,
    views: RealViewSettings | None = None,
    workers: int | None = None,
) -> Path:
    """SimSiam fine-tuning on the config's tomograms + instance masks (or picks: :func:`training_particles`)
    from ``start_from`` (else ``trained_model``), to ``steps`` (else ``hyper_parameters.max_steps``); resumable."""
    from ..core.train import StartingPoint
    from .demo import train_from_config

    start = StartingPoint(starting_checkpoint(cfg, start_from), cfg.contrastive)
    sources = training_particles(cfg)
    settings_views = views or real_view_settings(cfg)
    log.info("fine-tuning on %d particles from %s", len(sources), start.checkpoint)

    def pairs(rng):
        return make_real_pair(sources, rng, settings_views)

    return train_from_config(
        cfg, checkpoint, steps, device, resume, progress, time_limit, save_every, settings_views, pairs, start, workers
    )
