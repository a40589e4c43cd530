"""The one timing method: how splitc times an ONNX Runtime session (profiler, model profiles, benchmarks).

``splitc profile`` (microbenchmarks and ``--model``), ``benchmarks/profile_accuracy.py`` and
``benchmarks/end_to_end.py`` all time through :func:`make_session` and :func:`time_session`, so a
target's figures and the measurements they are judged against come from the same procedure:

* **Session**: ONNX Runtime's CPU provider, default graph optimisations (what ``splitc run`` /
  ``splitc serve`` create), ``intra_op_num_threads`` = the thread count asked for (0 = ONNX
  Runtime's default, one per physical core), sequential execution, default thread spinning.
* **Warm-up**: :data:`WARMUP_RUNS` runs and at least 1/5 of the timing window (first-run
  allocations, caches, the thread pool starting).
* **Window**: at least ``min_runs`` runs and ``min_seconds``, at most ``max_runs``.
* **Figure**: the :data:`TIMING_PERCENTILE` th percentile of the timed runs. On a shared machine
  interference only ever adds time, so a low percentile measures what the kernels cost; the
  median of one partition moved by up to 50 % between back-to-back runs on a 2-core VM, the
  10th percentile far less (not the minimum: one lucky run would decide it).
* **Spread**: ``(p90 - p10) / p10`` of the runs is returned with the figure, a noise indicator.

Example:
    >>> session = make_session(model_bytes, threads=1)                 # doctest: +SKIP
    >>> seconds, runs, spread = time_session(session, {"x": x}, min_runs=10, min_seconds=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["TIMING_PERCENTILE", "WARMUP_RUNS", "make_session", "time_session", "describe"]

#: Percentile of the timed runs that is reported.
TIMING_PERCENTILE = 10
#: Untimed runs before the window (plus at least 1/5 of the window's seconds).
WARMUP_RUNS = 2


def make_session(model: bytes | str | Path, threads: int, *, profile_prefix: str | None = None,
                 optimized_path: str | Path | None = None) -> Any:
    """An ONNX Runtime CPU session as splitc's runner makes it (default graph optimisations).

    Args:
        model: ONNX model bytes or a path.
        threads: intra-op threads (0 = ONNX Runtime's default).
        profile_prefix: turn on ONNX Runtime's profiler, writing its JSON with this prefix.
        optimized_path: also write the graph ONNX Runtime actually runs (after its fusions) here.

    Returns:
        The ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def time_session(session: Any, feeds: Mapping[str, np.ndarray], *, min_runs: int, min_seconds: float,
                 max_runs: int = 500) -> tuple[float, int, float]:
    """Typical seconds of ``session.run(feeds)`` (see the module docstring for the method).

    Args:
        session: an ONNX Runtime session (or anything with ``run(None, feeds)``).
        feeds: its inputs.
        min_runs, min_seconds: the window's lower bounds.
        max_runs: its upper bound on runs.

    Returns:
        (the :data:`TIMING_PERCENTILE` th percentile in seconds, timed runs, (p90 - p10) / p10).
    """
    feeds = dict(feeds)
    start = time.perf_counter()
    runs = 0
    while runs < WARMUP_RUNS or time.perf_counter() - start < min_seconds / 5:
        session.run(None, feeds)
        runs += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    arr = np.array(times)
    typical = float(np.percentile(arr, TIMING_PERCENTILE))
    return typical, len(times), float((np.percentile(arr, 90) - typical) / typical)


def describe(threads: int) -> str:
    """One line naming the method, for notes and reports."""
    return (f"ONNX Runtime CPU session, default optimisations, {threads or 'default'} intra-op threads; "
            f"{WARMUP_RUNS} warm-up runs + 1/5 of the window, then the {TIMING_PERCENTILE}th percentile")
