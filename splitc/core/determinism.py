"""Seeded, repeatable training: the same command on the same machine gives the same bundle.

torch's default generator starts from a random seed in every process, so anything that
draws from it unseeded (a layer's initial weights, ``randperm`` batch orders) differs from
run to run. Every trainer in splitc (exit heads, bottlenecks, pruning fine-tunes, privacy
defences and attackers) runs inside :func:`seeded`, which forks the global RNG, seeds it
from ``--seed`` and a per-use offset, and asks torch for deterministic algorithms where it
has them. Results still depend on the thread count (float sums are ordered per thread), so
trainers that pin a thread count do it inside the block.

Example:
    >>> import torch
    >>> with seeded(0):
    ...     a = torch.rand(2)
    >>> with seeded(0):
    ...     b = torch.rand(2)
    >>> bool((a == b).all())
    True
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

__all__ = ["seeded", "derive_seed"]


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed for one use (``parts`` name it), independent of ``PYTHONHASHSEED``."""
    import zlib

    text = "/".join([str(int(seed)), *map(str, parts)])
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


@contextlib.contextmanager
def seeded(seed: int, threads: int | None = None) -> Iterator[np.random.Generator]:
    """Run a block with torch's RNG forked and seeded, deterministic algorithms on, and ``threads`` threads.

    Yields a numpy generator seeded the same way, for numpy-side randomness of the block.
    The caller's RNG state, determinism flag and thread count are restored afterwards.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield np.random.default_rng(seed)
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(old_threads)
