"""Run several requests' tier steps at once, their partition calls executed together as batches.

A dynamic batcher (Triton's ``dynamic_batching``) hands a tier model several requests in one call.
The tier step (:meth:`BundleRunner.tier_step`) is written for one request: it runs the tier's
partitions in order and applies the exit rule after each. :class:`LockstepBatcher` keeps that code
as is. It runs each request's step in its own thread and wraps the runner's sessions: a session call
waits until every request still running has reached a session call too (or has finished), then the
calls for the same partition run as one ONNX Runtime call on the requests stacked on axis 0, and each
request gets its own rows back. So the step and its exit rule stay per request (exactly the
in-process semantics), and only the ONNX Runtime calls are shared.

What happens when some requests of a batch leave early (E3's problem): a request whose exit fires
stops calling sessions and leaves the group; the requests that continue run the next partition as a
smaller batch (the batch shrinks segment by segment, nothing refills it). Its answer is ready at
once, but a non-decoupled Triton model returns all responses of one ``execute`` together, so an
early answer in a batch waits for the batch's longest step. ``stats`` counts both effects.

A partition is batched only if its ONNX file has a dynamic batch axis that was checked bit-exact
against batch-1 runs (``batchable``); other partitions run once per request, in the same round.

Example:
    >>> batcher = LockstepBatcher(batchable={1})                                 # doctest: +SKIP
    >>> runner.sessions = batcher.wrap(runner.sessions)                          # doctest: +SKIP
    >>> answers = batcher.map(lambda held: runner.tier_step(1, held), requests)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["LockstepBatcher", "BatchStats", "BatchRunError"]


class BatchRunError(RuntimeError):
    """A partition run on stacked requests failed (each request of the group gets one)."""


@dataclass
class BatchStats:
    """What the batcher did: requests per ``map`` call and rows per partition run."""

    calls: int = 0                                              # map() calls (Triton executions)
    requests: int = 0
    partition_runs: dict[int, dict[int, int]] = field(default_factory=dict)  # partition -> {batch size: runs}

    def record(self, partition: int, size: int) -> None:
        """Count one run of ``partition`` on ``size`` requests."""
        sizes = self.partition_runs.setdefault(partition, {})
        sizes[size] = sizes.get(size, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (batch sizes as string keys)."""
        return {"calls": self.calls, "requests": self.requests,
                "partition_runs": {str(p): {str(k): v for k, v in sorted(s.items())}
                                   for p, s in sorted(self.partition_runs.items())}}


class _Call:
    __slots__ = ("partition", "names", "feeds", "result", "error", "done")

    def __init__(self, partition: int, names: list[str], feeds: Mapping[str, np.ndarray]) -> None:
        self.partition, self.names, self.feeds = partition, list(names), dict(feeds)
        self.result: list[np.ndarray] | None = None
        self.error: BaseException | None = None
        self.done = False


class _Round:
    """The requests of one ``map`` call: how many still run, and the session calls waiting."""

    def __init__(self, batcher: "LockstepBatcher", active: int) -> None:
        self.batcher, self.active = batcher, active
        self.pending: list[_Call] = []
        self.cond = threading.Condition()

    def call(self, call: _Call) -> list[np.ndarray]:
        with self.cond:
            self.pending.append(call)
            if len(self.pending) == self.active:
                self._execute()
            while not call.done:
                self.cond.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def finished(self) -> None:
        with self.cond:
            self.active -= 1
            if self.pending and len(self.pending) == self.active:
                self._execute()

    def _execute(self) -> None:
        """Run every pending call (the lock is held: all running requests are waiting here)."""
        calls, self.pending = self.pending, []
        groups: dict[tuple, list[_Call]] = {}
        for call in calls:
            groups.setdefault((call.partition, tuple(call.names)), []).append(call)
        for (partition, _), group in groups.items():
            self.batcher.run_group(partition, group)
        for call in calls:
            call.done = True
        self.cond.notify_all()


class _BatchingSession:
    """Stands in for one partition's session; joins the calling thread's round, if any."""

    def __init__(self, batcher: "LockstepBatcher", partition: int, session: Any) -> None:
        self.batcher, self.partition, self.session = batcher, partition, session

    def run(self, output_names: Sequence[str], feeds: Mapping[str, np.ndarray], *args) -> list[np.ndarray]:
        round_ = getattr(self.batcher.local, "round", None)
        if round_ is None:  # one request alone: straight through
            self.batcher.record(self.partition, 1)
            return self.session.run(output_names, feeds, *args)
        return round_.call(_Call(self.partition, list(output_names), feeds))


class LockstepBatcher:
    """Shares partition runs between concurrent tier steps (see the module docstring).

    Args:
        batchable: partition indices whose sessions accept requests stacked on axis 0.
        workers: most requests run at once (threads of the pool).
    """

    def __init__(self, batchable: Iterable[int] = (), workers: int = 8) -> None:
        self.batchable = set(batchable)
        self.workers = workers
        self.local = threading.local()
        self.sessions: dict[int, Any] = {}
        self.stats = BatchStats()
        self._pool: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()

    def wrap(self, sessions: Mapping[int, Any]) -> dict[int, _BatchingSession]:
        """Batching stand-ins for ``sessions`` (partition index -> object with ``run(names, feeds)``)."""
        self.sessions = dict(sessions)
        return {index: _BatchingSession(self, index, session) for index, session in self.sessions.items()}

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[fn(item) for item in items]``, run together; an exception is returned in place of its result."""
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.requests += len(items)
        if len(items) == 1:
            return [self._guarded(fn, items[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="splitc-batch")
        results: list[Any] = []
        for start in range(0, len(items), self.workers):  # at most `workers` requests per round
            chunk = items[start:start + self.workers]
            round_ = _Round(self, len(chunk))
            futures = [self._pool.submit(self._in_round, round_, fn, item) for item in chunk]
            results += [f.result() for f in futures]
        return results

    @staticmethod
    def _guarded(fn: Callable[[Any], Any], item: Any) -> Any:
        try:
            return fn(item)
        except Exception as exc:  # noqa: BLE001 - one request's failure is its own answer
            return exc

    def _in_round(self, round_: _Round, fn: Callable[[Any], Any], item: Any) -> Any:
        self.local.round = round_
        try:
            return self._guarded(fn, item)
        finally:
            self.local.round = None
            round_.finished()

    def run_group(self, partition: int, calls: list[_Call]) -> None:
        """Run the calls of one partition: stacked when it is batchable, else one by one."""
        session = self.sessions[partition]
        try:
            if partition in self.batchable and len(calls) > 1:
                rows = [next(iter(c.feeds.values())).shape[0] if c.feeds else 1 for c in calls]
                feeds = {name: np.concatenate([c.feeds[name] for c in calls], axis=0) for name in calls[0].feeds}
                outputs = session.run(calls[0].names, feeds)
                bounds = np.cumsum([0] + rows)
                for k, call in enumerate(calls):
                    call.result = [np.ascontiguousarray(o[bounds[k]:bounds[k + 1]]) for o in outputs]
                self.record(partition, len(calls))
                return
        except Exception as exc:  # noqa: BLE001 - every request of the group gets the error (its own copy: one
            for call in calls:    # exception object raised in several threads would pile up their tracebacks)
                call.error = BatchRunError(f"partition {partition} on {len(calls)} stacked requests: "
                                           f"{type(exc).__name__}: {exc}")
            return
        for call in calls:
            try:
                call.result = session.run(call.names, call.feeds)
            except Exception as exc:  # noqa: BLE001
                call.error = exc
            self.record(partition, 1)

    def record(self, partition: int, size: int) -> None:
        """Count one run of ``partition`` on ``size`` requests (thread-safe)."""
        with self._stats_lock:
            self.stats.record(partition, size)

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
