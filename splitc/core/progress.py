"""Progress bars for the long steps (training exits, bottlenecks, defences, attackers; profiling).

A bar (``tqdm``, with the rate and an estimate of the time left) is drawn on stderr only
when stderr is a terminal and the ``splitc`` logger shows INFO (so ``-q`` hides it); in a
non-interactive log each step is one INFO line instead, which CI logs keep readable.

Example:
    >>> for epoch in progress(range(3), "training", unit="epoch"):
    ...     pass
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

__all__ = ["progress", "interactive"]

T = TypeVar("T")
log = logging.getLogger("splitc")


def interactive() -> bool:
    """Whether a progress bar would be seen: stderr is a terminal and INFO messages are shown."""
    return sys.stderr.isatty() and log.isEnabledFor(logging.INFO)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             every: int = 0) -> Iterator[T]:
    """Iterate ``items`` with a progress bar (terminal) or INFO lines (logs; every ``every`` items, 0 = only the end).

    Args:
        items: what to iterate.
        desc: what is being done, e.g. ``"[exits] training heads"``.
        total: the number of items when ``items`` has no ``len``.
        unit: the unit of one item, for the rate.
    """
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    if interactive():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)
        return
    start = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        if (every and done % every == 0) or (total is not None and done == total):
            log.info("%s: %d/%s %s(s) (%.1fs)", desc, done, total if total is not None else "?", unit,
                     time.perf_counter() - start)
