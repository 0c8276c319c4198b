"""SimSiam self-supervised training: the loop, its losses, and its resumable checkpoints.

Positive pairs come from a pair maker: simulated particles (:mod:`.simulated_views`, by default) or
augmented views of the user's own (:mod:`.real_views`), as batches of :mod:`.pair_stream`. Both kinds
of views hold the config's patch contract (:class:`~.patch_contract.PatchContract`), so a view is
cut exactly as ``predict`` cuts a patch. With ``TrainingSettings.contrast_weight`` > 0 a
supervised-contrastive term joins SimSiam's loss (:func:`class_contrastive_loss`): the batch's views
of one class (the simulator's envelope shape or assembly arrangement) are each other's positives, all
other views negatives. With ``class_weight`` > 0 a linear classifier of those classes on the projector
output does (:func:`class_loss`): what made the embedded model see arrangements of 13-voxel particles
(docs/model.md).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, Terminated
from .pair_stream import PairMaker, batch_workers, simulated_pairs, training_batches
from .patch_contract import views_record
from .real_views import RealViewSettings
from .simulated_views import ViewSettings, class_targets, simulated_class_count, simulated_classes

log = logging.getLogger(__name__)

TRAIN_STATE_KEY = "subtomo_train_state"
OPTIMIZER_KEY = "optimizer_states"
CLASS_HEAD_KEY = "subtomo_class_head"  # the classifier of class_weight (not part of CryoSiam's network)


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


def class_loss(head: torch.nn.Module, z1, z2, classes) -> torch.Tensor:
    """Cross-entropy of a linear classifier of the simulator's classes on both views' projector outputs;
    pairs of other makers (structures, the user's particles: :func:`.simulated_views.simulated_classes`)
    are left out, and a batch without simulated pairs adds 0."""
    keep = simulated_classes(classes)
    if not keep.any():
        return z1.sum() * 0.0
    target = class_targets(np.asarray(classes)[keep]).to(z1.device)
    rows = torch.as_tensor(keep, device=z1.device)
    return 0.5 * (F.cross_entropy(head(z1[rows]), target) + F.cross_entropy(head(z2[rows]), target))


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
    simulated particles' or real particles', each a patch contract plus its augmentation ranges."""

    views: ViewSettings | RealViewSettings
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
            "pairs": views_record(settings.views),
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
        make = pairs
        if make is None:
            assert isinstance(settings.views, ViewSettings), "simulated pairs are made with simulated views"
            make = simulated_pairs(settings.views)
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
