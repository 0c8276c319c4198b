"""The stream of training batches: positive pairs from a pair maker, batch ``step`` drawn from a
generator seeded by (seed, step), so a resumed run sees the batches a single run would, whoever makes
them (worker processes, or a background thread)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .errors import SubtomoError
from .simulated_views import ViewSettings, make_pair

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
