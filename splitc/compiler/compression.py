"""Shared machinery of the compression passes (issue 4): settings, calibration data,
running partitions on real data, measuring task accuracy, editing partitions at
their boundaries, and what the planner and the manifest need to know.

The passes themselves live one per file (``passes/insert_bottleneck.py``,
``passes/quantize_transfer.py``, ``passes/quantize.py``); this module holds what
they share, so each pass stays short.

Accuracy (``--accuracy-target A``): measured on a held-out split of ``--calib``
that nothing was trained or calibrated on. With labels, accuracy is top-1 against
them; without, it is agreement with the original model's prediction. ``A <= 1`` is
read as a fraction of the original model's accuracy on the same samples (0.99 = at
most 1 % relative loss), so one value works for any task difficulty.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx

from splitc.errors import SplitcError

__all__ = ["Accuracy", "CompressionSettings", "CompressionState", "state_of", "run_chain", "predictions",
           "accuracy_of", "append_output_transform", "prepend_input_transform", "encodable_tensors",
           "adjust_problem", "wire_entry", "DEFAULT_ACCURACY_TARGET", "WireEncoding"]

log = logging.getLogger("splitc")

#: Relative accuracy kept when lossy compression is asked for without --accuracy-target.
DEFAULT_ACCURACY_TARGET = 0.99
TRANSFER_DTYPES = ("float32", "float16", "uint8")
QUANTIZE_MODES = ("none", "int8", "fp16")
#: Channel ratios ``--bottleneck auto`` tries (with and without a stride-2 spatial reduction).
AUTO_RATIOS = (0.0625, 0.125, 0.25, 0.5)
_WIRE_ITEMSIZE = {"float32": 4, "float16": 2, "uint8": 1}


@dataclass(frozen=True)
class CompressionSettings:
    """The compression knobs, checked once.

    Attributes:
        transfer_dtype: dtype on the wire for float tensors the sending partition produces.
        bottleneck: ``None`` (off), ``"auto"`` or a channel ratio in (0, 1].
        quantize: ``"none"``, ``"int8"`` (QDQ ONNX partitions) or ``"fp16"``.
        prune: fraction of channels removed from the sending partition (0 = off).
        accuracy_target: see the module docstring.
    """

    transfer_dtype: str = "float32"
    bottleneck: str | float | None = None
    quantize: str = "none"
    prune: float = 0.0
    accuracy_target: float = DEFAULT_ACCURACY_TARGET
    absolute_accuracy: bool = False

    @classmethod
    def from_options(cls, options, check_calibration: bool = True) -> "CompressionSettings":
        """Validate the flags of :class:`~splitc.compiler.context.CompileOptions` (one-line errors).

        Args:
            check_calibration: require ``--calib`` for the knobs that need data (planning alone does not).
        """
        dtype = getattr(options, "transfer_dtype", "float32") or "float32"
        if dtype not in TRANSFER_DTYPES:
            raise SplitcError(f"--transfer-dtype '{dtype}' is not supported", f"use one of {', '.join(TRANSFER_DTYPES)}")
        bottleneck = _parse_bottleneck(getattr(options, "bottleneck", None))
        quantize = getattr(options, "quantize", "none") or "none"
        if quantize not in QUANTIZE_MODES:
            raise SplitcError(f"--quantize '{quantize}' is not supported", "use int8 or fp16")
        prune = float(getattr(options, "prune", 0.0) or 0.0)
        if not 0.0 <= prune < 1.0:
            raise SplitcError(f"--prune {prune:g} is out of range", "give the fraction of channels to remove, in [0, 1)")
        target = getattr(options, "accuracy_target", None)
        target = DEFAULT_ACCURACY_TARGET if target is None else float(target)
        if not 0.0 < target <= 1.0:
            raise SplitcError(f"--accuracy-target {target:g} is out of range",
                              "give the fraction of the original accuracy to keep, in (0, 1], e.g. 0.99")
        settings = cls(dtype, bottleneck, quantize, prune, target, bool(getattr(options, "absolute_accuracy", False)))
        if check_calibration and settings.needs_calibration and not getattr(options, "calib", None):
            what = ", ".join(settings.describe_needing_calibration())
            raise SplitcError(f"{what} needs calibration data", "pass --calib calib.npz (real inputs, optionally labels y)")
        return settings

    @property
    def active(self) -> bool:
        return (self.transfer_dtype != "float32" or self.bottleneck is not None or self.quantize != "none"
                or self.prune > 0)

    @property
    def lossy_transfer(self) -> bool:
        """Whether what crosses the wire is no longer the exact float tensor."""
        return self.transfer_dtype != "float32" or self.bottleneck is not None

    @property
    def needs_calibration(self) -> bool:
        return self.transfer_dtype == "uint8" or self.bottleneck is not None or self.quantize == "int8" or self.prune > 0

    def describe_needing_calibration(self) -> list[str]:
        out = []
        if self.transfer_dtype == "uint8":
            out.append("--transfer-dtype uint8 (scale and zero point)")
        if self.bottleneck is not None:
            out.append(f"--bottleneck {self.bottleneck} (training)")
        if self.quantize == "int8":
            out.append("--quantize int8 (activation ranges)")
        if self.prune > 0:
            out.append(f"--prune {self.prune:g} (fine-tuning)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"transfer_dtype": self.transfer_dtype, "bottleneck": self.bottleneck, "quantize": self.quantize,
                "prune": self.prune, "accuracy_target": self.accuracy_target,
                "target_kind": "absolute" if self.absolute_accuracy else "relative"}


def _parse_bottleneck(value) -> str | float | None:
    if value is None or value in ("", "none", "off", "0", 0, 0.0):
        return None
    if value == "auto":
        return "auto"
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise SplitcError(f"--bottleneck '{value}' is neither 'auto' nor a number",
                          "give a channel ratio in (0, 1], e.g. 0.25, or 'auto'") from None
    if not 0.0 < ratio <= 1.0 or not math.isfinite(ratio):
        raise SplitcError(f"--bottleneck {ratio:g} is out of range", "give a channel ratio in (0, 1], e.g. 0.25, or 'auto'")
    return ratio


@dataclass
class WireEncoding:
    """How one wire tensor is carried, once compression applies (keyed by wire name).

    Attributes:
        shape, dtype: what the ONNX graphs put on the wire (the code's shape under a bottleneck).
        encoding: the manifest ``encoding`` object.
    """

    shape: list[int]
    dtype: str
    encoding: dict[str, Any]

    @property
    def bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * {"float32": 4, "float16": 2, "uint8": 1}[self.dtype]


@dataclass
class CompressionState:
    """What the compression passes share during one compile (``ctx.compression``)."""

    settings: CompressionSettings
    calib: Any = None  # CalibrationData | None
    train: np.ndarray | None = None
    test: np.ndarray | None = None
    encodings: dict[str, WireEncoding] = field(default_factory=dict)
    reference_accuracy: float | None = None
    reference_predictions: np.ndarray | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # step -> held-out accuracy after it
    notes: list[str] = field(default_factory=list)
    model_outputs: list[str] = field(default_factory=list)
    pruning: dict[str, Any] | None = None  # what --prune did (FLOPs, boundary bytes before/after)
    #: bottleneck config the planner assumes, set by insert_bottleneck ("unset" = from the flags)
    plan_bottleneck: Any = "unset"

    def target_met(self, acc: float) -> bool:
        """Whether held-out accuracy ``acc`` satisfies the target with its margin to spare (see :class:`Accuracy`)."""
        return float(acc) - getattr(acc, "margin", 0.0) + 1e-12 >= self.required_accuracy

    @property
    def required_accuracy(self) -> float:
        if self.settings.absolute_accuracy:
            return self.settings.accuracy_target
        return self.settings.accuracy_target * (self.reference_accuracy or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings.to_dict(),
                "held_out_samples": int(len(self.test)) if self.test is not None else 0,
                "reference_accuracy": self.reference_accuracy,
                "accuracy_after": dict(self.accuracy), "pruning": self.pruning, "notes": list(self.notes)}


def state_of(ctx, gm: torch.fx.GraphModule) -> CompressionState:
    """The compile's :class:`CompressionState`, created on first use (loads ``--calib``)."""
    state = getattr(ctx, "compression", None)
    if state is not None:
        return state
    settings = CompressionSettings.from_options(ctx.options)
    state = CompressionState(settings, model_outputs=sorted(_graph_outputs(gm), key=_order(gm)))
    calib = getattr(ctx, "calibration", None)
    path = getattr(ctx.options, "calib", None)
    if calib is None and path:
        from splitc.compiler.calibration import load_calibration

        calib = load_calibration(path, ctx.input_specs)
    if calib is not None:
        state.calib = calib
        # A split of our own (seeded): train = bottleneck training, ranges; test = accuracy only.
        parts = calib.split({"train": 0.7, "test": 0.3}, seed=ctx.options.seed + 4)
        state.train, state.test = parts["train"], parts["test"]
    ctx.compression = state
    return state


# ---------------------------------------------------------------------------------------------
# running partitions on real data


def _call(module: Callable, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out = module(*args)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def run_chain(partitions, input_names: list[str], inputs: Sequence[np.ndarray | torch.Tensor],
              batch: int = 128) -> dict[str, torch.Tensor]:
    """Run ``partitions`` in chain order on a stack of samples; every named value, stacked.

    Partitions are traced at batch 1 and some fold that shape into constants, so a
    batch that fails falls back to one sample at a time.
    """
    tensors = [torch.as_tensor(np.asarray(x)) for x in inputs]
    count = len(tensors[0])
    chunks: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for start in range(0, count, batch):
            values = {n: t[start:start + batch] for n, t in zip(input_names, tensors)}
            try:
                chunks.append(_run_once(partitions, values))
            except Exception:  # batch-1 shapes folded into the graph: go sample by sample
                rows = [_run_once(partitions, {n: t[i:i + 1] for n, t in values.items()})
                        for i in range(len(values[input_names[0]]))]
                chunks.append({k: torch.cat([r[k] for r in rows]) for k in rows[0]})
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def _run_once(partitions, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    values = dict(values)
    for part in partitions:
        values.update(zip(part.outputs, _call(part.graph_module, [values[n].clone() for n in part.inputs])))
    return values


def predictions(logits: torch.Tensor) -> np.ndarray:
    """Class predictions from a ``[S, classes]`` (or ``[S, ..., classes]``) output."""
    return logits.reshape(len(logits), -1).argmax(dim=1).numpy() if logits.dim() <= 2 else \
        logits.argmax(dim=-1).reshape(len(logits), -1)[:, 0].numpy()


class Accuracy(float):
    """A held-out accuracy that also carries ``margin``: one standard error of its paired
    difference from the original model on the same samples, ``sqrt(d (1 - d) / n)`` with ``d``
    the share of samples whose prediction changed. The target must be met with that margin to
    spare: 300 held-out digits are few, and without it int8 partitions that met the target on
    them (96.7 % vs 96.4 % required) lost 1.4 points on 1,000 unseen digits."""

    margin: float = 0.0

    def __new__(cls, value: float, margin: float = 0.0) -> "Accuracy":
        obj = super().__new__(cls, value)
        obj.margin = float(margin)
        return obj


def accuracy_of(preds: np.ndarray, state: CompressionState, index: np.ndarray) -> Accuracy:
    """Top-1 accuracy against labels, or agreement with the original model without labels."""
    if state.calib.labels is not None:
        value = float((preds == state.calib.labels[index]).mean())
    else:
        value = float((preds == state.reference_predictions).mean())
    margin = 0.0
    if state.reference_predictions is not None and len(preds) == len(state.reference_predictions):
        changed = float((preds != state.reference_predictions).mean())
        margin = math.sqrt(changed * (1 - changed) / max(len(preds), 1))
    return Accuracy(value, margin)


def ensure_reference(state: CompressionState, gm: torch.fx.GraphModule, input_names: list[str],
                     output_name: str) -> None:
    """The original model's held-out predictions and accuracy (computed once)."""
    if state.reference_accuracy is not None:
        return
    full = _WholeGraph(gm, input_names)
    values = run_chain([full], input_names, state.calib.batch(state.test))
    state.reference_predictions = predictions(values[output_name])
    state.reference_accuracy = accuracy_of(state.reference_predictions, state, state.test)


class _WholeGraph:
    """The unsplit graph as a one-partition chain (for :func:`run_chain`)."""

    def __init__(self, gm: torch.fx.GraphModule, input_names: list[str]) -> None:
        from splitc.passes.cut import model_output_names

        self.graph_module = gm
        self.inputs = input_names
        self.outputs = model_output_names(gm)


def chain_accuracy(partitions, ctx, state: CompressionState) -> float:
    """Held-out accuracy of the (compressed) partitions chained in PyTorch."""
    names = [s.name for s in ctx.input_specs]
    values = run_chain(partitions, names, state.calib.batch(state.test))
    return accuracy_of(predictions(values[state.model_outputs[0]]), state, state.test)


# ---------------------------------------------------------------------------------------------
# editing partitions at their boundaries


def append_output_transform(part, name: str, module: torch.nn.Module, attr: str, flops: int = 0) -> None:
    """Make partition ``part`` return ``module(value)`` instead of ``value`` for output ``name``."""
    gm = part.graph_module
    gm.add_submodule(attr, module)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = list(output.args[0])
    position = part.outputs.index(name)
    with gm.graph.inserting_before(output):
        new = gm.graph.call_module(attr, (values[position],))
    new.meta["splitc.flops"] = int(flops)
    values[position] = new
    output.args = (tuple(values),)
    gm.recompile()


def prepend_input_transform(part, name: str, module: torch.nn.Module, attr: str, flops: int = 0) -> None:
    """Make partition ``part`` apply ``module`` to its input ``name`` before anything reads it."""
    gm = part.graph_module
    gm.add_submodule(attr, module)
    nodes = list(gm.graph.nodes)
    placeholder = next(n for n in nodes if n.op == "placeholder" and n.name == name)
    first_body = next(n for n in nodes if n.op != "placeholder")
    with gm.graph.inserting_before(first_body):
        new = gm.graph.call_module(attr, (placeholder,))
    new.meta["splitc.flops"] = int(flops)
    placeholder.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    gm.recompile()


def encodable_tensors(ctx) -> dict[str, tuple[int, int]]:
    """Wire tensors a partition produces that may be encoded: name -> (producer, first link).

    Model inputs (no partition produces them, so no graph can encode them) and model
    outputs (the answer stays exact) are never encoded. A tensor is encoded once, at
    the first link it crosses; tiers further down relay the encoded form, and every
    partition that reads it decodes it at its input.
    """
    outputs = set(ctx.compression.model_outputs)
    producer = {name: p.index for p in ctx.partitions for name in p.outputs}
    found: dict[str, tuple[int, int]] = {}
    n = len(ctx.candidates.nodes)
    for link, cut in enumerate(ctx.plan_result.best.cuts):
        if cut >= n:
            break
        for name in ctx.candidates.cuts[cut].crossing:
            if name in producer and name not in outputs and name not in found:
                found[name] = (producer[name], link)
    return found


def consumers_of(ctx, name: str) -> list:
    """Partitions that read wire tensor ``name``."""
    return [p for p in ctx.partitions if name in p.inputs]


def refresh_examples(ctx) -> None:
    """Re-record every partition's example inputs after their boundaries changed."""
    from splitc.passes.cut import run_partitions

    names = [s.name for s in ctx.input_specs]
    with torch.no_grad():
        run_partitions(ctx.partitions, names, ctx.example_inputs, record_inputs=True)


def is_float_tensor(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype in (torch.float32, torch.float16,
                                                                           torch.float64, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# planner and manifest


def adjust_problem(problem, gm: torch.fx.GraphModule, candidates, ctx):
    """The planner's problem with the wire bytes and encoder/decoder time of the knobs.

    Exact for the transfer dtype (a tensor's encoded size does not depend on the plan:
    it is encoded once, where it is produced). A bottleneck ``(ratio, stride)`` shrinks
    every cut that can take one (a single 4-D float tensor) to its code and charges
    the encoder's and decoder's FLOPs to the link's two tiers. ``--bottleneck 0.25``
    plans with ``(0.25, 1)``; ``auto`` plans without, and ``insert_bottleneck`` then
    searches cut and ratio jointly through :func:`compressed_problem`. Returns
    ``problem`` unchanged when no knob is set (today's behaviour).
    """
    settings = CompressionSettings.from_options(ctx.options, check_calibration=False)
    state = getattr(ctx, "compression", None)
    if state is not None and state.plan_bottleneck != "unset":
        config = state.plan_bottleneck
    else:
        config = (settings.bottleneck, 1) if isinstance(settings.bottleneck, float) else None
    return compressed_problem(problem, gm, candidates, ctx.tiers, settings.transfer_dtype, config)


def compressed_problem(problem, gm: torch.fx.GraphModule, candidates, tiers, transfer_dtype: str,
                       bottleneck: tuple[float, int] | None):
    """``problem`` with ``wire_bytes``/``link_extra_s`` for a transfer dtype and bottleneck config."""
    import dataclasses

    if transfer_dtype == "float32" and bottleneck is None:
        return problem
    by_name = {n.name: n for n in gm.graph.nodes}
    outputs = _graph_outputs(gm)
    itemsize = _WIRE_ITEMSIZE[transfer_dtype]
    wire = np.array(problem.cut_bytes, dtype=np.float64).copy()
    extra = np.zeros((problem.tiers - 1, problem.n + 1))
    for cut in candidates.cuts:
        nodes = [by_name[name] for name in cut.crossing]
        encodable = [n for n in nodes if n.op != "placeholder" and n.name not in outputs and is_float_tensor(n)]
        total = 0.0
        for node in nodes:
            size = float(node.meta.get("splitc.out_bytes", 0))
            total += size * itemsize / 4.0 if node in encodable else size
        if bottleneck is not None and len(nodes) == 1 and len(encodable) == 1 and bottleneck_ok(encodable[0]):
            shape = list(encodable[0].meta["tensor_meta"].shape)
            code = code_shape(shape, *bottleneck)
            total = float(np.prod(code)) * itemsize
            enc, dec = coder_flops(shape, code)
            for t in range(problem.tiers - 1):
                extra[t, cut.index] = _conv_seconds(enc, tiers[t]) + _conv_seconds(dec, tiers[t + 1])
        wire[cut.index] = total
    return dataclasses.replace(problem, wire_bytes=wire, link_extra_s=extra)


def _order(gm: torch.fx.GraphModule):
    from splitc.passes.cut import model_output_names

    names = model_output_names(gm)
    return names.index


def _graph_outputs(gm: torch.fx.GraphModule) -> set[str]:
    from splitc.passes.cut import model_output_names

    return set(model_output_names(gm))


def _conv_seconds(flops: float, target) -> float:
    peak = target.peak_flops["fp32"] * target.efficiency["conv"]
    return flops / peak + target.op_overhead_s


def bottleneck_ok(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "shape") and len(meta.shape) == 4 and is_float_tensor(node)


def code_shape(shape: list[int], ratio: float, stride: int) -> list[int]:
    """Shape of the bottleneck code for a ``[N, C, H, W]`` tensor."""
    n, c, h, w = shape
    return [n, max(1, int(round(c * ratio))), -(-h // stride), -(-w // stride)]


def coder_flops(shape: list[int], code: list[int]) -> tuple[int, int]:
    """FLOPs of the encoder and decoder of :mod:`splitc.passes.insert_bottleneck` (multiply-adds x 2)."""
    n, c, h, w = shape
    _, cc, ch, cw = code
    k = 1 if (ch, cw) == (h, w) else 3
    enc = 2 * n * cc * ch * cw * c * k * k
    dec = 2 * n * h * w * (cc * c * k * k + c * c)
    return int(enc), int(dec)


def wire_entry(entry: dict[str, Any], ctx) -> dict[str, Any]:
    """A manifest tensor entry as it really is on the wire (shape, dtype, bytes, encoding)."""
    state = getattr(ctx, "compression", None)
    if state is None or entry["name"] not in state.encodings:
        return entry
    enc = state.encodings[entry["name"]]
    out = dict(entry, shape=list(enc.shape), dtype=enc.dtype, bytes=enc.bytes)
    if "encoding" in out:
        out["encoding"] = dict(enc.encoding)
    return out


# ---------------------------------------------------------------------------------------------
# verification of a compressed bundle


class CompressedReference(torch.nn.Module):
    """The compressed partitions chained in PyTorch: the reference a lossy bundle is verified
    against (the original model differs from it by the compression itself, which is judged by
    accuracy instead, see :func:`bundle_accuracy`)."""

    def __init__(self, ctx) -> None:
        super().__init__()
        self._partitions = ctx.partitions
        self._names = [s.name for s in ctx.input_specs]
        self._outputs = list(ctx.compression.model_outputs)

    def forward(self, *inputs: torch.Tensor):
        from splitc.passes.cut import run_partitions

        values = run_partitions(self._partitions, self._names, list(inputs))
        return tuple(values[name] for name in self._outputs)


def verification_reference(ctx, module: torch.nn.Module) -> torch.nn.Module:
    """``module``, or the compressed chain when the wire carries a lossy encoding."""
    state = getattr(ctx, "compression", None)
    lossy = state is not None and (state.encodings or state.pruning)
    return CompressedReference(ctx) if lossy else module


def bundle_accuracy(bundle, ctx) -> dict[str, Any] | None:
    """Held-out accuracy of the written bundle itself (ONNX Runtime, real encodings on the wire).

    Raises:
        SplitcError: the bundle misses the accuracy target.
    """
    state = getattr(ctx, "compression", None)
    noise = getattr(ctx, "noise", None)  # --privacy-epsilon: the noise costs accuracy too (passes/add_noise.py)
    if state is None or state.calib is None or not (state.settings.active or noise is not None):
        return None
    from splitc.runtime_stubs.runner import BundleRunner

    runner = BundleRunner(bundle)
    output = runner.manifest["model"]["outputs"][0]["name"]
    names = [s.name for s in ctx.input_specs]
    preds, wire = [], []
    for i in state.test:
        sample = {n: a[i:i + 1] for n, a in zip(names, state.calib.inputs)}
        out = runner.run(sample)[output]
        preds.append(int(np.asarray(out).reshape(-1).argmax()))
        wire.append(sum(runner.wire_bytes))
    acc = accuracy_of(np.array(preds), state, state.test)
    result = {"held_out_samples": int(len(state.test)), "accuracy": acc,
              "reference_accuracy": state.reference_accuracy, "required_accuracy": state.required_accuracy,
              "wire_bytes_per_request": int(np.mean(wire)) if wire else 0,
              "metric": "top-1 vs labels" if state.calib.labels is not None else "agreement with the original model"}
    log.info("[verify] bundle held-out accuracy %.4f (original %.4f, required %.4f, %d samples), %d bytes on the wire "
             "per request", acc, state.reference_accuracy, state.required_accuracy, len(state.test),
             result["wire_bytes_per_request"])
    if not state.target_met(acc):
        raise SplitcError(f"the compiled bundle's held-out accuracy {acc:.4f} misses the required "
                          f"{state.required_accuracy:.4f} (--accuracy-target {state.settings.accuracy_target:g})",
                          f"raise --privacy-epsilon (now {noise.epsilon:g}; less noise)" if noise is not None else
                          "use a milder setting (--transfer-dtype float16, a larger --bottleneck ratio, no --quantize)")
    return result


#: Tolerance (relative to each output's largest magnitude) of the element-wise check of the model
#: outputs when the partitions themselves are quantized (--quantize). int8 weights and activations
#: move values by several quantization steps: on the MNIST example single wire-tensor elements
#: moved by up to ~80 uint8 steps and the logits by up to 29 % of their largest magnitude while
#: held-out accuracy stayed within the target. So for quantized partitions the element-wise check
#: is only a sanity bound (wire tensors are not compared) and the held-out accuracy of the written
#: bundle (:func:`bundle_accuracy`, a compile error when it misses the target) is the real gate.
QUANTIZED_RTOL = 1.0


def quantized_partitions(ctx) -> bool:
    """Whether ``--quantize`` rewrote the partitions (element-wise checks then only loosely apply)."""
    state = getattr(ctx, "compression", None)
    return state is not None and state.settings.quantize != "none"


def verification_rtol(ctx, rtol: float) -> float:
    """``rtol``, loosened to :data:`QUANTIZED_RTOL` for quantized partitions."""
    state = getattr(ctx, "compression", None)
    return max(rtol, QUANTIZED_RTOL) if state is not None and state.settings.quantize != "none" else rtol


def verification_inputs(ctx, samples: int = 8) -> str | None:
    """For quantized partitions, an ``.npz`` of held-out calibration samples to verify on.

    Random inputs are far outside the calibrated int8 ranges, so quantized layers saturate on
    them and the element-wise comparison would measure that, not the bundle; real inputs are
    what the tolerance :data:`QUANTIZED_RTOL` is meant for. None = verify on random inputs.
    """
    import tempfile

    state = getattr(ctx, "compression", None)
    if state is None or state.settings.quantize == "none" or state.calib is None:
        return None
    index = state.test[:samples]
    path = Path(tempfile.mkdtemp(prefix="splitc-verify-")) / "inputs.npz"
    np.savez(path, **{s.name: a[index].reshape(len(index), *s.shape) for s, a in zip(ctx.input_specs, state.calib.inputs)})
    return str(path)


def lossy_bundle(manifest: dict[str, Any], random_inputs: bool = False) -> bool:
    """Whether a bundle's outputs differ from the original model by design (``splitc verify``).

    Such a bundle (lossy wire encoding, bottleneck, quantized partitions) cannot match the
    original model element-wise and its compressed PyTorch reference is gone after the compile,
    so ``splitc verify`` compares top-1 predictions instead (:func:`agreement_ok`).
    """
    settings = (manifest.get("plan") or {}).get("compression") or {}
    lossy = (settings.get("transfer_dtype", "float32") != "float32" or settings.get("bottleneck") is not None
             or settings.get("quantize", "none") != "none" or bool(settings.get("pruning"))
             or any("noise" in t for t in manifest.get("transfers", [])))  # --privacy-epsilon: noise on the wire
    if lossy and random_inputs:
        log.warning("verify: the bundle is compressed (%s); it is judged by top-1 agreement with the original "
                    "model, which random inputs say little about: pass --inputs with real samples",
                    ", ".join(f"{k} {settings[k]}" for k in ("transfer_dtype", "bottleneck", "quantize")
                              if k in settings))
    return lossy


def agreement_ok(manifest: dict[str, Any], agree: list[bool]) -> bool:
    """Top-1 agreement with the original model >= the bundle's accuracy target (relative)."""
    settings = (manifest.get("plan") or {}).get("compression") or {}
    target = float(settings.get("accuracy_target", DEFAULT_ACCURACY_TARGET))
    share = sum(agree) / max(len(agree), 1)
    log.info("verify: compressed bundle agrees with the original model's top-1 on %d of %d input(s) (%.1f %%; "
             "required %.1f %%)", sum(agree), len(agree), 100 * share, 100 * target)
    return share + 1e-12 >= target
