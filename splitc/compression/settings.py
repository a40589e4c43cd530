"""Shared machinery of the compression passes (issue 4): settings, calibration data,
running partitions on real data, measuring task accuracy, editing partitions at
their boundaries, and what the planner and the manifest need to know.

The passes themselves live one per file (``compression/insert_bottleneck.py``,
``compression/quantize_transfer.py``, ``compression/quantize.py``); this module holds what
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx

from splitc.core.accuracy import AccuracyGuard, guard_of
from splitc.core.graph import is_float_tensor, model_output_names
from splitc.errors import SplitcError
from splitc.core.passes.profile import OUT_BYTES

__all__ = ["CompressionSettings", "CompressionState", "state_of", "encodable_tensors", "consumers_of",
           "adjust_problem", "compressed_problem", "wire_entry", "WireEncoding", "TRANSFER_DTYPES", "QUANTIZE_MODES",
           "AUTO_RATIOS", "coder_flops", "code_shape", "bottleneck_ok", "lossy_bundle"]

log = logging.getLogger("splitc")

TRANSFER_DTYPES = ("float32", "float16", "uint8")
QUANTIZE_MODES = ("none", "int8", "fp16")
#: Channel ratios ``--bottleneck auto`` tries (with and without a stride-2 spatial reduction).
AUTO_RATIOS = (0.0625, 0.125, 0.25, 0.5)
_WIRE_ITEMSIZE = {"float32": 4, "float16": 2, "uint8": 1}


@dataclass(frozen=True)
class CompressionSettings:
    """The compression knobs, checked once (the accuracy they answer to is :class:`~splitc.core.accuracy.AccuracyTarget`).

    Attributes:
        transfer_dtype: dtype on the wire for float tensors the sending partition produces.
        bottleneck: ``None`` (off), ``"auto"`` or a channel ratio in (0, 1].
        quantize: ``"none"``, ``"int8"`` (QDQ ONNX partitions) or ``"fp16"``.
        prune: fraction of channels removed from the sending partition (0 = off).
        needs_data: whether ``--calib`` is required (compile: yes when a knob trains or calibrates;
            ``splitc plan`` only costs the knobs).
    """

    transfer_dtype: str = "float32"
    bottleneck: str | float | None = None
    quantize: str = "none"
    prune: float = 0.0

    @classmethod
    def from_options(cls, options, check_calibration: bool = True) -> "CompressionSettings":
        """Validate the flags of :class:`~splitc.core.options.CompileOptions` (one-line errors).

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
        if not (math.isfinite(prune) and 0.0 <= prune < 1.0):
            raise SplitcError(f"--prune {prune:g} is out of range", "give the fraction of channels to remove, in [0, 1)")
        settings = cls(dtype, bottleneck, quantize, prune)
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
                "prune": self.prune}


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
        return int(np.prod(self.shape, dtype=np.int64)) * _WIRE_ITEMSIZE[self.dtype]


@dataclass
class CompressionState:
    """What the compression passes share during one compile (``ctx.compression``).

    Accuracy questions go to ``guard`` (the compile's :class:`~splitc.core.accuracy.AccuracyGuard`;
    None without ``--calib``); the properties below read it for the passes' convenience.
    """

    settings: CompressionSettings
    guard: AccuracyGuard | None = None
    encodings: dict[str, WireEncoding] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)  # step -> held-out accuracy after it
    notes: list[str] = field(default_factory=list)
    model_outputs: list[str] = field(default_factory=list)
    pruning: dict[str, Any] | None = None  # what --prune did (FLOPs, boundary bytes before/after)
    #: bottleneck config the planner assumes, set by insert_bottleneck ("unset" = from the flags)
    plan_bottleneck: Any = "unset"
    #: --quantize: the float ONNX exports before quantization (verification's reference), by partition
    float_partitions: list[bytes] | None = None
    #: --quantize: the mode the shipped partitions really have ("int8", "fp16"; None = kept in float32)
    quantized: str | None = None

    @property
    def calib(self):
        return None if self.guard is None else self.guard.calib

    @property
    def train(self) -> np.ndarray | None:
        return None if self.guard is None else self.guard.train

    @property
    def test(self) -> np.ndarray | None:
        return None if self.guard is None else self.guard.test

    @property
    def reference_accuracy(self) -> float | None:
        return None if self.guard is None else self.guard.reference_accuracy

    @property
    def required_accuracy(self) -> float:
        return self.guard.required_accuracy

    def judge(self, step: str, acc: float) -> bool:
        """The accuracy rule on ``acc`` (recorded with its numbers); whether it passed."""
        return self.guard.judge(step, acc).met

    def to_dict(self) -> dict[str, Any]:
        guard = self.guard
        return {**self.settings.to_dict(),
                **(guard.target.to_dict() if guard is not None else {}),
                "held_out_samples": int(len(guard.test)) if guard is not None else 0,
                "reference_accuracy": self.reference_accuracy,
                "accuracy_after": dict(self.accuracy), "pruning": self.pruning, "notes": list(self.notes),
                "quantized": self.quantized}


def state_of(ctx, gm: torch.fx.GraphModule) -> CompressionState:
    """The compile's :class:`CompressionState`, created on first use (with the accuracy guard when there is ``--calib``)."""
    state = getattr(ctx, "compression", None)
    if state is not None:
        return state
    ctx.compression = CompressionState(ctx.settings_for(CompressionSettings), guard_of(ctx, gm),
                                       model_outputs=model_output_names(gm))
    return ctx.compression


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


# ---------------------------------------------------------------------------------------------
# planner and manifest


def adjust_problem(problem, gm: torch.fx.GraphModule, ctx):
    """The planner's problem with the wire bytes and encoder/decoder time of the knobs.

    Exact for the transfer dtype (a tensor's encoded size does not depend on the plan:
    it is encoded once, where it is produced). A bottleneck ``(ratio, stride)`` shrinks
    every cut that can take one (a single 4-D float tensor) to its code and charges
    the encoder's and decoder's FLOPs to the link's two tiers. ``--bottleneck 0.25``
    plans with ``(0.25, 1)``; ``auto`` plans without, and ``insert_bottleneck`` then
    searches cut and ratio jointly through :func:`compressed_problem`. Returns
    ``problem`` unchanged when no knob is set (today's behaviour).
    """
    settings = ctx.settings_for(CompressionSettings, lambda o: CompressionSettings.from_options(o, check_calibration=False))
    state = getattr(ctx, "compression", None)
    if state is not None and state.plan_bottleneck != "unset":
        config = state.plan_bottleneck
    else:
        config = (settings.bottleneck, 1) if isinstance(settings.bottleneck, float) else None
    return compressed_problem(problem, gm, ctx.candidates, ctx.tiers, settings.transfer_dtype, config)


def compressed_problem(problem, gm: torch.fx.GraphModule, candidates, tiers, transfer_dtype: str,
                       bottleneck: tuple[float, int] | None):
    """``problem`` with ``wire_bytes``/``link_extra_s`` for a transfer dtype and bottleneck config."""
    import dataclasses

    if transfer_dtype == "float32" and bottleneck is None:
        return problem
    by_name = {n.name: n for n in gm.graph.nodes}
    outputs = set(model_output_names(gm))
    itemsize = _WIRE_ITEMSIZE[transfer_dtype]
    wire = np.array(problem.cut_bytes, dtype=np.float64).copy()
    extra = np.zeros((problem.tiers - 1, problem.n + 1))
    for cut in candidates.cuts:
        nodes = [by_name[name] for name in cut.crossing]
        encodable = [n for n in nodes if n.op != "placeholder" and n.name not in outputs and is_float_tensor(n)]
        total = 0.0
        for node in nodes:
            size = float(node.meta.get(OUT_BYTES, 0))
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
    """FLOPs of the encoder and decoder of :mod:`splitc.compression.insert_bottleneck` (multiply-adds x 2).

    Encoder: one 3x3 convolution ``C -> C'`` at the code's resolution (whatever the stride).
    Decoder: a 3x3 convolution ``C' -> C`` at the tensor's resolution (after upsampling when the
    code is smaller) and a 1x1 ``C -> C``. Counted as ``torch.utils.flop_counter.FlopCounterMode``
    counts convolutions (2 x multiply-adds; bias, ReLU and upsampling are free), which a test checks
    on the real modules.
    """
    n, c, h, w = shape
    _, cc, ch, cw = code
    enc = 2 * n * cc * ch * cw * c * 9
    dec = 2 * n * h * w * (cc * c * 9 + c * c)
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
# verification of a compressed bundle (the checks themselves: splitc/driver/verify.py)


def lossy_bundle(manifest: dict[str, Any]) -> bool:
    """Whether a bundle's outputs differ from the original model's by design.

    True when a wire tensor is encoded (float16, uint8, a bottleneck code), noise is added, a
    trained privacy defence fine-tuned the partitions, or they are quantized or pruned: such a bundle is checked element-wise against its
    compile-time reference (the compressed chain) and against the original model by accuracy.
    Read from what the bundle really holds (a knob the accuracy guard rejected does not count);
    manifests written before ``compression.quantized`` existed count ``--quantize`` as given.
    """
    for transfer in manifest.get("transfers", []):
        if "noise" in transfer or "defence" in transfer:
            return True
        for tensor in transfer["tensors"]:
            encoding = tensor.get("encoding", {})
            if encoding.get("kind", "raw") != "raw" or "bottleneck" in encoding:
                return True
    settings = (manifest.get("plan") or {}).get("compression") or {}
    quantized = settings.get("quantized", settings.get("quantize", "none"))
    return bool(settings.get("pruning")) or quantized not in (None, "none")
