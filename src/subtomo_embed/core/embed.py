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
from collections.abc import Callable, Generator, Iterable, Iterator
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


def prefetch(iterator: Iterable, depth: int = 2) -> Generator:
    """Run ``iterator`` in a background thread and yield its items here, in order; re-raise its errors here.

    At most ``depth`` items are made and not yet taken, the one being made counted: with ``depth=1``
    the thread makes item i+1 while the consumer works on item i, and nothing further.
    """
    q: queue.Queue = queue.Queue()
    slots = threading.Semaphore(depth)
    stop = threading.Event()

    def work():
        try:
            items = iter(iterator)
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                item = next(items, _DONE)
                q.put(item)
                if item is _DONE:
                    return
        except BaseException as err:  # handed to the consumer
            q.put(err)

    thread = threading.Thread(target=work, name="subtomo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            slots.release()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        slots.release()  # a thread waiting for a slot wakes, sees the stop and ends
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
    channels_last: bool = False,
    rotations: int = 1,
) -> np.ndarray:
    """Embeddings of ``count`` patches as a float32 array [count, dim]; with ``rotations`` > 1 each
    averaged over that rotation group of the cube (:meth:`~.model.SimSiam.embed`).

    One batch is in flight: batch k's embeddings are copied back while the device already runs
    batch k+1 (on CUDA into pinned memory, without blocking; on the CPU the order alone), so the
    device's queue never runs dry while the host collects results. ``channels_last`` runs the
    network and its input in ``torch.channels_last_3d`` (a GPU lever; same embeddings on CPU to
    float tolerance, tests/test_embedding_overlap.py).
    """
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # (torch's stubs lack it)
    out = np.empty((count, dim), dtype=np.float32)
    pin = device.type == "cuda"
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)
        if mixed_precision
        else contextlib.nullcontext()
    )
    row = 0

    def land(flight: _InFlight) -> None:
        nonlocal row
        host, copied = flight
        if copied is not None:
            copied.synchronize()
        n = host.shape[0]
        if row + n > count:
            raise RuntimeError(f"more patches than the {count} announced")
        out[row : row + n] = host.numpy()
        row += n
        if progress is not None:
            progress(n)

    try:
        with torch.inference_mode(), autocast:
            in_flight: _InFlight | None = None
            for batch in prefetch(batched(patches, batch_size, pin), depth=3):
                x = batch.to(device, non_blocking=pin)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                flight = _copy_back(model.embed(x, contrastive=contrastive, rotations=rotations).float(), pin)
                if in_flight is not None:
                    land(in_flight)
                in_flight = flight
            if in_flight is not None:
                land(in_flight)
    except torch.cuda.OutOfMemoryError:
        raise ResourceError(
            f"GPU out of memory at batch size {batch_size}; lower hyper_parameters.batch_size or patch_size"
        ) from None
    if row != count:
        raise RuntimeError(f"expected {count} patches, got {row}")
    return out


# a batch's embeddings on the host, and (CUDA) the event that marks their copy complete
_InFlight = tuple[torch.Tensor, "torch.cuda.Event | None"]


def _copy_back(embeddings: torch.Tensor, pin: bool) -> _InFlight:
    """Start copying ``embeddings`` to host memory: on CUDA asynchronously into pinned memory, with
    an event recorded after the copy (waiting on it does not wait for work queued later)."""
    if not pin:
        return embeddings.cpu(), None
    host = torch.empty(embeddings.shape, dtype=embeddings.dtype, pin_memory=True)
    host.copy_(embeddings, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied
