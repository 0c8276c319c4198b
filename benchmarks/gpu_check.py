#!/usr/bin/env python3
"""GPU check (issue 30): one prepared script that measures embedding throughput whenever a GPU is at hand.

    bash benchmarks/gpu_check.sh OUTDIR [options]     # the venv's python; $OUT wins over OUTDIR if set
    .venv/bin/python benchmarks/gpu_check.py --out OUTDIR [--device auto|cpu|cuda|cuda:N] [--budget-s 420]
        [--tiny] [--row-s 15] [--skip ROW ...] [--tomograms 20] [--batch-size 32] [--threads N] [--no-profile]

It prints the device (GPU name, memory, torch / CUDA / cuDNN versions, TF32 settings; on the CPU it
says so), makes 20 synthetic tomograms 96×256×256 with 64 instance masks each (fixed seed, numpy),
builds the network ``core/model.py`` builds for CryoSiam's config (bottleneck ResNet, filters 64-512,
dim 1024, 64³ patches; ``--tiny``: a small basic ResNet on 16³ patches and 3 tomograms, for the CPU),
gives its BatchNorm layers running statistics from real patches (as a trained network has, so that the
precision levers are judged on activations of a realistic scale), then measures one table, one row per
lever: each lever alone against the fp32 baseline, then the best combination.

* **model** patches/s: the network called directly (``SimSiam.embed``) on the patches already cut and
  stacked in host memory, in the same batches as the EMBED path (each tomogram's patches in batches
  of ``batch_size``): host-to-device copy, network, results gathered back on the host.
* **EMBED** patches/s: predict's own loop, ``stages.embedding.embed_tomograms`` over every tomogram
  (read the tomogram and mask, grow the labels, cut the patches on threads, ``core.embed.embed_patches``,
  write the four outputs), the lever set through the config (``mixed_precision``,
  ``hyper_parameters.batch_size``) where the package has it, else by wrapping the network the run
  holds (bf16 on CUDA, ``channels_last_3d``, torch.compile, CUDA graphs) or by a global setting
  (``cudnn.benchmark``, the patch-cutting threads).
* **min cos**: the smallest cosine similarity, over every patch and both columns, between the row's
  embeddings and the fp32 baseline's model embeddings (its first run). The baseline's own row is
  therefore its EMBED output and its repeated model runs against that reference: 1 within float
  tolerance when the EMBED path gives what the network gives.

Each row has a time box (``--row-s``: a warm-up, then up to 3 timed runs alternating model and
EMBED while the box lasts; the median counts) and the whole run a budget (``--budget-s``, default
420 s: a row whose expected cost, from the baseline's, does not fit what is left is skipped with the
reason, and so is a lever that is unavailable: CUDA-only levers on the CPU, a torch.compile that
fails, a batch that runs out of memory). A running row is not cut short, so the budget can be
overrun by at most one row. Then a training-step row (``core.train``'s loss and optimizer: forward +
backward + AdamW on random input of the patch size) and a torch.profiler trace of a few batches of
``embed_patches``, summarised as kernels vs copies vs the rest (Python, the host, GPU idle). Written to
the output folder, rewritten after each row (a killed run leaves what it measured): ``gpu_check.csv``,
``gpu_check.md`` (device, settings, table, notes, profile summary), ``profile_trace.json`` (Chrome
trace format) and ``profile_ops.txt``. Measures; asserts nothing beyond the run completing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]  # the tests' data writers (synthetic.py)

NETWORKS = {
    # what core/model.py builds for CryoSiam's config (NetworkConfig's defaults, docs/config.md)
    "cryosiam": {
        "block_type": "bottleneck",
        "num_layers": [1, 1, 1, 1],
        "num_filters": [64, 128, 256, 512],
        "dim": 1024,
        "pred_dim": 512,
        "no_max_pool": True,
        "spatial_dims": 3,
        "in_channels": 1,
    },
    # a CPU stand-in that runs in seconds (--tiny)
    "tiny": {
        "block_type": "basic",
        "num_layers": [1, 1, 1, 1],
        "num_filters": [8, 16, 32, 64],
        "dim": 128,
        "pred_dim": 32,
        "no_max_pool": True,
        "spatial_dims": 3,
        "in_channels": 1,
    },
}


@dataclass(frozen=True)
class Preset:
    network: str
    tomograms: int
    shape: tuple[int, int, int]
    instances: int
    radius: tuple[int, int]
    patch: int
    batch: int
    sweep: tuple[int, ...]
    train_batch: int
    budget_s: float
    row_s: float
    compile_estimate_s: float  # what a torch.compile row is expected to cost beyond its runs (budget check)


PRESETS = {
    "full": Preset("cryosiam", 20, (96, 256, 256), 64, (4, 10), 64, 32, (10, 16, 64), 4, 420.0, 15.0, 90.0),
    # torch.compile of the tiny network took ~90 s on the 2-core development machine (C++ kernels built)
    "tiny": Preset("tiny", 3, (32, 64, 64), 16, (2, 5), 16, 8, (4, 16), 4, 120.0, 3.0, 90.0),
}

PRECISION_MIN_COS = 0.99  # a precision lever enters the best combination only if its embeddings stay this close
FP32_MIN_COS = 0.999  # and any other lever only this close
MIN_GAIN = 1.03  # ... and only if it is at least this much faster than the baseline
MAX_REPS = 3
COLUMNS = [
    "row",
    "levers",
    "batch_size",
    "model_patches_per_s",
    "embed_patches_per_s",
    "embed_over_model",
    "min_cos_vs_fp32",
    "runs",
    "seconds",
    "status",
    "note",
]


class Skip(Exception):
    """A row that is not measured, and why."""


# --------------------------------------------------------------------------------------------
# the device


def pick(requested: str) -> torch.device:
    requested = requested.strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {requested}: no CUDA GPU visible (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); use --device cpu"
        )
    return device


def device_report(device: torch.device) -> list[str]:
    """What the numbers were measured on, one fact a line."""
    lines = [
        f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}, "
        f"cuDNN {cudnn_version()}, "
        f"Python {platform.python_version()}",
        f"host: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs usable, "
        f"torch threads {torch.get_num_threads()}",
    ]
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        lines.insert(
            0,
            f"device: {device} = {props.name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} free), "
            f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs",
        )
        try:
            lines.append(
                f"TF32: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} (True: fp32 convolutions run in TF32), "
                f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
            )
        except Exception as err:  # the TF32 switches have been renamed across torch versions
            lines.append(f"TF32 settings not readable ({type(err).__name__})")
        driver = nvidia_smi()
        if driver:
            lines.append(f"nvidia-smi: {driver}")
    else:
        lines.insert(0, f"device: CPU ({platform.processor() or platform.machine()}); no CUDA GPU used")
    return lines


def cudnn_version() -> str:
    if not torch.backends.cudnn.is_available():
        return "none"
    v = torch.backends.cudnn.version() or 0
    return f"{v // 10000}.{v % 10000 // 100}.{v % 100}" if v >= 10000 else str(v)  # cuDNN 9: 92000 = 9.20.0


def nvidia_smi() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# synthetic tomograms


def make_tomograms(root: Path, p: Preset, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``n`` tomograms with ``p.instances`` ellipsoids each (labels 1..k, may overlap), made in their own
    boxes (fast at any size), written as MRC + CryoSiam HDF5 masks; fixed seed."""
    from synthetic import write_h5_mask, write_mrc

    data, masks = root / "data", root / "masks"
    data.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shape = np.array(p.shape)
    for t in range(n):
        mask = np.zeros(p.shape, np.int32)
        for label in range(1, p.instances + 1):
            r = rng.integers(p.radius[0], p.radius[1] + 1, 3)
            c = np.array([rng.integers(r[k], shape[k] - r[k]) for k in range(3)])
            lo, hi = c - r, c + r + 1
            zz, yy, xx = np.ogrid[lo[0] - c[0] : hi[0] - c[0], lo[1] - c[1] : hi[1] - c[1], lo[2] - c[2] : hi[2] - c[2]]
            inside = (zz / r[0]) ** 2 + (yy / r[1]) ** 2 + (xx / r[2]) ** 2 <= 1
            mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = label
        volume = rng.standard_normal(p.shape, dtype=np.float32)
        volume *= 0.2
        volume += 0.5
        volume += 0.3 * (mask > 0)
        stem = f"TS_{t + 1:02d}"
        write_mrc(data / f"{stem}.mrc", volume)
        write_h5_mask(masks / f"{stem}_instance_preds.h5", mask)
    return data, masks


# --------------------------------------------------------------------------------------------
# levers


@dataclass(frozen=True)
class Variant:
    """One row's settings; everything off is the fp32 baseline."""

    name: str
    batch: int
    precision: str = "fp32"  # fp32 | mixed (the package's mixed_precision) | bf16 (autocast, wrapped)
    channels_last: bool = False
    cudnn_benchmark: bool = False
    pinned: bool = False  # model column: pinned host batches + non_blocking copies (EMBED pins on CUDA anyway)
    graph: str = ""  # "" | compile (torch.compile) | cudagraph (one captured CUDA graph)
    workers: int | None = None  # patch-cutting threads (None: the package's default)

    def levers(self, default_workers: int, baseline_batch: int) -> str:
        parts = [
            f"batch size {self.batch}" if self.batch != baseline_batch else "",
            {"fp32": "", "mixed": "mixed_precision", "bf16": "bf16 autocast"}[self.precision],
            "channels_last_3d" if self.channels_last else "",
            "cudnn.benchmark" if self.cudnn_benchmark else "",
            "pinned + non_blocking" if self.pinned else "",
            {"": "", "compile": "torch.compile", "cudagraph": "CUDA graph"}[self.graph],
            f"{self.workers} cutting threads" if self.workers is not None and self.workers != default_workers else "",
        ]
        return ", ".join(p for p in parts if p) or "none (fp32)"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "mixed":  # as core.embed.embed_patches chooses
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if precision == "bf16":
        return torch.bfloat16
    return None


class Lever(nn.Module):
    """The network with a row's levers, with ``SimSiam.embed``'s signature, so that the EMBED path
    (``embed_patches`` calls ``model.embed``) and the model column run the same thing.

    torch.compile and the CUDA graph run one fixed batch shape: a shorter batch (each tomogram's
    last) is padded with zero patches and its rows taken back (BatchNorm in eval mode treats each
    patch alone, so the padding does not change the others' embeddings)."""

    def __init__(self, net: nn.Module, v: Variant, device: torch.device):
        super().__init__()
        self.net = net
        self.v = v
        self.device_ = device
        self.dtype = autocast_dtype(v.precision, device)
        self.compiled: Callable | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: torch.Tensor | None = None
        self.static_out: torch.Tensor | None = None
        self.compile_s = 0.0

    def embed(self, x: torch.Tensor, contrastive: bool = True, rotations: int = 1) -> torch.Tensor:
        if rotations != 1:
            raise ValueError("gpu_check measures embedding_rotations 1 only")
        if self.v.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        cast = (
            torch.autocast(self.device_.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        )
        with cast:
            if self.v.graph == "compile":
                return self._compiled(x, contrastive)
            if self.v.graph == "cudagraph":
                return self._graphed(x, contrastive)
            return self.net.embed(x, contrastive=contrastive)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        n, batch = x.shape[0], self.v.batch
        if n > batch:
            raise ValueError(f"batch of {n} > {batch}")
        if n == batch:
            return x
        pad = torch.zeros((batch - n, *x.shape[1:]), dtype=x.dtype, device=x.device)
        out = torch.cat([x, pad])
        return out.contiguous(memory_format=torch.channels_last_3d) if self.v.channels_last else out

    def _compiled(self, x: torch.Tensor, contrastive: bool) -> torch.Tensor:
        if self.compiled is None:
            net = self.net
            self.compiled = torch.compile(lambda t: net.embed(t, contrastive=contrastive), dynamic=False)
            start = time.perf_counter()
            self.compiled(self._padded(x))  # compiles here
            sync(self.device_)
            self.compile_s = time.perf_counter() - start
        return self.compiled(self._padded(x))[: x.shape[0]]

    def _graphed(self, x: torch.Tensor, contrastive: bool) -> torch.Tensor:
        n = x.shape[0]
        if self.graph is None:
            self._capture(x, contrastive)
        assert self.static_in is not None and self.static_out is not None and self.graph is not None
        self.static_in[:n].copy_(x)
        if n < self.v.batch:
            self.static_in[n:].zero_()
        self.graph.replay()
        return self.static_out[:n].clone()

    def _capture(self, x: torch.Tensor, contrastive: bool) -> None:
        start = time.perf_counter()
        static_in = self._padded(x).clone()
        if self.v.channels_last:
            static_in = static_in.contiguous(memory_format=torch.channels_last_3d)
        side = torch.cuda.Stream(self.device_)
        side.wait_stream(torch.cuda.current_stream(self.device_))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the capture (cuDNN plans, allocator)
                self.net.embed(static_in, contrastive=contrastive)
        torch.cuda.current_stream(self.device_).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.net.embed(static_in, contrastive=contrastive)
        self.graph, self.static_in, self.static_out = graph, static_in, static_out
        sync(self.device_)
        self.compile_s = time.perf_counter() - start


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def cutting_workers(workers: int | None) -> Iterator[None]:
    """The package's patch-cutting threads (``parallel.default_workers``: min(4, CPUs)) set to ``workers``."""
    if workers is None:
        yield
        return
    from subtomo_embed.core import extract, parallel

    saved = parallel.default_workers, extract.default_workers
    parallel.default_workers = extract.default_workers = lambda: workers  # type: ignore[assignment]
    try:
        yield
    finally:
        parallel.default_workers, extract.default_workers = saved


# --------------------------------------------------------------------------------------------
# the check


@dataclass
class Row:
    row: str
    levers: str
    batch_size: int | str
    model: float | None = None
    embed: float | None = None
    min_cos: float | None = None
    runs: int = 0
    seconds: float = 0.0
    status: str = "ok"
    note: str = ""

    def csv(self) -> dict:
        def num(x: float | None, digits: int) -> str:
            return "" if x is None else f"{x:.{digits}f}"

        ratio = self.embed / self.model if self.embed and self.model else None
        return {
            "row": self.row,
            "levers": self.levers,
            "batch_size": self.batch_size,
            "model_patches_per_s": num(self.model, 1),
            "embed_patches_per_s": num(self.embed, 1),
            "embed_over_model": num(ratio, 2),
            "min_cos_vs_fp32": num(self.min_cos, 6),
            "runs": self.runs,
            "seconds": f"{self.seconds:.1f}",
            "status": self.status,
            "note": self.note,
        }


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    cos = num / np.maximum(den, 1e-30)
    return float(np.nan_to_num(cos, nan=-1.0).min())


@dataclass
class Check:
    args: argparse.Namespace
    preset: Preset
    device: torch.device
    root: Path
    started: float
    budget_s: float
    rows: list[Row] = field(default_factory=list)
    reference: np.ndarray | None = None
    rep_estimate_s: float = 0.0  # the baseline's warm-up + one run of both columns
    reserve_s: float = 0.0  # kept for the rows after the single levers
    on_row: Callable[[], None] | None = None  # called after each row (the tables are rewritten)

    # ---- set-up

    def setup(self) -> None:
        from synthetic import write_config

        from subtomo_embed.core.config import load_config
        from subtomo_embed.core.model import build_simsiam, save_checkpoint
        from subtomo_embed.stages.embedding import Run, predict_job, prepare, start_run
        from subtomo_embed.stages.tomograms import list_tomograms

        p = self.preset
        self.network = NETWORKS[p.network]
        data, masks = make_tomograms(self.root, p, self.args.tomograms)
        torch.manual_seed(0)
        net = build_simsiam(self.network)
        ckpt = self.root / "model.ckpt"
        save_checkpoint(ckpt, net, {"parameters": {"network": self.network}})
        self.config = write_config(
            self.root / "config.yaml",
            data_folder=data,
            instances_mask_folder=masks,
            prediction_folder=self.root / "out",
            trained_model=ckpt,
            parameters__data__patch_size=[p.patch] * 3,
            parameters__network__dim=self.network["dim"],
            hyper_parameters__batch_size=self.args.batch_size,
            min_particle_size=10,
            masking_type=1,
            expand_labels=2,
        )
        (self.root / "out").mkdir()
        cfg = load_config(self.config)
        run = start_run("predict", cfg, self.root / "out", None, str(self.device), overwrite=True, keep_going=False)
        self.loaded = run.model
        self.tomograms = list_tomograms(cfg)
        self.stems = [cfg.stem(t.name) for t in self.tomograms]
        self.patches: list[np.ndarray] = []  # per tomogram, its patches stacked [n, z, y, x], cut by predict's code
        for stem, t in zip(self.stems, self.tomograms):
            instances = prepare(run, stem, partial(predict_job, run, t)).instances
            if instances is None:
                raise SystemExit(f"{stem}: nothing to embed")
            self.patches.append(np.stack(list(instances.patches)).astype(np.float32, copy=False))
        self.count = sum(len(p) for p in self.patches)
        self.Run = Run
        self.predict_job = predict_job
        self.load_config = load_config
        self.calibrate(self.loaded.model)
        for param in self.loaded.model.parameters():
            param.requires_grad_(False)  # inference only (autocast then caches no weight casts; graphs capture cleanly)
        self._pinned: list[torch.Tensor] | None = None

    def calibrate(self, net: nn.Module) -> None:
        """BatchNorm running statistics from real patches (cumulative average over a few batches), so
        the activations have a trained network's scale and the precision levers are judged fairly."""
        batch = self.first_patches(4 * self.args.batch_size)
        saved = {}
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                saved[m] = m.momentum
                m.momentum = None
        net.to(self.device).train()
        with torch.no_grad():
            for i in range(0, len(batch), self.args.batch_size):
                chunk = batch[i : i + self.args.batch_size]
                if len(chunk) > 1:
                    x = torch.from_numpy(np.stack(chunk)[:, None]).to(self.device)
                    net.embed(x)
        for m, momentum in saved.items():
            m.momentum = momentum
        net.eval()
        sync(self.device)

    def first_patches(self, k: int) -> list[np.ndarray]:
        return [p for stacked in self.patches for p in stacked][:k]

    def host_batches(self, batch: int, pinned: bool) -> list[torch.Tensor]:
        """Every tomogram's patches in batches of ``batch`` [n, 1, z, y, x], as embed_patches stacks them
        (views of one stacked array per tomogram, in page-locked memory with ``pinned``)."""
        stacked = [torch.from_numpy(p)[:, None] for p in self.patches]
        if pinned:
            if self._pinned is None:
                self._pinned = [t.pin_memory() for t in stacked]
            stacked = self._pinned
        return [t[i : i + batch] for t in stacked for i in range(0, t.shape[0], batch)]

    # ---- budget

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def need(self, v: Variant) -> float:
        """What a row is expected to cost (from the baseline's warm-up and first run), plus what is kept
        for the rows after it (the best combination, the training step and the profile)."""
        need = self.rep_estimate_s * (2.0 if v.batch < self.args.batch_size else 1.0)
        if v.graph == "compile":
            need += self.preset.compile_estimate_s
        return need + self.reserve_s

    # ---- the two columns

    def model_pass(self, lever: Lever, batches: list[torch.Tensor], v: Variant) -> tuple[float, np.ndarray]:
        sync(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            outs = [lever.embed(b.to(self.device, non_blocking=v.pinned)).float() for b in batches]
            emb = torch.cat(outs).cpu()
        sync(self.device)
        return time.perf_counter() - start, emb.numpy()

    def embed_pass(self, lever: Lever, v: Variant, upto: int | None = None) -> tuple[float, np.ndarray]:
        import h5py

        from subtomo_embed.core import layout

        cfg = self.load_config(
            self.config,
            [
                f"hyper_parameters.batch_size={v.batch}",
                f"mixed_precision={'true' if v.precision == 'mixed' else 'false'}",
            ],
        )
        out = self.root / "out"
        run = self.Run("predict", cfg, out, dataclasses.replace(self.loaded, model=lever), self.device, overwrite=True)
        pairs = list(zip(self.stems, self.tomograms))[:upto]
        jobs = [(stem, partial(self.predict_job, run, t)) for stem, t in pairs]
        from subtomo_embed.stages.embedding import embed_tomograms

        sync(self.device)
        start = time.perf_counter()
        summary = embed_tomograms(run, jobs)
        sync(self.device)
        seconds = time.perf_counter() - start
        if summary.done != [stem for stem, _ in pairs]:
            raise RuntimeError(f"EMBED did not complete every tomogram: {summary.failed}")
        emb = []
        for stem, _ in pairs:
            with h5py.File(layout.TomogramOutputs(out, stem).embeds, "r") as f:
                emb.append(f["embeddings"][()].T)  # [dim, N] in the file
        return seconds, np.concatenate(emb)

    # ---- one row

    def measure(self, v: Variant, note: str = "") -> Row:
        default_workers = self.default_workers()
        row = Row(v.name, v.levers(default_workers, self.args.batch_size), v.batch)
        start = time.perf_counter()
        lever = None
        try:
            self.available(v)
            if self.rows and self.left() < self.need(v):
                raise Skip(
                    f"time budget: {max(self.left(), 0):.0f} s of {self.budget_s:.0f} s left, the row needs "
                    f"~{self.need(v) - self.reserve_s:.0f} s"
                    + (f" and ~{self.reserve_s:.0f} s are kept for the rows after it" if self.reserve_s else "")
                )
            net = copy.deepcopy(self.loaded.model)
            if v.channels_last:
                net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            lever = Lever(net, v, self.device).to(self.device).eval()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            with cudnn_benchmark(v.cudnn_benchmark), cutting_workers(v.workers):
                batches = self.host_batches(v.batch, v.pinned)
                sizes: dict[int, torch.Tensor] = {}
                for b in batches:
                    sizes.setdefault(b.shape[0], b)
                warm_start = time.perf_counter()
                self.model_pass(lever, list(sizes.values()), v)  # every batch shape once (compile, capture, tuning)
                self.embed_pass(lever, v, upto=1)
                warm_s = time.perf_counter() - warm_start
                model_s, embed_s, cosines = [], [], []
                while True:
                    seconds, emb = self.model_pass(lever, batches, v)
                    model_s.append(seconds)
                    if self.reference is None:
                        self.reference = emb
                    cosines.append(min_cos(emb, self.reference))
                    seconds, emb = self.embed_pass(lever, v)
                    embed_s.append(seconds)
                    cosines.append(min_cos(emb, self.reference))
                    rep = model_s[-1] + embed_s[-1]
                    spent = time.perf_counter() - start
                    if len(model_s) >= MAX_REPS or spent + rep > self.args.row_s or self.left() < rep + 1:
                        break
            if not self.rep_estimate_s:
                self.rep_estimate_s = warm_s + model_s[0] + embed_s[0]
            row.model = self.count / statistics.median(model_s)
            row.embed = self.count / statistics.median(embed_s)
            row.min_cos = min(cosines)
            row.runs = len(model_s)
            extra = []
            if lever.compile_s:
                extra.append(f"{'compiled' if v.graph == 'compile' else 'captured'} in {lever.compile_s:.1f} s")
            if v.pinned:
                extra.append("pinning affects the model column; EMBED pins on CUDA anyway")
            if self.device.type == "cuda":
                extra.append(f"peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB")
            row.note = "; ".join([n for n in (note, *extra) if n])
        except Skip as why:
            row.status, row.note = "skipped", str(why)
        except (torch.OutOfMemoryError, MemoryError) as err:
            row.status, row.note = "skipped", f"out of memory at batch {v.batch} ({first_line(err)})"
        except Exception as err:  # a lever that fails is reported, the others go on
            from subtomo_embed.core.errors import ResourceError

            reason = "out of memory" if isinstance(err, ResourceError) else "failed"
            what = "torch.compile" if v.graph == "compile" else v.name
            row.status, row.note = "skipped", f"{what} {reason}: {type(err).__name__}: {first_line(err)}"
            traceback.print_exc(file=sys.stderr)  # for whoever reads the device run's output
        finally:
            del lever
            self.free(v)
        row.seconds = time.perf_counter() - start
        self.add(row)
        return row

    def available(self, v: Variant) -> None:
        cuda = self.device.type == "cuda"
        if v.cudnn_benchmark and not cuda:
            raise Skip("needs CUDA (cuDNN autotuning); CPU run")
        if v.pinned and not cuda:
            raise Skip("needs CUDA (pinned memory speeds host-to-GPU copies only); CPU run")
        if v.graph == "cudagraph" and not cuda:
            raise Skip("needs CUDA (CUDA graphs); CPU run")
        if v.graph == "compile" and not hasattr(torch, "compile"):
            raise Skip(f"torch.compile not in torch {torch.__version__}")

    def free(self, v: Variant) -> None:
        if v.graph == "compile":
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row()
        r = row.csv()
        if row.status == "ok":
            text = (
                f"{row.row:22s} model {r['model_patches_per_s']:>8s}/s  EMBED {r['embed_patches_per_s'] or '-':>8s}/s  "
                f"min cos {r['min_cos_vs_fp32'] or '-'}  ({row.runs} runs, {row.seconds:.1f} s)"
            )
            if row.note:
                text += "  " + row.note
        else:
            text = f"{row.row:22s} {row.status}: {row.note}"
        print(text, flush=True)

    def skip(self, name: str, levers: str, batch: int | str, reason: str) -> None:
        self.add(Row(name, levers, batch, status="skipped", note=reason))

    @staticmethod
    def default_workers() -> int:
        from subtomo_embed.core.parallel import default_workers

        return default_workers()

    # ---- the rows

    def run_rows(self) -> None:
        b0 = self.args.batch_size
        skip = set(self.args.skip)
        base = Variant("fp32_baseline", b0)
        baseline = self.measure(base, note=f"reference; {self.count} patches in {len(self.stems)} tomograms")
        if baseline.status != "ok":
            raise SystemExit(f"the fp32 baseline failed: {baseline.note}")
        singles = [  # in order of what the budget should reach first
            Variant("mixed_precision", b0, precision="mixed"),
            Variant("bf16_autocast", b0, precision="bf16"),
            Variant("channels_last_3d", b0, channels_last=True),
            Variant("cudnn_benchmark", b0, cudnn_benchmark=True),
            Variant("pinned_non_blocking", b0, pinned=True),
            Variant("cuda_graph", b0, graph="cudagraph"),
            Variant("torch_compile", b0, graph="compile"),
            *[Variant(f"batch_{b}", b) for b in self.preset.sweep if b != b0],
        ]
        notes = {
            "mixed_precision": "the package's mixed_precision: true ("
            + ("fp16" if self.device.type == "cuda" else "bf16")
            + " autocast)",
            "bf16_autocast": "bf16 autocast around the network"
            + ("; not selectable in the package on CUDA" if self.device.type == "cuda" else "; = mixed_precision here"),
        }
        default = self.default_workers()
        cpus = len(os.sched_getaffinity(0))
        workers = sorted({w for w in (1, 2 * default, cpus) if w != default and 1 <= w <= cpus})
        for w in workers:
            singles.append(Variant(f"workers_{w}", b0, workers=w))
        measured: dict[str, Row] = {"fp32_baseline": baseline}
        self.reserve_s = 3 * self.rep_estimate_s  # the best combination, the training step, the profile
        for v in singles:
            if v.name in skip:
                self.skip(v.name, v.levers(default, b0), v.batch, "skipped by --skip")
                continue
            measured[v.name] = self.measure(v, notes.get(v.name, ""))
        if not workers:
            self.skip("workers", "patch-cutting threads", b0, f"one CPU only: nothing to vary (default {default})")
        self.reserve_s = 0.0
        if "best_combination" in skip:
            self.skip("best_combination", "", b0, "skipped by --skip")
        else:
            self.best_combination(measured, singles, default)
        if "training_step" in skip:
            self.skip("training_step", "SimSiam step", self.preset.train_batch, "skipped by --skip")
        else:
            self.training_row()

    def best_combination(self, measured: dict[str, Row], singles: list[Variant], default_workers: int) -> None:
        """Each lever that gained > 3 % alone (EMBED patches/s) with embeddings close enough, combined."""
        base = measured["fp32_baseline"]
        b0 = self.args.batch_size

        def gain(name: str) -> float:
            row = measured.get(name)
            if row is None or row.status != "ok":
                return 0.0
            if name == "pinned_non_blocking":  # pinning changes the model column only
                return (row.model or 0.0) / (base.model or 1.0)
            return (row.embed or 0.0) / (base.embed or 1.0)

        def close(name: str, bound: float) -> bool:
            row = measured.get(name)
            return row is not None and row.min_cos is not None and row.min_cos >= bound

        by_name = {v.name: v for v in singles}
        chosen = Variant("best_combination", b0)
        picked = []
        precisions = [n for n in ("mixed_precision", "bf16_autocast") if close(n, PRECISION_MIN_COS)]
        best_precision = max(precisions, key=gain, default=None)
        if best_precision and gain(best_precision) >= MIN_GAIN:
            chosen = dataclasses.replace(chosen, precision=by_name[best_precision].precision)
            picked.append(best_precision)
        for name, flag in (
            ("channels_last_3d", "channels_last"),
            ("cudnn_benchmark", "cudnn_benchmark"),
            ("pinned_non_blocking", "pinned"),
        ):
            if gain(name) >= MIN_GAIN and close(name, FP32_MIN_COS):
                chosen = dataclasses.replace(chosen, **{flag: True})
                picked.append(name)
        batches = [n for n in measured if n.startswith("batch_") and close(n, FP32_MIN_COS)]
        best_batch = max(batches, key=gain, default=None)
        if best_batch and gain(best_batch) >= MIN_GAIN:
            chosen = dataclasses.replace(chosen, batch=by_name[best_batch].batch)
            picked.append(best_batch)
        workers = [n for n in measured if n.startswith("workers_")]
        best_workers = max(workers, key=gain, default=None)
        if best_workers and gain(best_workers) >= MIN_GAIN:
            chosen = dataclasses.replace(chosen, workers=by_name[best_workers].workers)
            picked.append(best_workers)
        graphs = [n for n in ("cuda_graph", "torch_compile") if close(n, FP32_MIN_COS)]
        best_graph = max(graphs, key=gain, default=None)
        if best_graph and gain(best_graph) >= MIN_GAIN:
            chosen = dataclasses.replace(chosen, graph=by_name[best_graph].graph)
            picked.append(best_graph)
        left_out = ""
        if chosen.graph == "compile" and self.left() < self.need(chosen):  # compiling again would not fit
            graph = "cudagraph" if "cuda_graph" in graphs and gain("cuda_graph") >= MIN_GAIN else ""
            chosen = dataclasses.replace(chosen, graph=graph)
            picked = [p for p in picked if p != "torch_compile"] + (["cuda_graph"] if graph else [])
            left_out = "; torch.compile left out (no time left in the budget to compile again)"
        if not picked:
            self.skip(
                "best_combination",
                "none",
                b0,
                f"no lever gained {100 * (MIN_GAIN - 1):.0f} % over the fp32 baseline alone: the best is the baseline"
                + left_out,
            )
            return
        self.measure(chosen, note="from " + ", ".join(picked) + left_out)

    def training_row(self) -> None:
        """Steps/s of core.train's step: forward of both views, training_loss, backward, AdamW (random input)."""
        batch = self.preset.train_batch
        row = Row("training_step", f"SimSiam step fp32, {batch} pairs of {self.preset.patch}³", batch)
        start = time.perf_counter()
        try:
            need = self.rep_estimate_s
            if self.left() < need:
                raise Skip(f"time budget: {max(self.left(), 0):.0f} s left, the row needs ~{need:.0f} s")
            box = min(self.args.row_s, max(self.left() - 1, 1.0)) / 2
            rate, steps, loss = train_steps(self.network, batch, self.preset.patch, self.device, box)
            row.model = 2 * batch * rate
            row.runs = steps
            row.note = (
                f"{rate:.2f} steps/s; model column = views/s (2 per pair, forward + backward + AdamW); "
                f"no embeddings to compare; loss {loss:.3f}; particle simulation not included (bench_training.py)"
            )
            if self.device.type == "cuda":
                row.note += f"; peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"
        except Skip as why:
            row.status, row.note = "skipped", str(why)
        except (torch.OutOfMemoryError, MemoryError) as err:
            row.status, row.note = "skipped", f"out of memory at {batch} pairs ({first_line(err)})"
        except Exception as err:
            row.status, row.note = "skipped", f"failed: {type(err).__name__}: {first_line(err)}"
        finally:
            self.free(Variant("training_step", batch))
        row.seconds = time.perf_counter() - start
        self.add(row)

    # ---- profiler

    def profile(self, out: Path) -> list[str]:
        """A torch.profiler trace of a few batches through core.embed.embed_patches (fp32, baseline batch)."""
        from torch.profiler import ProfilerActivity, profile

        from subtomo_embed.core.embed import embed_patches

        b = self.args.batch_size
        patches = self.first_patches(3 * b)
        need = 2 * self.rep_estimate_s * len(patches) / max(self.count, 1) + 5
        if self.left() < need:
            return [f"profile skipped: time budget ({max(self.left(), 0):.0f} s left)"]
        net = copy.deepcopy(self.loaded.model)
        dim = self.network["dim"]
        embed_patches(net, iter(patches[:b]), min(b, len(patches)), dim, self.device, b)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        main_tid = threading.get_native_id()
        sync(self.device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            embed_patches(net, iter(patches), len(patches), dim, self.device, b)
            sync(self.device)
            wall_us = (time.perf_counter() - start) * 1e6
        trace = out / "profile_trace.json"
        prof.export_chrome_trace(str(trace))
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        try:
            table = prof.key_averages().table(sort_by=sort, row_limit=25)
        except Exception:  # the sort key's name has changed between torch versions
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        (out / "profile_ops.txt").write_text(table + "\n")
        lines = summarise_trace(json.loads(trace.read_text()), wall_us, main_tid, self.device.type == "cuda")
        n = -(-len(patches) // b)
        return [f"profile: embed_patches, {len(patches)} patches in {n} batches of {b}, fp32", *lines]


COPY_OPS = ("copy", "_to_copy", "aten::to", "pin_memory", "aten::stack", "aten::cat", "memcpy", "aten::clone")


def train_steps(network: dict, batch: int, patch: int, device: torch.device, box_s: float) -> tuple[float, int, float]:
    """(steps/s, steps, last loss) of ``core.train.train``'s step on a fresh network: both views forward,
    ``training_loss`` (SimSiam's, as CryoSiam trains), backward, AdamW; fixed random input; 2 warm-up steps,
    then steps for ``box_s`` (at least 3, at most 200)."""
    from subtomo_embed.core.model import build_simsiam
    from subtomo_embed.core.train import TrainingSettings, build_optimizer, training_loss

    torch.manual_seed(0)
    net = build_simsiam(network).to(device).train()
    opt = build_optimizer(net, "adamw", 1e-3, 1e-4)
    settings = TrainingSettings(views=None, steps=10**6, batch_size=batch)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn((batch, 1, patch, patch, patch), generator=gen).to(device)
    x2 = torch.randn((batch, 1, patch, patch, patch), generator=gen).to(device)
    classes = np.zeros(batch, np.int64)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> torch.Tensor:
        p1, p2, z1, z2 = net(x1, x2)
        loss = training_loss(p1, p2, z1, z2, classes, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    steps = 0
    while steps < 3 or (time.perf_counter() - start < box_s and steps < 200):
        loss = step()
        steps += 1
    sync(device)
    return steps / (time.perf_counter() - start), steps, float(loss)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def union_us(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def self_times(events: list[dict]) -> dict[int, list[tuple[str, float]]]:
    """Per thread, (name, self time in µs) of every CPU op (its time minus its children's)."""
    by_tid: dict[int, list[dict]] = {}
    for e in events:
        by_tid.setdefault(e.get("tid"), []).append(e)
    out: dict[int, list[tuple[str, float]]] = {}
    for tid, evs in by_tid.items():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list[list] = []  # [end, name, dur, children]
        done: list[tuple[str, float]] = []
        for e in evs:
            s, d = float(e["ts"]), float(e.get("dur", 0))
            while stack and stack[-1][0] <= s:
                end, name, dur, child = stack.pop()
                done.append((name, dur - child))
            if stack:
                stack[-1][3] += d
            stack.append([s + d, e.get("name", ""), d, 0.0])
        while stack:
            end, name, dur, child = stack.pop()
            done.append((name, dur - child))
        out[tid] = done
    return out


def summarise_trace(trace: dict, wall_us: float, main_tid: int, cuda: bool) -> list[str]:
    """Kernels vs copies vs the rest, from a Chrome trace exported by torch.profiler."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]

    def pct(us: float) -> str:
        return f"{us / 1000:.1f} ms ({100 * us / max(wall_us, 1e-9):.0f} % of {wall_us / 1000:.1f} ms)"

    if cuda:
        kernels = [
            (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events if e.get("cat") == "kernel"
        ]
        copies = [
            (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
            for e in events
            if e.get("cat") in ("gpu_memcpy", "gpu_memset")
        ]
        runtime = sum(float(e.get("dur", 0)) for e in events if e.get("cat") == "cuda_runtime")
        busy = union_us(kernels + copies)
        return [
            f"  GPU kernels: {pct(sum(e - s for s, e in kernels))}, {len(kernels)} launches",
            f"  copies (GPU memcpy/memset): {pct(sum(e - s for s, e in copies))}, {len(copies)} copies",
            f"  GPU idle (Python, host, data path, launch gaps): {pct(max(wall_us - busy, 0.0))}",
            f"  host time in CUDA runtime calls (launches, syncs): {runtime / 1000:.1f} ms",
        ]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    per_thread = self_times(ops)
    main = per_thread.get(main_tid, [])
    copy_us = sum(t for n, t in main if any(k in n for k in COPY_OPS))
    compute_us = sum(t for n, t in main if not any(k in n for k in COPY_OPS))
    others = sum(t for tid, ts in per_thread.items() if tid != main_tid for _, t in ts)
    return [
        f"  kernels (CPU ops computing, main thread): {pct(compute_us)}",
        f"  copies (copy/stack/cat ops, main thread): {pct(copy_us)}",
        f"  Python and the rest (main thread outside ops): {pct(max(wall_us - compute_us - copy_us, 0.0))}",
        f"  other threads' ops (batch stacking, patch cutting; overlapped): {others / 1000:.1f} ms",
    ]


# --------------------------------------------------------------------------------------------
# output


def markdown(rows: list[Row]) -> str:
    head = ["row", "levers", "batch", "model patches/s", "EMBED patches/s", "EMBED/model", "min cos vs fp32", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        r = row.csv()
        note = r["note"] if row.status == "ok" else f"**skipped**: {r['note']}"
        cells = [
            r["row"],
            r["levers"],
            str(r["batch_size"]),
            r["model_patches_per_s"] or "–",
            r["embed_patches_per_s"] or "–",
            r["embed_over_model"] or "–",
            r["min_cos_vs_fp32"] or "–",
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = """\
- **model**: the network called directly on the patches already cut and stacked in host memory (same batches
  as EMBED), host-to-device copy included. **EMBED**: predict's loop (`stages.embedding.embed_tomograms`) over
  every tomogram: read, grow labels, cut patches on threads, `embed_patches`, write four files each.
- **min cos vs fp32**: smallest cosine similarity, over every patch of both columns, to the fp32 baseline's first
  model run (on CUDA the baseline's convolutions run in TF32, PyTorch's default).
- Levers: `mixed_precision` is the package's option (fp16 autocast on CUDA, bf16 on the CPU); bf16 autocast,
  `channels_last_3d`, torch.compile and the CUDA graph wrap the network the run holds (compile and graph run one
  fixed batch shape, each tomogram's last batch padded); `cudnn.benchmark` is global; pinned memory changes the
  model column only (EMBED pins on CUDA already); workers are the package's patch-cutting threads (default
  min(4, CPUs)). Best combination: each lever that alone gained >= 3 % EMBED patches/s with min cos >= 0.999
  (>= 0.99 for precision), the best batch size and the better of compile / graph.
- patches/s: patches over the median time of the timed runs (each row: a warm-up, then up to 3 runs in its time box)."""


def write_outputs(out: Path, header: list[str], rows: list[Row], profile: list[str]) -> str:
    with open(out / "gpu_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow(row.csv())
    text = "\n".join(
        [
            "# GPU check (benchmarks/gpu_check.py)",
            "",
            *[f"- {line}" for line in header],
            "",
            markdown(rows),
            "",
            NOTES,
            "",
            *(["```", *profile, "```", ""] if profile else []),
        ]
    )
    (out / "gpu_check.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.csv/.md and the profile")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    ap.add_argument("--tiny", action="store_true", help="small network, 16³ patches, 3 tomograms: seconds on a CPU")
    ap.add_argument("--budget-s", type=float, default=None, help="total time budget (default 420; --tiny 120)")
    ap.add_argument("--row-s", type=float, default=None, help="time box of one row (default 15; --tiny 3)")
    ap.add_argument("--tomograms", type=int, default=None, help="synthetic tomograms (default 20; --tiny 3)")
    ap.add_argument("--batch-size", type=int, default=None, help="the baseline's batch size (default 32; --tiny 8)")
    ap.add_argument("--skip", nargs="*", default=[], metavar="ROW", help="rows not to run (e.g. torch_compile)")
    ap.add_argument("--no-profile", action="store_true", help="no torch.profiler trace")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch's CPU threads (default: torch's own; --tiny on the CPU: 1, as on a shared machine two "
        "OpenMP threads beside other work ran the tiny network 10x slower than one)",
    )
    args = ap.parse_args(argv)
    started = time.perf_counter()
    preset = PRESETS["tiny" if args.tiny else "full"]
    args.budget_s = preset.budget_s if args.budget_s is None else args.budget_s
    args.row_s = preset.row_s if args.row_s is None else args.row_s
    args.tomograms = preset.tomograms if args.tomograms is None else args.tomograms
    args.batch_size = preset.batch if args.batch_size is None else args.batch_size
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = pick(args.device)
    if args.threads is None and args.tiny and device.type == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    report = device_report(device)
    print("\n".join(report), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        check = Check(args, preset, device, Path(tmp), started, args.budget_s)
        setup_start = time.perf_counter()
        check.setup()
        net = check.network
        settings = (
            f"{preset.network} network ({net['block_type']} ResNet {net['num_layers']}, filters {net['num_filters']}, "
            f"dim {net['dim']}), {check.count} patches of {preset.patch}³ from {len(check.stems)} synthetic tomograms "
            f"{'×'.join(map(str, preset.shape))} (seed 0), masking_type 1, contrastive; "
            f"baseline batch {args.batch_size}"
        )
        print(settings, flush=True)
        print(f"set-up (data, checkpoint, patches, BatchNorm statistics): {time.perf_counter() - setup_start:.1f} s")
        print(f"budget {args.budget_s:.0f} s, rows of {args.row_s:.0f} s", flush=True)
        partial_header = [*report, settings, "(partial: the run has not finished)"]
        check.on_row = lambda: write_outputs(out, partial_header, check.rows, [])  # a killed run leaves its rows
        check.run_rows()
        profile: list[str] = []
        if not args.no_profile:
            try:
                profile = check.profile(out)
            except Exception as err:
                profile = [f"profile failed: {type(err).__name__}: {first_line(err)}"]
            print("\n".join(profile), flush=True)
    total = time.perf_counter() - started
    header = [*report, settings, f"budget {args.budget_s:.0f} s (rows of {args.row_s:.0f} s); took {total:.0f} s"]
    text = write_outputs(out, header, check.rows, profile)
    print()
    print(text)
    print(f"written: {out / 'gpu_check.csv'}, {out / 'gpu_check.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
