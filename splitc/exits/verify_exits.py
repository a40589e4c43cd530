"""Exit verification: every exit decision and class of the bundle compared with a PyTorch reference.

A request's path through a bundle with exits is a sequence of decisions: after each partition
(a tier's segment), each of its exits is kept or not by ``confidence >= threshold``. Both
checks here run the bundle in ONNX Runtime with the reference runner
(:meth:`~splitc.runtime.runner.BundleRunner.run_traced`), then, **tier by tier**, run the
reference on exactly what the ONNX tier received (for tier 0 the model inputs; for a later
tier the tensors decoded from its incoming link) and compare, for every exit the ONNX side
evaluated: the confidence (within :data:`SCORE_TOLERANCE`), the decision and the class.
Feeding each tier what ONNX Runtime sent it makes the comparison exact about what it
compares: a lossy wire (uint8 / float16) rounds a value on one side of a quantization step
in one runtime and on the other side in the other one time in a few thousand elements, and
that single step can move a confidence downstream across a threshold; the wire tensors
themselves are compared by the numeric verification (``splitc.driver.verify``).

* at compile time (:func:`verify_exits`) the reference is the compiled PyTorch partitions
  (what was exported: wire encodings, bottleneck, noise included) with the calibrated
  thresholds, on real calibration inputs chosen to exercise every exit on both sides of its
  threshold (the held-out test split plus, per exit, the samples nearest its threshold from
  above and below);
* ``splitc verify`` (:func:`check_exit_semantics`) rebuilds the reference from the original
  model (traced again) and the heads' weights and thresholds recorded in ``exits/exit<i>.npz``
  (sha256 checked); the threshold in the manifest must equal the recorded one.

A check that cannot be made is a failure, never a pass. A confidence within the decision
tolerance of its threshold, or final logits whose top two are that close, is *borderline*
(counted, not an error). When some exit was not seen taking or passing requests, the result
says ``complete: false`` and a warning names it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx

from splitc.core.samples import ValueCapture
from splitc.errors import SplitcError
from splitc.exits.heads import ExitHead, ExitSetup

__all__ = ["TierReference", "compare_exit_decisions", "verify_exits", "check_exit_semantics", "write_exit_heads",
           "coverage_samples", "SCORE_TOLERANCE", "DECISION_TOLERANCE", "THRESHOLD_KEY", "QUANTIZED_TOLERANCES"]

log = logging.getLogger("splitc")

#: confidences of the same exit in ONNX Runtime and the reference may differ by this much (fp32 kernels
#: differ by ~1e-6; a wrong head or backbone moves them by 1e-2 and more)
SCORE_TOLERANCE = 1e-3
#: a confidence this close to its threshold (or final logits whose two largest are this close) is borderline
DECISION_TOLERANCE = 1e-4
#: key of the calibrated threshold in ``exits/exit<i>.npz`` (beside the MLP's state_dict keys)
THRESHOLD_KEY = "splitc_threshold"
#: tolerances when the partitions are quantized (--quantize): the reference is the float chain, so a confidence
#: may move by a few hundredths (a fake-quantized reference would make the comparison exact again)
QUANTIZED_TOLERANCES = {"tolerance": 0.05, "score_tolerance": 0.1}
#: samples per exit nearest its threshold from above and from below, added at compile time
NEAREST_PER_SIDE = 4


@dataclass
class TierReference:
    """What the reference computes for one tier from what the tier received.

    Attributes:
        confidence: exit index -> its confidence, for the exits this tier evaluates.
        classes: exit index -> the class of its scores.
        final: the model output's scores when this tier produces them, else None.
    """

    confidence: dict[int, float] = field(default_factory=dict)
    classes: dict[int, int] = field(default_factory=dict)
    final: np.ndarray | None = None


#: ``(tier index, what the tier received, the request's model inputs) -> TierReference``
ReferenceTier = Callable[[int, dict[str, np.ndarray], list[np.ndarray]], TierReference]


class Unverifiable(Exception):
    """The reference cannot be computed for this tier (says why)."""


def compare_exit_decisions(runner, cases: Sequence[Sequence[np.ndarray]], reference: ReferenceTier,
                           thresholds: dict[int, float], tolerance: float = DECISION_TOLERANCE,
                           score_tolerance: float = SCORE_TOLERANCE) -> dict[str, Any]:
    """Run every case through ``runner`` (ONNX Runtime) and compare each exit decision with ``reference``.

    Args:
        runner: a :class:`~splitc.runtime.runner.BundleRunner` of the bundle (exits on).
        cases: per request, the model inputs in manifest order.
        reference: the reference of one tier (see :data:`ReferenceTier`).
        thresholds: exit index -> the reference's threshold (the calibrated one, not the manifest's).
        tolerance: decision tolerance (see :data:`DECISION_TOLERANCE`).
        score_tolerance: allowed confidence difference (see :data:`SCORE_TOLERANCE`).

    Returns:
        ``{"checked", "samples", "exited", "mismatches", "score_mismatches", "borderline",
        "max_score_diff", "coverage", "complete", "passed", "first_mismatch", "decisions"}``
        (``decisions``: ONNX Runtime's ``(exit, class)`` per case, exit -1 = none); ``checked`` is
        False (and ``passed`` too) with a ``reason`` when the reference could not be computed.
    """
    manifest = runner.manifest
    names = [s["name"] for s in manifest["model"]["inputs"]]
    out_name = manifest["model"]["outputs"][0]["name"]
    exits = {e["index"]: e for e in manifest.get("exits", [])}
    taken = {i: 0 for i in exits}
    continued = {i: 0 for i in exits}
    counts = {"mismatches": 0, "score_mismatches": 0, "borderline": 0, "exited": 0}
    worst, first, decisions = 0.0, None, []
    for number, case in enumerate(cases):
        trace = runner.run_traced(dict(zip(names, case)))
        got = (-1 if trace.exit is None else trace.exit, int(np.argmax(trace.outputs[out_name])))
        want, near = None, False
        for tier in trace.tiers:
            try:
                ref = reference(tier.tier, tier.received, list(case))
            except Unverifiable as exc:
                return {"checked": False, "reason": str(exc), "samples": len(cases), "exited": 0, "mismatches": 0,
                        "borderline": 0, "passed": False, "complete": False}
            for check in tier.checks:
                if check.index not in ref.confidence:
                    raise SplitcError(f"the reference does not evaluate exit {check.index} on tier {tier.tier}")
                diff = abs(check.confidence - ref.confidence[check.index])
                worst = max(worst, diff)
                counts["score_mismatches"] += diff > score_tolerance
                taken[check.index] += check.taken
                continued[check.index] += not check.taken and not any(c.taken for c in tier.checks
                                                                      if c.partition < check.partition or
                                                                      (c.partition == check.partition and
                                                                       c.index < check.index))
            for index in sorted(ref.confidence, key=lambda i: _rule_order(exits, i)):
                near |= abs(ref.confidence[index] - thresholds[index]) < tolerance
                if ref.confidence[index] >= thresholds[index]:
                    want = (index, ref.classes[index])
                    break
            if want is not None:
                break
            if tier is trace.tiers[-1]:
                if trace.exit is not None:  # ONNX Runtime left here, the reference continues
                    want = (-2, -1)
                elif ref.final is not None:
                    top = np.sort(np.asarray(ref.final, dtype=np.float64).reshape(-1))[-2:]
                    near |= bool(top[1] - top[0] < tolerance * max(1.0, abs(top[1])))
                    want = (-1, int(np.argmax(ref.final)))
        counts["exited"] += got[0] >= 0
        decisions.append(got)
        if want != got:
            counts["borderline" if near else "mismatches"] += 1
            if not near and first is None:
                first = {"sample": number, "onnxruntime": {"exit": got[0], "class": got[1]},
                         "reference": {"exit": want[0] if want else None, "class": want[1] if want else None}}
    coverage = [{"exit": i, "taken": taken[i], "continued": continued[i]} for i in sorted(exits)]
    complete = all(c["taken"] > 0 and c["continued"] > 0 for c in coverage)
    passed = counts["mismatches"] == 0 and counts["score_mismatches"] == 0
    return {"checked": True, "samples": len(cases), **counts, "max_score_diff": worst, "tolerance": tolerance,
            "score_tolerance": score_tolerance, "coverage": coverage, "complete": complete, "passed": passed,
            "decisions": decisions, **({"first_mismatch": first} if first else {})}


def _rule_order(exits: dict[int, dict], index: int) -> tuple[int, int]:
    """The order the runtime applies exits in: by partition, then manifest order."""
    return exits[index]["partition"], index


def _warn_incomplete(result: dict[str, Any], where: str) -> None:
    missing = [f"exit {c['exit']} " + ("never taken" if not c["taken"] else "never passed on")
               for c in result.get("coverage", []) if not (c["taken"] and c["continued"])]
    if missing:
        log.warning("[verify] exits NOT fully verified %s: %s on %d sample(s); give inputs that exercise both sides "
                    "of every threshold", where, "; ".join(missing), result["samples"])


def _failure_words(result: dict[str, Any]) -> str:
    if not result["checked"]:
        return f"exit decisions could not be checked ({result['reason']})"
    parts = []
    if result["mismatches"]:
        m = result.get("first_mismatch", {})
        parts.append(f"on {result['mismatches']} of {result['samples']} sample(s) ONNX Runtime took another exit or "
                     f"predicted another class than the reference (first: sample {m.get('sample')}, ONNX Runtime "
                     f"{m.get('onnxruntime')}, reference {m.get('reference')}; exit -1 = none, -2 = continues)")
    if result["score_mismatches"]:
        parts.append(f"exit confidences differ by up to {result['max_score_diff']:.3g} (allowed "
                     f"{result.get('score_tolerance', SCORE_TOLERANCE):g}) "
                     f"on {result['score_mismatches']} check(s)")
    if result.get("threshold_mismatches"):
        parts.append("; ".join(result["threshold_mismatches"]))
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------- compile time


def coverage_samples(setup: ExitSetup, per_side: int = NEAREST_PER_SIDE, tolerance: float = DECISION_TOLERANCE
                     ) -> np.ndarray:
    """Calibration sample indices that exercise every kept exit: the test split, plus per exit the
    ``per_side`` samples reaching it whose confidence is nearest its threshold from above and from
    below (outside the borderline band), from the whole calibration set."""
    picked = set(int(i) for i in setup.splits["test"])
    reaching = np.ones(len(setup.truth), dtype=bool)
    for chosen in setup.chosen:
        conf = chosen.candidate.confidence
        thr = chosen.threshold
        for side in (conf >= thr + tolerance, conf < thr - tolerance):
            pool = np.flatnonzero(reaching & side)
            nearest = pool[np.argsort(np.abs(conf[pool] - thr), kind="stable")[:per_side]]
            picked.update(int(i) for i in nearest)
        reaching &= conf < thr
    return np.array(sorted(picked), dtype=np.int64)


def _partition_reference(ctx, setup: ExitSetup, output: str) -> ReferenceTier:
    """The compiled PyTorch partitions of each tier, with the exits' calibrated heads inside them."""
    by_tier: dict[int, list] = {}
    for part in ctx.partitions:
        by_tier.setdefault(part.tier_index, []).append(part)
    names = [setup.tensor_names[c.candidate.node] for c in setup.chosen]

    def tier(index: int, received: dict[str, np.ndarray], inputs: list[np.ndarray]) -> TierReference:
        values = {k: torch.from_numpy(np.array(v)) for k, v in received.items()}
        ref = TierReference()
        with torch.no_grad():
            for part in by_tier.get(index, []):
                out = part.graph_module(*[values[n].clone() for n in part.inputs])
                values.update(zip(part.outputs, out if isinstance(out, (tuple, list)) else [out]))
                for i, (logits, confidence) in enumerate(names):
                    if confidence in part.outputs:
                        ref.confidence[i] = float(values[confidence].max())
                        ref.classes[i] = int(values[logits].argmax())
        if output in values and by_tier.get(index):
            ref.final = values[output].numpy()
        return ref

    return tier


def verify_exits(bundle, ctx, tolerance: float = DECISION_TOLERANCE,
                 score_tolerance: float = SCORE_TOLERANCE) -> dict[str, Any]:
    """Compile-time exit verification: ONNX Runtime vs the compiled PyTorch partitions, tier by tier.

    Cases are real calibration inputs (:func:`coverage_samples`); the held-out test split also
    gives the bundle's accuracy and exit rates in ONNX Runtime. The manifest's thresholds must be
    the calibrated ones.

    Args:
        tolerance, score_tolerance: decision and confidence tolerances; the driver loosens them for
            quantized partitions (the reference is the float PyTorch partitions).

    Raises:
        SplitcError: a decision, class or confidence differs (outside the borderline band), a
            threshold differs, or the check could not be made.
    """
    from splitc.runtime.runner import BundleRunner

    setup = ctx.exits
    runner = BundleRunner(bundle)
    exits = runner.manifest.get("exits", [])
    wrong = [f"exit {e['index']}: manifest threshold {e['threshold']!r} != calibrated {c.threshold!r}"
             for e, c in zip(exits, setup.chosen) if float(e["threshold"]) != float(c.threshold)]
    if len(exits) != len(setup.chosen):
        wrong.append(f"the manifest lists {len(exits)} exit(s), {len(setup.chosen)} were kept")
    index = coverage_samples(setup, tolerance=tolerance)
    test = set(int(i) for i in setup.splits["test"])
    cases = [[a[i:i + 1] for a in ctx.calibration.inputs] for i in index]
    thresholds = {i: c.threshold for i, c in enumerate(setup.chosen)}
    reference = _partition_reference(ctx, setup, runner.manifest["model"]["outputs"][0]["tensor"])
    result = compare_exit_decisions(runner, cases, reference, thresholds, tolerance, score_tolerance)
    result["threshold_mismatches"] = wrong
    result["passed"] = result["passed"] and not wrong
    result["split"] = "test + nearest-to-threshold calibration samples"
    on_test = [k for k, i in enumerate(index) if int(i) in test]
    decisions = result.pop("decisions", [])
    taken = [decisions[k][0] for k in on_test] if decisions else []
    preds = [decisions[k][1] for k in on_test] if decisions else []
    truth = setup.truth[np.array([index[k] for k in on_test], dtype=np.int64)]
    result.update({"test_samples": len(on_test), "reference": setup.reference,
                   "accuracy_onnxruntime": float(np.mean(np.array(preds) == truth)) if preds else None,
                   "exit_rate_onnxruntime": [float(np.mean(np.array(taken) == e)) for e in range(len(setup.chosen))]})
    log.info("[verify] exits: %d sample(s) (%d held-out), %d mismatch(es) with the compiled PyTorch partitions "
             "(%d borderline), max confidence difference %.2g; held-out accuracy %s, exit rates %s",
             result["samples"], len(on_test), result["mismatches"], result["borderline"], result["max_score_diff"],
             f"{result['accuracy_onnxruntime']:.4f}" if preds else "-",
             ", ".join(f"{r:.1%}" for r in result["exit_rate_onnxruntime"]))
    _warn_incomplete(result, "at compile time")
    if not result["passed"]:
        raise SplitcError(f"exit verification failed: {_failure_words(result)}; no bundle was written",
                          "report it, or pass --no-verify to keep the bundle anyway")
    return result


def write_exit_heads(stage, ctx) -> None:
    """``exits/exit<i>.npz``: each kept head's MLP weights and calibrated threshold (for ``splitc verify``)."""
    setup = getattr(ctx, "exits", None)
    if setup is None or not setup.chosen:
        return
    folder = Path(stage) / "exits"
    folder.mkdir(exist_ok=True)
    for i, chosen in enumerate(setup.chosen):
        path = folder / f"exit{i}.npz"
        arrays = {k: v.detach().numpy() for k, v in chosen.candidate.head.mlp.state_dict().items()}
        arrays[THRESHOLD_KEY] = np.array(chosen.threshold, dtype=np.float64)
        np.savez(path, **arrays)
        setup.head_files[chosen.candidate.node] = {"file": f"exits/{path.name}",
                                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# ------------------------------------------------------------------------------------------- splitc verify


def _load_head(bundle: Path, entry: dict[str, Any], classes: int) -> tuple[ExitHead, float | None]:
    """The head of a manifest exit from its weights file (sha256 checked) and its recorded threshold."""
    weights = entry.get("head", {}).get("weights")
    if not weights:
        raise Unverifiable(f"exit {entry['index']} lists no weights file (head.weights)")
    path = bundle / weights["file"]
    if not path.is_file():
        raise SplitcError(f"bundle file '{path}' is missing", "recompile the bundle")
    if hashlib.sha256(path.read_bytes()).hexdigest() != weights["sha256"]:
        raise SplitcError(f"bundle file '{path}' does not match its sha256 in the manifest", "recompile the bundle")
    head = ExitHead(tuple(entry["head"]["feature_shape"]), classes)
    with np.load(path) as data:
        head.mlp.load_state_dict({k: torch.from_numpy(data[k]) for k in data.files if k != THRESHOLD_KEY})
        recorded = float(data[THRESHOLD_KEY]) if THRESHOLD_KEY in data.files else None
    return head.eval(), recorded


def _received_value(spec: dict[str, Any], value: np.ndarray) -> np.ndarray:
    """The float value a received wire tensor stands for in the original model."""
    from splitc.runtime.encoding import dequantize_affine_uint8

    encoding = spec.get("encoding", {"kind": "raw"})
    if "bottleneck" in encoding:
        raise Unverifiable(f"tensor '{spec['name']}' arrives as a learned bottleneck code, which the original model "
                           "cannot decode (its decoder is only inside the ONNX partition)")
    if not encoding.get("in_graph"):
        return value
    if encoding["kind"] == "affine_uint8":
        return dequantize_affine_uint8(value, spec)
    if encoding["kind"] == "float16":
        return value.astype(np.float32)
    return value


class _Override(ValueCapture):
    """Runs the original graph with some nodes' values replaced (what a tier received), capturing others."""

    def __init__(self, gm, overrides: dict[str, torch.Tensor], wanted: set[str], sink) -> None:
        super().__init__(gm, wanted, sink)
        self.overrides = overrides

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.name in self.overrides:
            value = self.overrides[n.name]
            if n.name in self.wanted:
                self.sink(n.name, value.clone())
            return value
        return super().run_node(n)


def _model_reference(manifest: dict[str, Any], gm: torch.fx.GraphModule, heads: dict[int, ExitHead]) -> ReferenceTier:
    """The original model (traced again), fed on each tier with what the tier received, with the rebuilt heads."""
    exits = {e["index"]: e for e in manifest["exits"]}
    specs = {t["link"]: {s["name"]: s for s in t["tensors"]} for t in manifest["transfers"]}
    output_tensor = manifest["model"]["outputs"][0]["tensor"]
    nodes = {n.name for n in gm.graph.nodes}
    working = {p["tier_index"] for p in manifest["partitions"]}
    last = max(working)

    def tier(index: int, received: dict[str, np.ndarray], inputs: list[np.ndarray]) -> TierReference:
        overrides = {}
        if index > 0:
            link = specs.get(index - 1, {})
            for name, value in received.items():
                if name not in link:
                    continue
                if name not in nodes:
                    raise Unverifiable(f"wire tensor '{name}' is not a node of the model traced again")
                overrides[name] = torch.from_numpy(np.array(_received_value(link[name], value)))
        mine = [i for i, e in exits.items() if e["tier_index"] == index]
        wanted = {exits[i]["node"] for i in mine} | {output_tensor}
        captured: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            _Override(gm, overrides, wanted, captured.__setitem__).run(*[torch.from_numpy(np.array(a)) for a in inputs])
            ref = TierReference()
            for i in mine:
                scores = torch.softmax(heads[i](captured[exits[i]["node"]]), dim=-1)
                ref.confidence[i] = float(scores.max())
                ref.classes[i] = int(scores.argmax())
        if index == last and output_tensor in captured:
            ref.final = captured[output_tensor].numpy()
        return ref

    return tier


def check_exit_semantics(bundle, manifest: dict[str, Any], module: torch.nn.Module,
                         cases: list[list[np.ndarray]], tolerance: float = DECISION_TOLERANCE,
                         extra_cases: Callable[[], list[list[np.ndarray]]] | None = None,
                         score_tolerance: float = SCORE_TOLERANCE) -> dict[str, Any]:
    """``splitc verify`` on a bundle with exits: ONNX Runtime's exit decisions vs the rebuilt PyTorch exits.

    The reference is the original model (traced again with torch.fx, so node names match the
    manifest) with the heads rebuilt from ``exits/exit<i>.npz`` (sha256 checked) and their
    recorded thresholds, fed on each tier with what that tier received (float16 / uint8 wire
    values dequantized as the manifest says). A threshold in the manifest that differs from
    the recorded one fails. When ``cases`` leave some exit's decision unexercised and
    ``extra_cases`` is given (e.g. the calibration inputs), those are added.

    Returns:
        The comparison (:func:`compare_exit_decisions`); ``checked: False`` (never passed)
        when the reference cannot be built.

    Raises:
        SplitcError: a head file is missing or does not match its sha256.
    """
    from splitc.runtime.runner import BundleRunner

    bundle = Path(bundle)
    exits = manifest["exits"]
    classes = int(manifest["model"]["outputs"][0]["shape"][-1])
    try:
        loaded = {e["index"]: _load_head(bundle, e, classes) for e in exits}
        gm = torch.fx.symbolic_trace(module)
    except Unverifiable as exc:
        return _unchecked(str(exc), len(cases))
    except SplitcError:
        raise
    except Exception as exc:  # e.g. a bundle of a torch.export-traced model: the model does not trace again
        return _unchecked(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}", len(cases))
    missing = sorted({e["node"] for e in exits} - {n.name for n in gm.graph.nodes})
    if missing:
        return _unchecked(f"exit node(s) {', '.join(missing)} not found when tracing the model again", len(cases))
    wrong = [f"exit {e['index']}: manifest threshold {e['threshold']!r} != recorded {loaded[e['index']][1]!r} "
             f"({e['head']['weights']['file']})" for e in exits
             if loaded[e["index"]][1] is not None and float(e["threshold"]) != loaded[e["index"]][1]]
    wrong += [f"exit {e['index']}: no threshold recorded in {e['head']['weights']['file']}" for e in exits
              if loaded[e["index"]][1] is None]
    thresholds = {i: (t if t is not None else float("nan")) for i, (_, t) in loaded.items()}
    reference = _model_reference(manifest, gm, {i: h for i, (h, _) in loaded.items()})
    runner = BundleRunner(bundle)
    result = compare_exit_decisions(runner, cases, reference, thresholds, tolerance, score_tolerance)
    if result["checked"] and not result["complete"] and extra_cases is not None:
        more = extra_cases()
        if more:
            log.info("[verify] exits: adding %d calibration input(s) so that every exit is exercised", len(more))
            result = compare_exit_decisions(runner, [*cases, *more], reference, thresholds, tolerance, score_tolerance)
    result.pop("decisions", None)
    result["threshold_mismatches"] = wrong
    result["passed"] = result["passed"] and not wrong
    if result["checked"]:
        _warn_incomplete(result, "by splitc verify")
    if not result["passed"]:
        log.error("[verify] exits FAILED: %s", _failure_words(result))
    return result


def _unchecked(reason: str, samples: int) -> dict[str, Any]:
    log.error("[verify] exits NOT verified: %s", reason)
    return {"checked": False, "reason": reason, "samples": samples, "exited": 0, "mismatches": 0, "borderline": 0,
            "complete": False, "passed": False}
