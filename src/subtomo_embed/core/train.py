"""SimSiam self-supervised training on simulated particles, with predict's exact patch contract.

A positive pair is two *independent simulations* of one particle: same class, size and shape,
two random orientations (any angle), independent noise at a random SNR, and, at random, a
missing wedge. Each view goes through the same label growth, masking, normalization and
pad/crop as ``predict`` (:mod:`subtomo_embed.core.extract`), so the network learns what the two
views share — the shape — and not their noise or mask outline (what an augmented copy of one
noisy patch teaches it; see docs/quickstart.md).

The checkpoint is written in CryoSiam's Lightning layout (``hyper_parameters`` with
``config``/``backbone_config``, ``state_dict`` with ``_model.``) every ``save_every`` steps, with
the optimizer state, so a run can be resumed where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .extract import Normalization, cut_patch, plan_extraction
from .model import build_simsiam, read_checkpoint, save_checkpoint, STATE_PREFIX
from .simulate import degrade, random_particle, render, rotated

log = logging.getLogger(__name__)


@dataclass
class ViewSettings:
    patch_size: tuple[int, int, int]
    masking_type: int
    expand_labels: int
    norm: Normalization
    snr_range: tuple[float, float] = (1.0, 5.0)
    wedge_probability: float = 0.5
    wedge_degrees: float = 60.0
    size_range: tuple[float, float] = (4.5, 7.5)


def particle_view(particle, rng: np.random.Generator, s: ViewSettings) -> np.ndarray:
    """One simulated, degraded and predict-extracted patch of a particle."""
    box = int(2 * math.ceil(2.0 * particle.size) + 3 + 2 * s.expand_labels)
    density, body = render(particle, box)
    snr = float(np.exp(rng.uniform(np.log(s.snr_range[0]), np.log(s.snr_range[1]))))
    wedge = s.wedge_degrees if rng.random() < s.wedge_probability else None
    volume = degrade(density, rng, snr, wedge)
    plan = plan_extraction(body.astype(np.int32), s.expand_labels)
    patch, _ = cut_patch(volume, plan.regions[0], s.patch_size, s.masking_type, s.norm)
    return patch


def pair_batch(rng: np.random.Generator, batch: int, s: ViewSettings) -> tuple[torch.Tensor, torch.Tensor]:
    v1, v2 = [], []
    for _ in range(batch):
        p = random_particle(rng, size_range=s.size_range)
        v1.append(particle_view(p, rng, s))
        v2.append(particle_view(rotated(p, rng), rng, s))
    return torch.from_numpy(np.stack(v1)[:, None]), torch.from_numpy(np.stack(v2)[:, None])


def simsiam_loss(p1, p2, z1, z2) -> torch.Tensor:
    return -(F.cosine_similarity(p1, z2, dim=1).mean() + F.cosine_similarity(p2, z1, dim=1).mean()) / 2


def train(
    config: dict,
    network: dict,
    settings: ViewSettings,
    out: Path,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = True,
    save_every: int = 50,
    progress: bool = True,
) -> Path:
    """Train (or resume) and write ``out`` (a CryoSiam-layout checkpoint). Returns its path."""
    from ..core.embed import prefetch

    torch.manual_seed(seed)
    model = build_simsiam(network).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    start = 0
    if resume and out.is_file():
        ckpt = read_checkpoint(out)
        model.load_state_dict({k[len(STATE_PREFIX):]: v for k, v in ckpt["state_dict"].items()})
        if ckpt.get("optimizer_states"):
            optimizer.load_state_dict(ckpt["optimizer_states"][0])
        start = int(ckpt.get("global_step", 0))
        log.info("resuming %s at step %d", out, start)
    if start >= steps:
        log.info("%s already trained for %d steps", out, start)
        return out
    model.train()
    schedule = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))  # noqa: E731
    rng = np.random.default_rng([seed, start])
    batches = prefetch((pair_batch(rng, batch_size, settings) for _ in range(start, steps)), depth=3)
    from tqdm import tqdm

    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    loss_avg, spread = float("nan"), float("nan")
    step = start
    for step, (x1, x2) in enumerate(batches, start=start + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * schedule(step)
        p1, p2, z1, z2 = model(x1.to(device), x2.to(device))
        loss = simsiam_loss(p1, p2, z1, z2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # collapse watch: std of the normalized projections, 1/sqrt(dim) when healthy, 0 when collapsed
        spread = float(F.normalize(z1, dim=1).std(dim=0).mean()) * math.sqrt(z1.shape[1])
        value = float(loss.detach())
        loss_avg = value if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * value
        bar.set_postfix(loss=f"{loss_avg:.3f}", spread=f"{spread:.2f}")
        bar.update(1)
        if step % save_every == 0 or step == steps:
            _save(out, model, optimizer, config, network, step, loss_avg, spread, time.perf_counter() - t0)
    bar.close()
    log.info("trained to step %d (loss %.3f, spread %.2f) in %.0f s → %s", step, loss_avg, spread,
             time.perf_counter() - t0, out)
    return out


def _save(out, model, optimizer, config, network, step, loss, spread, seconds) -> None:
    cfg = dict(config)
    cfg.setdefault("parameters", {})
    cfg["parameters"] = dict(cfg["parameters"], network=dict(network))
    model.eval()
    save_checkpoint(out, model, cfg, step=step, extra={
        "optimizer_states": [optimizer.state_dict()],
        "subtomo_train": {"loss": loss, "spread": spread, "seconds": seconds},
    })
    model.train()
