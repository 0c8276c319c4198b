"""Running one function over many items on a few workers: threads (:func:`thread_map`, lazy and
in order) or forked processes (:func:`fork_map`, for work that holds the GIL).

How much each gains, on which machines, is measured in docs/embedding.md ("Speed").
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any


def default_workers() -> int:
    """Up to 4, never more than the CPUs this process may run on (a SLURM or container allocation)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def thread_map(fn: Callable, items: list, workers: int | None = None, ahead: int = 2) -> Iterator:
    """``map(fn, items)`` in order on a few threads, at most ``ahead`` × workers results waiting,
    so memory stays small. Array work and Qhull release the GIL; the many small calls between
    them do not (:func:`fork_map` does better where forking is safe)."""
    workers = workers or default_workers()
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="subtomo-extract") as pool:
        pending = deque(pool.submit(fn, item) for item in items[: ahead * workers])
        rest = iter(items[ahead * workers :])
        while pending:
            result = pending.popleft().result()
            nxt = next(rest, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result


_END = object()


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux)."""
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


# The work that forked workers inherit: set just before the fork, cleared after. A module-level
# slot because a forked child sees the parent's memory as it was at the fork, and only chunk
# bounds then need to cross the pipe (fn may be a closure over a memory-mapped volume).
_FORKED_WORK: list[tuple[Callable, list]] = []


def _run_forked_chunk(chunk: range) -> list:
    fn, items = _FORKED_WORK[0]
    return [fn(items[i]) for i in chunk]


def fork_map(fn: Callable, items: list, workers: int | None = None, progress: Any = None) -> list:
    """``list(map(fn, items))`` on forked worker processes, for work made of many small NumPy and
    Qhull calls that hold the GIL, where threads barely help.

    The workers inherit ``fn`` and ``items`` through the fork; only results come back. Only for
    processes with no GPU runtime or threads of their own (``extract`` uses it; ``predict`` cuts
    on threads beside the model). In-process where fork is unavailable or one worker is enough;
    ``progress.update(n)`` as chunks finish.
    """
    n = len(items)
    workers = min(workers or default_workers(), max(n // 8, 1))
    step = max(4, min(32, n // (workers * 8) or 1))
    chunks = [range(a, min(a + step, n)) for a in range(0, n, step)]
    results: list = []

    def collect(chunk_results: list) -> None:
        results.extend(chunk_results)
        if progress is not None:
            progress.update(len(chunk_results))

    _FORKED_WORK[:] = [(fn, items)]
    try:
        if workers > 1 and can_fork():
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for chunk_results in pool.imap(_run_forked_chunk, chunks):
                    collect(chunk_results)
        else:
            for chunk in chunks:
                collect(_run_forked_chunk(chunk))
    finally:
        _FORKED_WORK.clear()
    return results
