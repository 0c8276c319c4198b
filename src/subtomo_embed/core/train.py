"""SimSiam self-supervised training on simulated particles, patches cut exactly as ``predict`` cuts them.

Positive pairs: the same particle (class, size, aspect) simulated twice, independently: each
view has its own random orientation (any angle), its own noise at its own SNR, its own
missing wedge (or none), its own slight rescaling and mask dilation, and its own intensity
gain. The two views share the particle's shape and nothing else, so the network cannot match
them by their noise or their mask outline (views of one noisy copy are matched that way: the
loss falls to -0.98 while the embedding learns nothing about shape). A share ``assembly_fraction``
of the pairs are sub-unit assemblies (:mod:`.assemblies`) instead of envelope shapes: one class of a
fresh random class set, simulated twice the same way, so the network learns how sub-units are
arranged, not only the outline. With ``TrainingSettings.contrast_weight`` > 0 a supervised-contrastive
term joins SimSiam's loss (:func:`class_contrastive_loss`): the batch's views of one class (the simulator's
envelope shape or assembly arrangement) are each other's positives, all other views negatives. With
``class_weight`` > 0 a linear classifier of those classes on the projector output does (:func:`class_loss`):
what made the embedded model see arrangements of 13-voxel particles (docs/model.md).

Each view is a small volume holding the particle plus its instance mask (label 1); its patch is
cut by :func:`~subtomo_embed.core.extract.plan_extraction` and
:func:`~subtomo_embed.core.extract.cut_patch` with the config's ``expand_labels``,
``masking_type``, ``patch_size`` and normalization: the same function calls as ``predict``.

Particles are made on the fly (no dataset on disk) by a background thread while the network
trains. The checkpoint (``<log_dir>/model/last.ckpt``, CryoSiam's Lightning layout) carries the
optimizer state and the step in extra keys, so ``train`` resumes where it stopped; the pair
stream is seeded by (seed, step), so a resumed run sees the particles a single run would.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import ConfigError, SubtomoError, Terminated
from .extract import Normalization, cut_patch, plan_extraction
from .real_views import random_dilation
from .simulate import CLASSES as SHAPE_CLASSES
from .simulate import DEFAULT_SIZE_RANGE, another_view, particle_volume, random_particle

log = logging.getLogger(__name__)

TRAIN_STATE_KEY = "subtomo_train_state"
OPTIMIZER_KEY = "optimizer_states"
CLASS_HEAD_KEY = "subtomo_class_head"  # the classifier of class_weight (not part of CryoSiam's network)


@dataclass
class ViewSettings:
    """How the two views of a particle are made (recorded in the checkpoint's training state).

    The first four fields are the patch contract and come from the config (``patch_size``,
    ``masking_type``, ``expand_labels``, ``parameters.data``); the rest are the simulation and
    augmentation ranges, each drawn independently for each view.
    """

    patch_size: tuple[int, int, int] = (32, 32, 32)
    masking_type: int = 1
    expand_labels: int = 0
    norm: Normalization = field(default_factory=Normalization)
    snr_range: tuple[float, float] = (0.7, 6.0)  # log-uniform per view
    wedge_probability: float = 0.5  # per view
    wedge_range: tuple[float, float] = (45.0, 70.0)  # degrees, uniform per view
    size_range: tuple[float, float] = DEFAULT_SIZE_RANGE
    scale_jitter: float = 0.35  # each view's size times a factor in [1/1.35, 1.35] (a random-resized-crop)
    aspect_jitter: float = 0.1  # each view's aspect times a factor in [1/1.1, 1.1]
    mask_dilation: int = 1  # each view's mask dilated by 0..this voxels
    gain_range: tuple[float, float] = (0.75, 1.33)  # intensity gain per view, log-uniform
    offset_range: tuple[float, float] = (-0.15, 0.15)  # intensity offset per view
    # the share of pairs that are sub-unit assemblies (core.assemblies) instead of envelope shapes
    assembly_fraction: float = 0.0
    assembly_scale_jitter: float = 0.1  # each assembly view's size times a factor in [1/1.1, 1.1]

    @property
    def box(self) -> int:
        """The edge of the small volume a view is simulated in (the patch's, plus a margin)."""
        return max(self.patch_size) + 8


def draw_degradation(rng: np.random.Generator, s: ViewSettings) -> tuple[float, float | None, int]:
    """One view's (SNR, missing-wedge half-angle or None, mask dilation in voxels)."""
    snr = float(np.exp(rng.uniform(np.log(s.snr_range[0]), np.log(s.snr_range[1]))))
    wedge = float(rng.uniform(*s.wedge_range)) if rng.random() < s.wedge_probability else None
    return snr, wedge, random_dilation(rng, s.mask_dilation)


def jitter_intensity(volume: np.ndarray, rng: np.random.Generator, s: ViewSettings) -> np.ndarray:
    """The view's intensity gain (log-uniform) and offset."""
    gain = float(np.exp(rng.uniform(np.log(s.gain_range[0]), np.log(s.gain_range[1]))))
    return (volume * np.float32(gain) + np.float32(rng.uniform(*s.offset_range))).astype(np.float32)


def view_volume(p, rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray]:
    """One view of a particle as a small tomogram and its instance mask (label 1): simulated,
    degraded at a random SNR, with or without a missing wedge, mask dilated, gain and offset."""
    snr, wedge, dilate = draw_degradation(rng, s)
    volume, mask = particle_volume(p, rng, snr, wedge, s.box, dilate)
    return jitter_intensity(volume, rng, s), mask


def assembly_view_volume(assembly, rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray]:
    """One view of a sub-unit assembly, like :func:`view_volume`: its own orientation (uniform over
    SO(3)), size jitter, SNR, wedge, CTF-like band-pass, mask dilation, gain and offset."""
    from .assemblies import scaled, simulate_particle

    snr, wedge, dilate = draw_degradation(rng, s)
    factor = float(np.exp(rng.uniform(-np.log1p(s.assembly_scale_jitter), np.log1p(s.assembly_scale_jitter))))
    volume, mask = simulate_particle(scaled(assembly, factor), rng, s.box, snr, wedge)
    if dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate).astype(np.int32)
    return jitter_intensity(volume, rng, s), mask


def extract_view(volume: np.ndarray, mask: np.ndarray, s: ViewSettings) -> np.ndarray:
    """The patch ``predict`` would cut for the instance of ``mask``: the same function calls."""
    plan = plan_extraction(mask, s.expand_labels)
    if len(plan) == 0:  # cannot happen for the simulator's shapes; keep the stream going
        return np.zeros(s.patch_size, np.float32)
    patch, _ = cut_patch(volume, plan.regions[0], s.patch_size, s.masking_type, s.norm, "simulated particle")
    return patch


def make_view(p, rng: np.random.Generator, s: ViewSettings) -> np.ndarray:
    return extract_view(*view_volume(p, rng, s), s)


# Training draws its assembly classes from class seeds at or above this; evaluation sets and the docs
# use small class seeds, so the classes a model is scored on are not the ones it was trained on.
TRAINING_CLASS_SEEDS = (1_000_000, 2**31 - 1)
ASSEMBLY_CLASS_OFFSET = 100  # pair class ids: shapes 0.., assemblies 100 + index in assemblies.ARRANGEMENTS


def make_assembly_pair(rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """Two independent simulations of one assembly: a class drawn from a fresh class set (3-7
    classes of one diameter and mass, :func:`~.assemblies.random_class_set`), each view its own
    rotation and degradation. The pair's class id is the arrangement's (ring4, octahedral, ...: the
    same for that arrangement at any size, in any class set)."""
    from .assemblies import ARRANGEMENTS, random_class_set

    classes = random_class_set(int(rng.integers(*TRAINING_CLASS_SEEDS)), int(rng.integers(3, 8)))
    assembly = classes[int(rng.integers(len(classes)))]
    views = [extract_view(*assembly_view_volume(assembly, rng, s), s) for _ in range(2)]
    return views[0], views[1], ASSEMBLY_CLASS_OFFSET + ARRANGEMENTS.index(assembly.arrangement)


def make_pair(rng: np.random.Generator, s: ViewSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """A positive pair: an envelope shape (:mod:`.simulate`) or, with probability
    ``s.assembly_fraction``, a sub-unit assembly (:func:`make_assembly_pair`)."""
    if s.assembly_fraction > 0 and rng.random() < s.assembly_fraction:
        return make_assembly_pair(rng, s)
    base = random_particle(rng, None, s.size_range)
    a = another_view(base, rng, s.scale_jitter, s.aspect_jitter)
    b = another_view(base, rng, s.scale_jitter, s.aspect_jitter)
    return make_view(a, rng, s), make_view(b, rng, s), base.cls


PairMaker = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, int]]


def simulated_pairs(settings: ViewSettings) -> PairMaker:
    """Pairs of simulated particles (:func:`make_pair`) with these settings."""

    def make(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        return make_pair(rng, settings)

    return make


def pair_batch(make: PairMaker, batch_size: int, seed: int, step: int) -> tuple:
    """Batch ``step``: (step, x1, x2, classes) of ``make``'s pairs, drawn from a generator seeded by (seed, step)."""
    rng = np.random.default_rng([seed, step])
    views1, views2, classes = [], [], []
    for _ in range(batch_size):
        a, b, c = make(rng)
        views1.append(a)
        views2.append(b)
        classes.append(c)
    x1 = torch.from_numpy(np.stack(views1)[:, None])
    x2 = torch.from_numpy(np.stack(views2)[:, None])
    return step, x1, x2, np.asarray(classes)


class _StepBatches(torch.utils.data.Dataset):
    """Batch ``step`` of :func:`pair_batch` as item ``step``, for worker processes."""

    def __init__(self, make: PairMaker, batch_size: int, seed: int):
        self.make, self.batch_size, self.seed = make, batch_size, seed

    def __getitem__(self, step: int) -> tuple | SubtomoError:
        try:
            return pair_batch(self.make, self.batch_size, self.seed, step)
        except SubtomoError as err:  # raised by the run as it is (DataLoader would fold its traceback into the text)
            return err


def _raise_handed_errors(batches: Iterator) -> Iterator[tuple]:
    for batch in batches:
        if isinstance(batch, SubtomoError):
            raise batch
        yield batch


def training_batches(make: PairMaker, batch_size: int, seed: int, steps: range, workers: int) -> Iterator[tuple]:
    """The batches of ``steps``, in order: made by ``workers`` forked processes (a DataLoader, two batches
    ahead each), or with ``workers`` 0 by one background thread (:func:`batch_workers` says how many).
    Either way batch ``step`` is the same, so a run's weights do not depend on ``workers``. Simulating a
    batch takes ~0.4-0.8 s of one core: on a GPU the network is faster than that, and workers keep it fed."""
    if workers <= 0:
        return prefetch_batches(pair_batch(make, batch_size, seed, step) for step in steps)
    loader = torch.utils.data.DataLoader(
        _StepBatches(make, batch_size, seed),
        batch_size=None,
        sampler=steps,
        num_workers=workers,
        prefetch_factor=2,
        multiprocessing_context="fork",
    )
    return _raise_handed_errors(iter(loader))


# --------------------------------------------------------------------------------------------
# training


def simsiam_loss(p1, p2, z1, z2) -> torch.Tensor:
    """Symmetric negative cosine similarity with stop-gradient on z (SimSiam, -1 is perfect)."""
    return -0.5 * (
        F.cosine_similarity(p1, z2.detach(), dim=-1).mean() + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
    )


def class_contrastive_loss(p1, p2, classes, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (SupCon, Khosla et al. 2020) on the embeddings of a batch's 2N views.

    Each view's positives are the other views of its class (``classes``: the pairs' class ids; its own
    pair's other view always among them), every other view of the batch a negative: cross-entropy of
    cosine similarities / ``temperature``, averaged over the positives. With every pair its own class it
    is SimCLR's NT-Xent. Simulated pairs carry the simulator's class (envelope shape, or assembly
    arrangement), real particles their own index (:mod:`.real_views`)."""
    z = F.normalize(torch.cat([p1, p2]).float(), dim=1)
    ids = torch.as_tensor(np.concatenate([classes, classes]), device=z.device)
    self_pair = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (ids[:, None] == ids[None, :]) & ~self_pair
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)).mean()


def simulated_class_count() -> int:
    """How many classes simulated pairs carry: the envelope shapes, then every assembly arrangement."""
    from .assemblies import ARRANGEMENTS

    return len(SHAPE_CLASSES) + len(ARRANGEMENTS)


def class_targets(classes) -> torch.Tensor:
    """Simulated pairs' class ids (shapes 0.., assemblies ``ASSEMBLY_CLASS_OFFSET`` + arrangement) as 0..K-1."""
    c = np.asarray(classes, dtype=np.int64)
    return torch.as_tensor(np.where(c >= ASSEMBLY_CLASS_OFFSET, c - ASSEMBLY_CLASS_OFFSET + len(SHAPE_CLASSES), c))


def class_loss(head: torch.nn.Module, z1, z2, classes) -> torch.Tensor:
    """Cross-entropy of a linear classifier of the simulator's classes on both views' projector outputs."""
    target = class_targets(classes).to(z1.device)
    return 0.5 * (F.cross_entropy(head(z1), target) + F.cross_entropy(head(z2), target))


def training_loss(p1, p2, z1, z2, classes, settings: TrainingSettings, head=None) -> torch.Tensor:
    """SimSiam's loss, plus ``settings.contrast_weight`` times :func:`class_contrastive_loss`, plus
    ``settings.class_weight`` times :func:`class_loss` (``head``: the classifier)."""
    loss = simsiam_loss(p1, p2, z1, z2)
    if settings.contrast_weight > 0:
        loss = loss + settings.contrast_weight * class_contrastive_loss(
            p1, p2, np.asarray(classes), settings.contrast_temperature
        )
    if settings.class_weight > 0:
        loss = loss + settings.class_weight * class_loss(head, z1, z2, classes)
    return loss


def embedding_spread(z: torch.Tensor) -> float:
    """Std over the batch of the L2-normalized projections, times sqrt(dim): ~1 healthy, ->0 collapsed."""
    zn = F.normalize(z.detach().float(), dim=1)
    return float(zn.std(dim=0).mean() * math.sqrt(z.shape[1]))


def learning_rate_at(step: int, max_steps: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``max_steps``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model, name: str, lr: float, weight_decay: float, head=None):
    # SimSiam keeps the predictor's learning rate fixed; the rest follows the schedule
    groups = [
        {"params": list(model.encoder.parameters()), "fix_lr": False},
        {"params": list(model.predictor.parameters()), "fix_lr": True},
    ]
    if head is not None:
        groups.append({"params": list(head.parameters()), "fix_lr": False})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def check_cryosiam_network(network: dict) -> None:
    """Warn when CryoSiam itself could not rebuild the network (it always builds a 7³, stride-1 stem)."""
    size, stride = network.get("conv1_t_size", 7), network.get("conv1_t_stride", 1)
    if size != 7 or stride != 1:
        log.warning(
            "parameters.network has conv1_t_size %s / conv1_t_stride %s: subtomo-embed predict loads this "
            "checkpoint, but CryoSiam always builds a 7³ stride-1 stem and cannot use it "
            "(use no_max_pool: false for a cheap CryoSiam-compatible downsampling)",
            size,
            stride,
        )


@dataclass(frozen=True)
class TrainingSettings:
    """What a training run learns with (recorded in the checkpoint's training state); ``views``:
    simulated particles' (:class:`ViewSettings`) or real particles' (``RealViewSettings``)."""

    views: Any
    steps: int  # train to this step (a resumed run goes on to it)
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    seed: int = 0
    # weight of :func:`class_contrastive_loss` beside SimSiam's loss (0: SimSiam alone, as CryoSiam trains)
    contrast_weight: float = 0.0
    contrast_temperature: float = 0.2
    # weight of :func:`class_loss` (simulated pairs only; 0: none)
    class_weight: float = 0.0


@dataclass(frozen=True)
class Sitting:
    """How one sitting of training runs: resume or start afresh, how often to save, when to stop."""

    resume: bool = True
    save_every: int = 25
    time_limit: float | None = None  # seconds: stop early, after saving (a long run in sittings)
    progress: bool = True
    on_save: Callable[[int], None] | None = None
    workers: int | None = None  # processes making batches; None: default_workers() on a GPU, 0 (a thread) on CPU


@dataclass
class TrainingState:
    """Where training stands: the step reached, the loss history, the seconds trained so far."""

    step: int = 0
    history: list = field(default_factory=list)
    seconds: float = 0.0


def resume_from(checkpoint: Path, model, opt, head=None) -> TrainingState:
    """Weights, optimizer state, step and history from a checkpoint this module saved."""
    from .model import STATE_PREFIX, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if (head is None) != (CLASS_HEAD_KEY not in ckpt):
        raise ConfigError(
            f"{checkpoint}: trained {'with' if head is None else 'without'} hyper_parameters.class_weight; "
            "resume it with the same setting, or start afresh (--restart)"
        )
    model.load_state_dict({k[len(STATE_PREFIX) :]: v for k, v in ckpt["state_dict"].items()}, strict=True)
    if head is not None:
        head.load_state_dict(ckpt[CLASS_HEAD_KEY])
    if ckpt.get(OPTIMIZER_KEY):
        opt.load_state_dict(ckpt[OPTIMIZER_KEY][0])
    saved = ckpt.get(TRAIN_STATE_KEY) or {}
    state = TrainingState(
        int(ckpt.get("global_step", 0)), list(saved.get("history", [])), float(saved.get("seconds", 0.0))
    )
    log.info("resuming from %s at step %d (%.0f s trained so far)", checkpoint, state.step, state.seconds)
    return state


def save_training(
    checkpoint: Path, model, opt, config: dict, settings: TrainingSettings, state: TrainingState, head=None
) -> None:
    """CryoSiam's checkpoint layout plus the optimizer state, this run's training state and the classifier.

    The stored config's ``hyper_parameters.max_steps`` is the run's (``--steps`` overrides the config's),
    so the config in the checkpoint retrains the same schedule."""
    from .model import save_checkpoint

    config = {**config, "hyper_parameters": {**config.get("hyper_parameters", {}), "max_steps": settings.steps}}

    extra: dict[str, Any] = {} if head is None else {CLASS_HEAD_KEY: head.state_dict()}
    extra |= {
        OPTIMIZER_KEY: [opt.state_dict()],
        TRAIN_STATE_KEY: {
            "seconds": state.seconds,
            "history": state.history,
            "pairs": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings.views).items() if k != "norm"
            },
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "optimizer": settings.optimizer,
            "max_steps": settings.steps,
            "seed": settings.seed,
            "contrast_weight": settings.contrast_weight,
            "contrast_temperature": settings.contrast_temperature,
            "class_weight": settings.class_weight,
            "torch": str(torch.__version__),
        },
    }
    model.eval()
    save_checkpoint(checkpoint, model, config, step=state.step, epoch=0, extra=extra)
    model.train()


@dataclass(frozen=True)
class StartingPoint:
    """Where the weights of a new run come from: a checkpoint (fine-tuning; its network replaces the
    config's) or, without one, a fresh network of the config's shape."""

    checkpoint: Path | None = None
    contrastive: bool = True


def initial_model(network: dict, start: StartingPoint, seed: int):
    """(model in train mode, its full network config): the starting checkpoint's, or a fresh one."""
    from .model import build_simsiam, load_model

    torch.manual_seed(seed)
    if start.checkpoint is None:
        return build_simsiam(network), dict(network)
    model, full = load_model(start.checkpoint, start.contrastive)
    for p in model.parameters():
        p.requires_grad_(True)
    log.info("fine-tuning from %s", start.checkpoint)
    return model, dict(full)


def train(
    config: dict,
    network: dict,
    settings: TrainingSettings,
    checkpoint: Path,
    device: torch.device | str = "cpu",
    sitting: Sitting = Sitting(),
    pairs: PairMaker | None = None,
    starting_point: StartingPoint = StartingPoint(),
) -> Path:
    """Train (or go on training) a SimSiam network to ``settings.steps``, saving to ``checkpoint``.

    ``config`` is the CryoSiam config dict stored in the checkpoint's ``hyper_parameters`` (its
    ``parameters.network`` becomes ``network``, or the starting checkpoint's network). ``pairs``
    makes the positive pairs (default: simulated particles with ``settings.views``). With
    ``sitting.resume`` and an existing checkpoint, weights, optimizer state and step are taken from it.
    """
    device = torch.device(device)
    checkpoint = Path(checkpoint)
    model, network = initial_model(network, starting_point, settings.seed)
    # made after the network, from the same seeded generator: a run's weights depend on its seed alone
    head = torch.nn.Linear(int(network["dim"]), simulated_class_count()) if settings.class_weight > 0 else None
    config = dict(config)
    config["parameters"] = dict(config.get("parameters") or {}, network=dict(network))
    check_cryosiam_network(network)
    opt = build_optimizer(model, settings.optimizer, settings.learning_rate, settings.weight_decay, head)
    state = resume_from(checkpoint, model, opt, head) if sitting.resume and checkpoint.is_file() else TrainingState()
    model.to(device).train()
    if head is not None:
        head.to(device).train()
    if state.step >= settings.steps:
        log.info("already trained for %d steps (max_steps %d): nothing to do", state.step, settings.steps)
        return checkpoint

    def save() -> None:
        if not finite_weights(model, head):  # never NaN weights over the last good checkpoint
            raise diverged(state.step, "finite, but the weights are not", last_saved, checkpoint, settings)
        save_training(checkpoint, model, opt, config, settings, state, head)
        if sitting.on_save is not None:
            sitting.on_save(state.step)

    bar = None
    if sitting.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=settings.steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True, disable=None
        )
    start, seconds_before = time.perf_counter(), state.seconds
    last_saved = state.step
    stop_handling = sigterm_as_interrupt()
    recent_loss: list[float] = []
    recent_spread: list[float] = []
    try:
        make = pairs if pairs is not None else simulated_pairs(settings.views)
        workers = batch_workers(sitting.workers, device)
        if workers:
            log.info("simulating batches on %d worker processes", workers)
        steps = range(state.step, settings.steps)
        for at, x1, x2, classes in training_batches(make, settings.batch_size, settings.seed, steps, workers):
            lr = learning_rate_at(at, settings.steps, settings.learning_rate, settings.warmup_steps)
            for group in opt.param_groups:
                group["lr"] = settings.learning_rate if group.get("fix_lr") else lr
            x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
            p1, p2, z1, z2 = model(x1, x2)
            loss = training_loss(p1, p2, z1, z2, classes, settings, head)
            if not torch.isfinite(loss):
                raise diverged(at + 1, f"{float(loss)}", last_saved, checkpoint, settings)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.step = at + 1
            state.seconds = seconds_before + time.perf_counter() - start
            recent_loss.append(float(loss.detach()))
            recent_spread.append(embedding_spread(z1))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{recent_loss[-1]:.3f}", spread=f"{recent_spread[-1]:.2f}", lr=f"{lr:.2g}")
            if state.step % 10 == 0 or state.step == settings.steps:
                state.history.append(
                    {
                        "step": state.step,
                        "loss": float(np.mean(recent_loss)),
                        "spread": float(np.mean(recent_spread)),
                        "seconds": state.seconds,
                    }
                )
                recent_loss, recent_spread = [], []
                if bar is None or bar.disable:
                    log.info(
                        "step %d: loss %.4f, spread %.3f",
                        state.step,
                        state.history[-1]["loss"],
                        state.history[-1]["spread"],
                    )
            out_of_time = sitting.time_limit is not None and time.perf_counter() - start >= sitting.time_limit
            if state.step % sitting.save_every == 0 or state.step >= settings.steps or out_of_time:
                save()
                last_saved = state.step
            if state.step >= settings.steps or out_of_time:
                break
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (sigterm_as_interrupt)
        if state.step > last_saved:
            state.seconds = seconds_before + time.perf_counter() - start
            save()
            log.info("interrupted: saved step %d to %s (run train again to resume)", state.step, checkpoint)
        raise
    finally:
        stop_handling()
        if bar is not None:
            bar.close()
    log.info("trained to step %d in %.0f s in all → %s", state.step, state.seconds, checkpoint)
    return checkpoint


def finite_weights(model, head=None) -> bool:
    """Whether every weight and statistic of the network (and the classifier) is finite."""
    return all(
        bool(torch.isfinite(v).all())
        for m in (model, head)
        if m is not None
        for v in m.state_dict().values()
        if v.is_floating_point()
    )


def diverged(step: int, loss: str, last_saved: int, checkpoint: Path, settings: TrainingSettings) -> ConfigError:
    """The one-line error of a run whose loss (or weights) stopped being finite: nothing is saved
    over the last good checkpoint; it says which step that is and what to change."""
    kept = (
        f"{checkpoint.name} keeps step {last_saved}, the last good one (run train again to resume from it)"
        if checkpoint.is_file()
        else "no checkpoint was written"
    )
    return ConfigError(
        f"training diverged at step {step} (the loss is {loss}): {kept}; lower hyper_parameters.learning_rate "
        f"(now {settings.learning_rate:g}, e.g. to {settings.learning_rate / 10:g})",
        checkpoint,
    )


def sigterm_as_interrupt() -> Callable[[], None]:
    """From now on SIGTERM (a scheduler stopping the job) raises :class:`.errors.Terminated`, a
    KeyboardInterrupt, so training saves and stops as on Ctrl-C; returns what restores the previous
    handler. Only the main thread can handle signals: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def batch_workers(workers: int | None, device: torch.device) -> int:
    """How many processes make batches: ``workers`` as given; by default some on a GPU (where the network
    waits for the simulator) and none on a CPU (where they would take the network's cores); none where
    processes cannot be forked."""
    from .parallel import can_fork, default_workers

    if not can_fork():
        return 0
    if workers is not None:
        return max(0, workers)
    return default_workers() if device.type != "cpu" else 0


def prefetch_batches(batches: Iterator[tuple]) -> Iterator[tuple]:
    """The next batches made by a background thread while the network trains."""
    from .embed import prefetch

    return prefetch(batches, depth=2)
