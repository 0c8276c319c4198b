"""Batched inference: patches in, one embedding per patch out, the model never waiting on I/O.

Patches are produced by any iterator (cut from a tomogram, or read from a patches file); a
background thread stacks them into batches (pinned memory on CUDA) while the model runs on
the previous batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ConfigError, DeviceError, ResourceError

if TYPE_CHECKING:
    from .model import SimSiam

log = logging.getLogger(__name__)

_DONE = object()


def pick_device(requested: str | None = "auto", gpu_devices: int | list[int] | None = 0) -> torch.device:
    """The device to run on.

    ``requested`` (the ``--device`` option) wins: ``cpu``, ``cuda``, ``cuda:N``; a GPU asked for
    that CUDA does not see is a :class:`DeviceError` (never a silent CPU run: a GPU job that lost
    its GPU, e.g. a container started without ``--nv``, fails at once). With ``auto``,
    ``parameters.gpu_devices`` picks the GPU (an int, or the first of a list; null = CPU);
    without CUDA the CPU is used with a warning.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in ("auto", ""):
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device '{requested}' is not a device (use cpu, cuda, cuda:N or auto)") from None
        if device.type == "cuda":
            check_cuda_device(requested, device.index)
        return device
    if gpu_devices is None or gpu_devices == []:
        return torch.device("cpu")
    index = gpu_devices[0] if isinstance(gpu_devices, list) else gpu_devices
    if isinstance(gpu_devices, list) and len(gpu_devices) > 1:
        log.info("gpu_devices %s: using GPU %d (run one task per GPU to use the others)", gpu_devices, index)
    if not torch.cuda.is_available():
        log.warning("no CUDA GPU available: running on the CPU (slow for CryoSiam-size networks)")
        return torch.device("cpu")
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"parameters.gpu_devices asks for GPU {index}, but only {torch.cuda.device_count()} are visible"
        )
    return torch.device(f"cuda:{index}")


def check_cuda_device(requested: str, index: int | None) -> None:
    """Fail with a :class:`DeviceError` unless CUDA sees the GPU ``requested`` (``cuda`` or ``cuda:N``)."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"--device {requested} asked for, but no CUDA GPU is visible (torch {torch.__version__}, "
            f"{build}; {where}): run on a GPU node with the GPU passed into the container "
            "(Apptainer --nv, Docker --gpus), or use --device cpu"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DeviceError(f"--device {requested} asked for, but only {count} CUDA GPU(s) are visible ({where})")


def prefetch(iterator: Iterable, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead; re-raise its errors here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as err:  # handed to the consumer
            q.put(err)
            return
        q.put(_DONE)

    thread = threading.Thread(target=work, name="subtomo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()


def batched(patches: Iterable[np.ndarray], batch_size: int, pin: bool = False) -> Iterator[torch.Tensor]:
    """Stack patches into [B, 1, z, y, x] float32 tensors."""
    buf: list[np.ndarray] = []
    for patch in patches:
        buf.append(patch)
        if len(buf) == batch_size:
            yield _stack(buf, pin)
            buf = []
    if buf:
        yield _stack(buf, pin)


def _stack(buf: list[np.ndarray], pin: bool) -> torch.Tensor:
    t = torch.from_numpy(np.stack(buf)[:, None].astype(np.float32, copy=False))
    return t.pin_memory() if pin else t


def embed_patches(
    model: SimSiam,
    patches: Iterable[np.ndarray],
    count: int,
    dim: int,
    device: torch.device,
    batch_size: int = 10,
    contrastive: bool = True,
    mixed_precision: bool = False,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embeddings of ``count`` patches as a float32 array [count, dim]."""
    model.to(device).eval()
    out = np.empty((count, dim), dtype=np.float32)
    pin = device.type == "cuda"
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)
        if mixed_precision
        else contextlib.nullcontext()
    )
    row = 0
    try:
        with torch.inference_mode(), autocast:
            for batch in prefetch(batched(patches, batch_size, pin)):
                x = batch.to(device, non_blocking=pin)
                emb = model.embed(x, contrastive=contrastive).float().cpu().numpy()
                n = emb.shape[0]
                if row + n > count:
                    raise RuntimeError(f"more patches than the {count} announced")
                out[row : row + n] = emb
                row += n
                if progress is not None:
                    progress(n)
    except torch.cuda.OutOfMemoryError:
        raise ResourceError(
            f"GPU out of memory at batch size {batch_size}; lower hyper_parameters.batch_size or patch_size"
        ) from None
    if row != count:
        raise RuntimeError(f"expected {count} patches, got {row}")
    return out
