"""Progress in the log: a step that takes more than a few seconds says how far it is.

``io.progress`` draws a bar on a terminal only; the log file (and a batch job's output) gets
nothing from it. :func:`logged` passes items through and writes one line when ``every_s`` seconds
have passed since the last, and one at the end with the time taken.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

EVERY_S = 5.0


def logged(
    items: Iterable[T],
    what: str,
    log: logging.Logger,
    total: int | None = None,
    every_s: float = EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Yield ``items``; log ``<what>: <i> of <total>`` every ``every_s`` seconds and ``<what>: done``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    start = last = clock()
    done = 0
    for item in items:
        yield item
        done += 1
        now = clock()
        if now - last >= every_s:
            log.info("%s: %d of %s (%.0f s)", what, done, total if total is not None else "?", now - start)
            last = now
    log.info("%s: %d done in %.1f s", what, done, clock() - start)
