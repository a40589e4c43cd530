"""Run a bundle in one process with ONNX Runtime, exactly as its manifest says.

Semantics (the bundle contract, ``manifest.schema.json``): the request starts at tier 0
with the model inputs. Each tier runs its partitions (``tiers[i].partitions``, in order:
a tier whose work holds early exits is cut into *segments*, one partition each) on the
values it holds; the values a segment produces stay in the process for the next segment
(no encoding, not a transfer). After each partition, the exits of that partition are
checked in manifest order: the first whose confidence output is ``>=`` its threshold
answers the request (its class scores are the model output) and nothing more runs.
Otherwise, if the manifest lists a transfer on the tier's outgoing link, every tensor of
that transfer is encoded as the manifest says, "sent" (as bytes), decoded, and the next
tier holds only what was sent. A tier without a partition relays what it received. The
model outputs are read, by tensor name, from what the last tier holds.

Example:
    >>> from splitc.runtime.runner import BundleRunner
    >>> runner = BundleRunner("bundle/")                      # doctest: +SKIP
    >>> outputs = runner.run({"x": image})                     # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from splitc.runtime.encoding import decode, encode

__all__ = ["BundleRunner", "load_manifest", "select_variant", "tier_partitions", "ExitCheck", "TierTrace", "RunTrace"]


def load_manifest(bundle: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` of a bundle folder."""
    with open(Path(bundle) / "manifest.json", encoding="utf-8") as handle:
        return json.load(handle)


def select_variant(bundle: str | Path, bandwidth_bps: float) -> Path:
    """The bundle folder to serve when the first link measures ``bandwidth_bps``.

    A bundle compiled with ``--bandwidth-range`` lists, in ``plan.variants``, the plan that
    wins on each range of the first link's bandwidth and the folder of its bundle. Outside
    the compiled range the nearest end's variant is used. A bundle without variants is
    returned as is.
    """
    bundle = Path(bundle)
    variants = [v for v in load_manifest(bundle)["plan"].get("variants", []) if v.get("bundle")]
    if not variants:
        return bundle
    if not bandwidth_bps > 0:
        raise ValueError(f"measured bandwidth must be > 0 bit/s, got {bandwidth_bps}")
    best = min(variants, key=lambda v: 0.0 if v["range_bps"][0] <= bandwidth_bps <= v["range_bps"][1]
               else min(abs(np.log(bandwidth_bps / v["range_bps"][0])), abs(np.log(bandwidth_bps / v["range_bps"][1]))))
    return (bundle / best["bundle"]).resolve()


def tier_partitions(manifest: Mapping[str, Any]) -> dict[int, list[int]]:
    """Partition indices each tier runs, in order (schema 1.1 ``tiers[i].partitions``; for a 1.0 manifest,
    the partitions whose ``tier_index`` is the tier, in index order)."""
    out: dict[int, list[int]] = {}
    for tier in manifest["tiers"]:
        if "partitions" in tier:
            out[tier["index"]] = list(tier["partitions"])
        else:
            out[tier["index"]] = [p["index"] for p in manifest["partitions"] if p["tier_index"] == tier["index"]]
    return out


@dataclass
class ExitCheck:
    """One application of the exit rule: exit ``index`` after partition ``partition``."""

    index: int
    partition: int
    confidence: float
    threshold: float
    taken: bool


@dataclass
class TierTrace:
    """What one tier did for one request (:meth:`BundleRunner.run_traced`)."""

    tier: int
    received: dict[str, np.ndarray]  # what the tier held when it started (decoded from its incoming link)
    partitions: list[int] = field(default_factory=list)
    checks: list[ExitCheck] = field(default_factory=list)


@dataclass
class RunTrace:
    """One request through the bundle, step by step: every tier it reached, every exit check, the answer."""

    outputs: dict[str, np.ndarray]
    tiers: list[TierTrace]
    exit: int | None  # the exit that answered, None when the request ran to the end

    @property
    def ended_at_tier(self) -> int:
        return self.tiers[-1].tier


class BundleRunner:
    """Executes every tier of a bundle in-process.

    Args:
        bundle: the bundle folder.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads per session (0 = ONNX Runtime's default).
        tiers: load only the partitions of these tier indices (a server or client that runs
            some tiers need not have the others' files); None = every tier.
    """

    def __init__(self, bundle: str | Path, providers: list[str] | None = None, threads: int = 0,
                 tiers: Iterable[int] | None = None) -> None:
        self.bundle = Path(bundle)
        self.manifest = load_manifest(self.bundle)
        # ``sessions[index]`` is anything with ONNX Runtime's ``run(output_names, feeds)``: a server may swap in
        # its own (a batching wrapper, a Triton BLS call), so ONNX Runtime is imported only when it loads files
        wanted = [p for p in self.manifest["partitions"] if tiers is None or p["tier_index"] in set(tiers)]
        self.sessions: dict[int, Any] = {}
        if wanted:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            self.sessions = {p["index"]: ort.InferenceSession(str(self.bundle / p["file"]), options,
                                                              providers=providers or ["CPUExecutionProvider"])
                             for p in wanted}
        self._partitions_of_tier = tier_partitions(self.manifest)
        self._exits_after = {}  # partition index -> its exits, in manifest order
        for exit_ in self.manifest.get("exits", []):
            self._exits_after.setdefault(exit_["partition"], []).append(exit_)
        self._transfer_on_link = {t["link"]: t for t in self.manifest["transfers"]}
        self.wire_bytes: list[int] = []  # bytes sent per link on the last run
        self.received: dict[str, np.ndarray] = {}  # every tensor decoded from a link on the last run

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request through every tier; returns the model outputs by manifest output name."""
        held = {spec["name"]: np.asarray(inputs[spec["name"]]) for spec in self.manifest["model"]["inputs"]}
        self.wire_bytes, self.received = [], {}
        for tier in self.manifest["tiers"]:
            held, answer = self.run_tier(tier["index"], held)
            if answer is not None:
                return answer
        return self.outputs(held)

    def run_tier(self, tier_index: int, held: Mapping[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """One tier's step: run its partition (if any), then either answer early or ship its transfer.

        Returns:
            ``(held, answer)``: what the next tier holds (decoded from the wire), and the
            final outputs when the request ends here (an early exit), else None.
        """
        held, answer, payloads = self.tier_step(tier_index, held)
        if answer is not None or payloads is None:
            return held, answer
        self.wire_bytes.append(sum(len(p) for p in payloads.values()))
        received = self.decode_transfer(tier_index, payloads)
        self.received.update(received)
        return received, None

    def tier_step(self, tier_index: int, held: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, dict[str, bytes] | None]:
        """The sending half of :meth:`run_tier`: the tier's partitions with the exit rule after each, encoded transfer.

        A tier cut into segments (``tiers[i].partitions`` lists several) runs them in order on the
        values it holds; each segment's outputs stay in this process for the next one. After each
        partition its exits are checked (:meth:`exit_decision`); the first that fires ends the request.
        Keeps no state on the runner, so servers may call it from many threads at once
        (``run_tier`` records ``wire_bytes``/``received`` for the last in-process run).

        Returns:
            ``(held, answer, payloads)``: what this tier holds after its partitions; the final
            outputs if the request exits here (else None); the encoded tensors of the transfer
            on link ``tier_index`` by name (None when there is no outgoing transfer or on exit).
        """
        return self._tier_step(tier_index, held, None)

    def _tier_step(self, tier_index: int, held: Mapping[str, np.ndarray], trace: TierTrace | None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, dict[str, bytes] | None]:
        held = dict(held)
        for index in self._partitions_of_tier.get(tier_index, []):
            held.update(self.run_partition(index, held))
            if trace is not None:
                trace.partitions.append(index)
                trace.checks.extend(self._checks(index, held))
            answer = self.exit_decision(index, held)
            if answer is not None:
                return held, answer, None
        if tier_index not in self._transfer_on_link:
            return held, None, None
        return held, None, self.encode_transfer(tier_index, held)

    def _checks(self, partition_index: int, held: Mapping[str, np.ndarray]) -> list[ExitCheck]:
        """The exit rule after partition ``partition_index``, every exit of it evaluated (for tracing)."""
        out, taken = [], False
        for exit_ in self._exits_after.get(partition_index, []) if getattr(self, "use_exits", True) else []:
            confidence = float(np.max(held[exit_["outputs"]["confidence"]]))
            fires = not taken and confidence >= exit_["threshold"]
            taken |= fires
            out.append(ExitCheck(exit_["index"], partition_index, confidence, float(exit_["threshold"]), fires))
        return out

    def run_traced(self, inputs: Mapping[str, np.ndarray]) -> RunTrace:
        """:meth:`run` recording every tier's received values, the partitions run and every exit check.

        Verification compares these, tier by tier, with a reference (``splitc.exits.verify_exits``).
        """
        held = {spec["name"]: np.asarray(inputs[spec["name"]]) for spec in self.manifest["model"]["inputs"]}
        tiers: list[TierTrace] = []
        for tier in self.manifest["tiers"]:
            trace = TierTrace(tier["index"], dict(held))
            tiers.append(trace)
            held, answer, payloads = self._tier_step(tier["index"], held, trace)
            if answer is not None:
                taken = next((c.index for c in trace.checks if c.taken), None)
                return RunTrace(answer, tiers, taken)
            if payloads is None:
                break
            held = self.decode_transfer(tier["index"], payloads)
        return RunTrace(self.outputs(held), tiers, None)

    def run_partition(self, index: int, held: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run partition ``index`` on the named values it needs; returns its named outputs."""
        part = self.manifest["partitions"][index]
        feeds = {spec["name"]: held[spec["name"]] for spec in part["inputs"]}
        results = self.sessions[index].run([o["name"] for o in part["outputs"]], feeds)
        return dict(zip((o["name"] for o in part["outputs"]), results))

    def exit_decision(self, partition_index: int, held: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The final outputs if the request may exit after this partition, else None.

        The partition's exits (``manifest["exits"]`` whose ``partition`` is this one, in manifest
        order) are checked in order: the first whose confidence output (a float32 ``[1]``, compared
        as a float64 number) is ``>=`` its ``threshold`` answers, each model output named in its
        ``answers`` being the partition output given there (its class scores).
        ``self.use_exits = False`` disables exits (verification of the full model's numerics).
        """
        taken = self.exit_taken(partition_index, held)
        if taken is None:
            return None
        return {output: np.asarray(held[tensor]) for output, tensor in taken["answers"].items()}

    def exit_taken(self, partition_index: int, held: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
        """The manifest entry of the exit this request takes after partition ``partition_index``, if any."""
        if not getattr(self, "use_exits", True):
            return None
        for exit_ in self._exits_after.get(partition_index, []):
            if float(np.max(held[exit_["outputs"]["confidence"]])) >= exit_["threshold"]:
                return exit_
        return None

    def encode_transfer(self, link: int, held: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        """Bytes on the wire for every tensor of the transfer on ``link``, by tensor name."""
        return {spec["name"]: encode(held[spec["name"]], spec) for spec in self._transfer_on_link[link]["tensors"]}

    def decode_transfer(self, link: int, payloads: Mapping[str, bytes]) -> dict[str, np.ndarray]:
        """What the receiving tier holds after decoding ``payloads`` of the transfer on ``link``."""
        return {spec["name"]: decode(payloads[spec["name"]], spec) for spec in self._transfer_on_link[link]["tensors"]}

    def outputs(self, held: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model outputs, by manifest output name, from what the last tier holds."""
        return {o["name"]: held[o["tensor"]] for o in self.manifest["model"]["outputs"]}
