"""One tier of a bundle as a KServe v2 model: the code both ``splitc serve`` and Triton run.

:class:`TierModel` takes requests as named arrays in their wire form (the :mod:`splitc.runtime.v2`
contract), checks them, decodes them exactly as the manifest says
(:meth:`BundleRunner.decode_transfer`), runs the tier step (:meth:`BundleRunner.tier_step`:
the tier's partitions, the exit rule, the encoding of the next link) and answers either the final
outputs or the next link's tensors, with the control tensors. It is transport-free: the HTTP and
gRPC handlers of :mod:`splitc.runtime.server` and the Triton python-backend model written by
:mod:`splitc.backends.triton` (which vendors this package into the model repository) only convert
tensors. So every server runs the tier step of the in-process runner itself, not a re-implementation.

Several requests handed over at once (Triton's dynamic batcher) run together through
:class:`~splitc.runtime.batching.LockstepBatcher`: each keeps its own step and exit decision, their
partition runs are shared.

Example:
    >>> model = TierModel("bundle/", 1)                                          # doctest: +SKIP
    >>> [answer] = model.infer([{"relu": wire_tensor}])                          # doctest: +SKIP
    >>> int(answer["splitc_next"][0])                                           # doctest: +SKIP
    -1
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from splitc.runtime.batching import LockstepBatcher
from splitc.runtime.runner import BundleRunner
from splitc.runtime.v2 import TensorSpec, TierContract, V2Error, model_name, tier_contract

__all__ = ["TierModel", "wire_arrays", "exit_fired"]

log = logging.getLogger("splitc")


def wire_arrays(payloads: Mapping[str, bytes], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The encoded bytes of a link's tensors as arrays of their wire dtype and shape (what travels)."""
    out = {}
    for spec in specs:
        dtype = np.dtype(np.bool_ if spec.dtype == "bool" else spec.dtype)
        out[spec.name] = np.frombuffer(payloads[spec.name], dtype=dtype.newbyteorder("<")).reshape(
            spec.shape).astype(dtype)
    return out


def exit_fired(runner: BundleRunner, tier: int, held: Mapping[str, np.ndarray]) -> int:
    """Manifest index of the exit that answered a request on ``tier`` (-1: none), asking the runner's own rule
    (``exit_taken``) partition by partition in manifest order, up to the first partition that did not run."""
    exits = runner.manifest.get("exits", [])
    for part in (p for p in runner.manifest["partitions"] if p["tier_index"] == tier):
        mine = [e for e in exits if e["partition"] == part["index"]]
        if not mine:
            continue
        if any(e["outputs"]["confidence"] not in held for e in mine):
            break  # this partition did not run: the exit was taken before it
        taken = runner.exit_taken(part["index"], held)
        if taken is not None:
            return int(taken["index"])
    return -1


def _control(next_tier: int, exit_index: int, tier: int) -> dict[str, np.ndarray]:
    return {"splitc_next": np.array([next_tier], np.int32), "splitc_exit": np.array([exit_index], np.int32),
            "splitc_tier": np.array([tier], np.int32)}


class TierModel:
    """The v2 model ``splitc_tier<T>`` of one bundle.

    Args:
        bundle: the bundle folder (or the copy inside a Triton model: manifest.json + partitions).
        tier_index: the tier whose transfer this model receives.
        last_tier: run the later tiers up to this one in-process too (default: this tier alone, so a
            request that continues is answered with the next link's tensors).
        threads: ONNX Runtime intra-op threads per session (0 = its default).
        sessions: partition index -> object with ``run(output_names, feeds)`` used instead of loading
            the ONNX files (Triton BLS calls); None loads them with ONNX Runtime.
        batchable: partitions whose sessions accept requests stacked on axis 0 (checked dynamic batch axis).
        runner: an existing runner of the bundle (tests); built when None.
        variant: the bandwidth variant this bundle is (only names the model).
    """

    def __init__(self, bundle: str | Path, tier_index: int, *, last_tier: int | None = None, threads: int = 0,
                 sessions: Mapping[int, Any] | None = None, batchable: Sequence[int] = (),
                 runner: BundleRunner | None = None, variant: int | None = None, workers: int = 8) -> None:
        last = tier_index if last_tier is None else last_tier
        if runner is None:
            if sessions is None:
                runner = BundleRunner(bundle, threads=threads, tiers=range(tier_index, last + 1))
            else:
                runner = BundleRunner(bundle, tiers=())
                runner.sessions = dict(sessions)
        self.runner = runner
        self.manifest = runner.manifest
        self.tier_index, self.last_tier = tier_index, last
        self.contract: TierContract = tier_contract(self.manifest, tier_index, last)
        self.variant = variant
        self.name = model_name(tier_index, variant)
        self.batcher = LockstepBatcher(batchable, workers)
        runner.sessions = self.batcher.wrap(runner.sessions)
        self._lock = threading.Lock()
        self.answers = {"final": 0, "exit": 0, "forward": 0, "failed": 0, "mixed_calls": 0}

    # -- one request in ------------------------------------------------------------------------------
    def receive(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What this tier holds for ``inputs`` (checked against the contract, decoded as the manifest says).

        Raises:
            V2Error: 400 naming the wrong, missing or extra tensor.
        """
        want = [s.name for s in self.contract.inputs]
        if sorted(inputs) != sorted(want):
            raise V2Error(400, f"model '{self.name}' (tier '{self.contract.tier_name}') takes tensors {sorted(want)}, "
                               f"got {sorted(inputs)}")
        for spec in self.contract.inputs:
            spec.check(np.asarray(inputs[spec.name]), "input")
        if self.tier_index == 0:
            return {s.name: np.asarray(inputs[s.name]) for s in self.contract.inputs}
        payloads = {s.name: np.ascontiguousarray(inputs[s.name]).astype(
            np.dtype(inputs[s.name].dtype).newbyteorder("<"), copy=False).tobytes() for s in self.contract.inputs}
        try:
            return self.runner.decode_transfer(self.tier_index - 1, payloads)
        except ValueError as exc:  # encoding parameters inconsistent with the data
            raise V2Error(400, str(exc)) from None

    # -- the tier step -------------------------------------------------------------------------------
    def step(self, held: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The answer to one request holding ``held``: final outputs or the next link's tensors, plus control."""
        tier = self.tier_index
        while True:
            held, answer, payloads = self.runner.tier_step(tier, held)
            if answer is not None:
                return self._final(answer, tier, self._exit_fired(tier, held))
            if payloads is None:
                return self._final(self.runner.outputs(held), tier, -1)
            if tier < self.last_tier:
                held = self.runner.decode_transfer(tier, payloads)
                tier += 1
                continue
            out = wire_arrays(payloads, self.contract.forward_outputs)
            out.update(_control(self.contract.next_tier, -1, tier))
            return out

    def _final(self, outputs: Mapping[str, np.ndarray], tier: int, exit_index: int) -> dict[str, np.ndarray]:
        out = {}
        for spec in self.contract.final_outputs:
            value = np.asarray(outputs[spec.name])
            spec.check(value, "output")  # a mismatch here is a bug in the bundle or runtime: answered as 500
            out[spec.name] = value
        out.update(_control(-1, exit_index, tier))
        return out

    def _exit_fired(self, tier: int, held: Mapping[str, np.ndarray]) -> int:
        return exit_fired(self.runner, tier, held)

    # -- requests ------------------------------------------------------------------------------------
    def infer(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray] | V2Error]:
        """Answer every request (handed over together: their partition runs are shared); never raises.

        Returns:
            Per request, its output tensors, or the :class:`V2Error` it gets (4xx: the request was wrong;
            500: a failure inside, logged with its traceback).
        """
        start = time.perf_counter()
        answers: list[Any] = [None] * len(requests)
        held, where = [], []
        for i, request in enumerate(requests):
            try:
                held.append(self.receive(request))
                where.append(i)
            except V2Error as exc:
                answers[i] = exc
        for i, result in zip(where, self.batcher.map(self.step, held)):
            if isinstance(result, V2Error):
                answers[i] = result
            elif isinstance(result, Exception):
                log.error("model %s failed:\n%s", self.name,
                          "".join(traceback.format_exception(type(result), result, result.__traceback__)))
                answers[i] = V2Error(500, f"model '{self.name}' failed: {type(result).__name__}: {result}")
            else:
                answers[i] = result
        server_us = np.array([int((time.perf_counter() - start) * 1e6)], np.int64)
        kinds = set()
        for answer in answers:
            if isinstance(answer, dict):
                answer["splitc_server_us"] = server_us
                kinds.add("forward" if answer["splitc_next"][0] >= 0 else
                          "exit" if answer["splitc_exit"][0] >= 0 else "final")
        with self._lock:
            for answer in answers:
                if isinstance(answer, dict):
                    self.answers["forward" if answer["splitc_next"][0] >= 0 else
                                 "exit" if answer["splitc_exit"][0] >= 0 else "final"] += 1
                else:
                    self.answers["failed"] += 1
            self.answers["mixed_calls"] += len(kinds) > 1
        return answers

    def stats(self) -> dict[str, Any]:
        """Answers by kind, calls that mixed kinds, and partition runs by batch size."""
        with self._lock:
            return {"model": self.name, "answers": dict(self.answers), "batching": self.batcher.stats.to_dict()}

    def close(self) -> None:
        """Stop the batcher's threads."""
        self.batcher.close()
