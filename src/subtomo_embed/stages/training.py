"""Training orchestration: ``subtomo-embed train``, from a config to a checkpoint.

:func:`train_from_config` trains with the config's patch contract and ``hyper_parameters``: on
simulated particles (:mod:`..core.simulated_views`; the demo's model: :func:`retrain_demo_model`) or,
given real particles' pairs, on the user's own. :func:`export_model` writes the copy that gets committed.

Fine-tuning on the user's own tomograms (``train --from-data``, :func:`fine_tune_from_config`): the
particles are the instances ``predict`` would embed: the same tomograms (``data_folder``,
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

from ..core import io
from ..core.config import Config, load_config
from ..core.errors import ConfigError, InputDataError
from ..core.pair_stream import PairMaker, simulated_pairs
from ..core.patch_contract import patch_contract
from ..core.real_views import ParticleSource, PickSource, RealViewSettings, make_real_pair
from ..core.simulated_views import ViewSettings
from ..core.train import Sitting, StartingPoint

log = logging.getLogger(__name__)


def training_settings(cfg: Config) -> ViewSettings:
    """Simulated particles' views: the config's patch contract, its ``hyper_parameters.assembly_fraction``
    and ``family_set_fraction``, and the default ranges."""
    hp = cfg.hyper_parameters
    return ViewSettings(
        patch_contract(cfg), assembly_fraction=hp.assembly_fraction, family_set_fraction=hp.family_set_fraction
    )


def real_view_settings(cfg: Config) -> RealViewSettings:
    """Real particles' views: the config's patch contract and the default augmentation ranges."""
    return RealViewSettings(patch_contract(cfg))


def train_from_config(
    cfg: Config,
    checkpoint: Path,
    steps: int | None = None,
    device: str = "auto",
    sitting: Sitting = Sitting(),
    views: ViewSettings | RealViewSettings | None = None,  # None: the config's simulated views
    pairs: PairMaker | None = None,  # None: simulated particles
    starting_point: StartingPoint | None = None,  # None: fresh weights
) -> Path:
    """SimSiam training with a config's patch contract and ``hyper_parameters`` to ``steps`` (else
    ``hyper_parameters.max_steps``), resumable (``sitting``: resume, saving, time limit, workers).

    By default on simulated particles; fine-tuning (:func:`fine_tune_from_config`) passes its own
    ``views``, ``pairs`` and ``starting_point``."""
    from ..core.embed import pick_device
    from ..core.train import TrainingSettings, train

    hp = cfg.hyper_parameters
    if hp.class_weight > 0 and pairs is not None:
        raise ConfigError(
            "hyper_parameters.class_weight needs simulated training: set it to 0 to fine-tune on real particles, "
            "which have no classes (hyper_parameters.contrast_weight makes each particle its own class)",
            cfg.source,
        )
    torch_device = pick_device(device, cfg.parameters.gpu_devices)
    settings = TrainingSettings(
        views or training_settings(cfg),
        steps or hp.max_steps,
        hp.batch_size,
        hp.learning_rate,
        seed=cfg.seed,
        contrast_weight=hp.contrast_weight,
        contrast_temperature=hp.contrast_temperature,
        class_weight=hp.class_weight,
    )
    return train(
        cfg.model_dump(by_alias=True),
        cfg.parameters.network.model_dump(),
        settings,
        Path(checkpoint),
        torch_device,
        sitting,
        pairs=pairs,
        starting_point=starting_point or StartingPoint(),
    )


def retrain_demo_model(checkpoint: Path, steps: int | None = None, device: str = "auto") -> Path:
    """Train the demo network from the demo config (resumable); returns the checkpoint."""
    from .demo import DEMO_CONFIG

    return train_from_config(load_config(DEMO_CONFIG), checkpoint, steps, device)


def export_model(checkpoint: Path, dest: Path, start: Path | None = None, share: float = 1.0) -> Path:
    """Copy a training checkpoint without the optimizer state and class_weight's classifier (what gets committed).

    With ``start`` (the checkpoint a fine-tuning run started from) and ``share`` < 1, the copy's weights
    are ``share`` × the fine-tuned + (1 − ``share``) × the starting ones (:func:`averaged_weights`)."""
    import torch

    from ..core.model import read_checkpoint
    from ..core.train import CLASS_HEAD_KEY, OPTIMIZER_KEY

    ckpt = read_checkpoint(checkpoint)
    ckpt.pop(OPTIMIZER_KEY, None)
    ckpt.pop(CLASS_HEAD_KEY, None)
    if start is not None and share < 1.0:
        ckpt["state_dict"] = averaged_weights(checkpoint, Path(start), share)
        ckpt[AVERAGED_KEY] = {"finetuned_share": share, "start": Path(start).name}
        log.info("exported weights: %.2f x fine-tuned + %.2f x %s", share, 1.0 - share, Path(start).name)
    with io.atomic_output(dest) as tmp:
        torch.save(ckpt, tmp)
    return dest


# the exported checkpoint's record of the averaging (its share and the starting checkpoint's file name)
AVERAGED_KEY = "weight_averaging"


def averaged_weights(tuned: Path, start: Path, share: float) -> dict:
    """The state_dict (CryoSiam's ``_model.`` keys) of ``share`` × ``tuned``'s weights + (1 − ``share``) ×
    ``start``'s, each checkpoint loaded and checked as ``predict`` loads it: weight-space averaging of a
    fine-tuned model with its starting point (WiSE-FT, Wortsman et al. 2022). Integer buffers (BatchNorm's
    batch counts) are the fine-tuned ones."""
    from ..core.errors import ModelError
    from ..core.model import STATE_PREFIX, load_model

    tuned_state = load_model(tuned)[0].state_dict()
    start_state = load_model(start)[0].state_dict()
    if tuned_state.keys() != start_state.keys() or any(start_state[k].shape != v.shape for k, v in tuned_state.items()):
        raise ModelError(
            f"its network is not the fine-tuned one of {Path(tuned).name} (is it the one it started from?)", start
        )
    return {
        STATE_PREFIX + k: (share * v + (1.0 - share) * start_state[k]) if v.is_floating_point() else v
        for k, v in tuned_state.items()
    }


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


# class ids of the user's particles in a fine-tuning batch: apart from the simulator's (shapes 0..,
# assemblies 100..), so that the contrast term never makes a particle a positive of a simulated class
REAL_CLASS_OFFSET = 1_000_000


def rehearsed_pairs(
    sources: list[ParticleSource] | list[PickSource], views: RealViewSettings, cfg: Config
) -> PairMaker:
    """The user's particles' pairs (each particle its own class), with ``hyper_parameters.rehearsal_fraction``
    of them the simulator's pairs instead (:func:`training_settings`: the config's patch contract and
    ``assembly_fraction``), so that fine-tuning rehearses what the starting model was trained on."""
    fraction = cfg.hyper_parameters.rehearsal_fraction
    simulated = simulated_pairs(training_settings(cfg))

    def pairs(rng):
        if fraction > 0 and rng.random() < fraction:
            return simulated(rng)
        first, second, index = make_real_pair(sources, rng, views)
        return first, second, REAL_CLASS_OFFSET + index

    return pairs


def fine_tune_from_config(
    cfg: Config,
    checkpoint: Path,
    start_from: Path | None = None,
    steps: int | None = None,
    device: str = "auto",
    sitting: Sitting = Sitting(),
    views: RealViewSettings | None = None,
) -> Path:
    """SimSiam fine-tuning on the config's tomograms + instance masks (or picks: :func:`training_particles`)
    from ``start_from`` (else ``trained_model``), to ``steps`` (else ``hyper_parameters.max_steps``); resumable."""
    start = StartingPoint(starting_checkpoint(cfg, start_from), cfg.contrastive)
    sources = training_particles(cfg)
    settings_views = views or real_view_settings(cfg)
    log.info(
        "fine-tuning on %d particles from %s (simulated pairs rehearsed: %.0f %%)",
        len(sources),
        start.checkpoint,
        100 * cfg.hyper_parameters.rehearsal_fraction,
    )

    pairs = rehearsed_pairs(sources, settings_views, cfg)

    return train_from_config(cfg, checkpoint, steps, device, sitting, settings_views, pairs, start)
