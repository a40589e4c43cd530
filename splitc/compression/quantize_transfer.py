"""``quantize_transfer``: carry boundary tensors in a smaller dtype (``--transfer-dtype``).

After ``cut`` (and after ``insert_bottleneck``, so a bottleneck's code is what gets
quantized), every float tensor a partition sends is encoded *inside the graphs*:
the sending partition ends with the quantization and every partition that reads the
tensor starts with the dequantization, so the exported ONNX inputs/outputs really
have the small dtype and the runtime moves those bytes as they are.

* ``float16``: a cast each side (2x fewer bytes).
* ``uint8``: affine quantization ``q = clip(round(x / s) + z, 0, 255)`` (4x fewer
  bytes). Scale and zero point come from the min/max of the tensor on the training
  split of ``--calib``; per channel (axis 1) when that lowers the quantization error
  on that data by at least 10 %, else one pair for the tensor. The ops are plain
  Div/Round/Add/Clip/Cast and Cast/Sub/Mul (what QuantizeLinear/DequantizeLinear
  compute, with round-half-even) so any ONNX runtime runs them, including at a graph
  boundary where TensorRT's explicit-quantization rules for Q/DQ pairs do not apply.

Model inputs (no partition produces them) and model outputs (the answer stays exact)
are never encoded. The accuracy of the encoded chain is measured on held-out
calibration samples; if it misses ``--accuracy-target`` the compile fails with the numbers
and what to relax (:mod:`splitc.compression.forced`): the dtype is a request, not a hint.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from splitc.compression.forced import missed
from splitc.compression.settings import CompressionSettings, WireEncoding, consumers_of, encodable_tensors, state_of
from splitc.core.graph import is_float_tensor
from splitc.core.passes.cut import append_output_transform, prepend_input_transform, refresh_examples
from splitc.core.samples import run_chain
from splitc.core.pass_manager import Pass, PassResult

__all__ = ["QuantizeTransferPass", "QuantizeU8", "DequantizeU8", "CastTo", "affine_params"]

log = logging.getLogger("splitc")


class QuantizeU8(nn.Module):
    """float -> uint8 wire values (ONNX QuantizeLinear semantics, written out)."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x / self.scale) + self.zero_point, 0, 255).to(torch.uint8)


class DequantizeU8(nn.Module):
    """uint8 wire values -> float (ONNX DequantizeLinear semantics, written out)."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.float())

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return (q.to(torch.float32) - self.zero_point) * self.scale


class CastTo(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def affine_params(values: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scale and zero point covering ``values``' min..max (0 always representable).

    Args:
        values: samples stacked on dim 0 (``[S, C, ...]``).
        axis: None for one pair, else the channel axis of one sample (counted with dim 0 = batch).
    """
    if axis is None:
        lo, hi = values.min(), values.max()
    else:
        dims = [d for d in range(values.dim()) if d != axis]
        lo, hi = values.amin(dim=dims), values.amax(dim=dims)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    zero = torch.clamp(torch.round(-lo / scale), 0, 255)
    return scale, zero


def _broadcast(t: torch.Tensor, rank: int, axis: int | None) -> torch.Tensor:
    if axis is None:
        return t.reshape([])
    shape = [1] * rank
    shape[axis] = -1
    return t.reshape(shape)


def _quant_error(values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> float:
    q = torch.clamp(torch.round(values / scale) + zero, 0, 255)
    return float(((q - zero) * scale - values).pow(2).mean())


def choose_params(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Per-tensor params, or per-channel (axis 1) when that lowers the error by >= 10 %."""
    rank = values.dim()
    scale, zero = affine_params(values, None)
    best = (_broadcast(scale, rank, None), _broadcast(zero, rank, None), None)
    if rank >= 3 and values.shape[1] > 1:
        err_tensor = _quant_error(values, *best[:2])
        cs, cz = affine_params(values, 1)
        per_channel = (_broadcast(cs, rank, 1), _broadcast(cz, rank, 1), 1)
        if _quant_error(values, *per_channel[:2]) <= 0.9 * err_tensor:
            best = per_channel
    return best


class QuantizeTransferPass(Pass):
    """Encode what crosses each link in float16 or uint8, inside the partitions' graphs."""

    name = "quantize_transfer"
    requires = ("partitions",)
    provides = ("transfer_encoding",)

    def run(self, gm, ctx) -> PassResult:
        settings = ctx.settings_for(CompressionSettings)
        if settings.transfer_dtype == "float32":
            return PassResult(gm, modified=False, summary="off (float32 on the wire)")
        state = state_of(ctx, gm)
        tensors = {name: where for name, where in encodable_tensors(ctx).items() if self._float(gm, ctx, name)}
        if not tensors:
            return PassResult(gm, modified=False, summary="nothing to encode (no partition sends a float tensor)")
        dtype = settings.transfer_dtype
        self._encode(ctx, state, tensors, dtype)
        refresh_examples(ctx)
        if state.calib is None:
            return PassResult(gm, True, f"{len(tensors)} tensor(s) as {dtype} (no --calib: accuracy not measured)")
        state.guard.ensure_reference(gm)
        acc = state.guard.chain_accuracy(ctx.partitions)
        verdict = state.guard.judge(f"--transfer-dtype {dtype}", acc)
        if not verdict.met:  # the dtype the user gave is a request: missing it fails the compile
            raise missed(verdict, "a wider dtype on the wire (--transfer-dtype float16)" if dtype == "uint8" else
                         "float32 on the wire (drop --transfer-dtype)")
        state.accuracy[f"transfer_{dtype}"] = acc
        wire = sum(state.encodings[n].bytes for n in tensors)
        return PassResult(gm, True, f"{len(tensors)} tensor(s) as {dtype}, {wire} bytes on the wire; "
                                    f"held-out accuracy {acc:.4f} (original {state.reference_accuracy:.4f})")

    @staticmethod
    def _float(gm, ctx, name: str) -> bool:
        state = ctx.compression
        if name in state.encodings:  # a bottleneck code: float32 in the graph
            return state.encodings[name].dtype == "float32"
        node = next(n for n in gm.graph.nodes if n.name == name)
        return is_float_tensor(node) and node.meta["tensor_meta"].dtype == torch.float32

    def _encode(self, ctx, state, tensors: dict[str, tuple[int, int]], dtype: str) -> None:
        names = [s.name for s in ctx.input_specs]
        with torch.no_grad():
            example = run_chain(ctx.partitions, names, ctx.example_inputs)
        values = run_chain(ctx.partitions, names, state.calib.batch(state.train)) if dtype == "uint8" else {}
        for name, (producer, _) in tensors.items():
            previous = state.encodings.get(name)
            base = dict(previous.encoding) if previous else {}
            shape = list(example[name].shape)
            tag = _attr(name)
            if dtype == "float16":
                enc = {**base, "kind": "float16", "source_dtype": "float32", "in_graph": True}
                append_output_transform(ctx.partitions[producer], name, CastTo(torch.float16), f"splitc_q_{tag}")
                for part in consumers_of(ctx, name):
                    prepend_input_transform(part, name, CastTo(torch.float32), f"splitc_dq_{tag}")
            else:
                scale, zero, axis = choose_params(values[name].float())
                enc = {**base, "kind": "affine_uint8", "source_dtype": "float32", "in_graph": True, "axis": axis,
                       "scale": [float(v) for v in scale.flatten()] if axis is not None else float(scale),
                       "zero_point": [int(z) for z in zero.flatten()] if axis is not None
                       else int(zero)}
                append_output_transform(ctx.partitions[producer], name, QuantizeU8(scale, zero), f"splitc_q_{tag}")
                for part in consumers_of(ctx, name):
                    prepend_input_transform(part, name, DequantizeU8(scale, zero), f"splitc_dq_{tag}")
            state.encodings[name] = WireEncoding(shape, dtype, enc)


def _attr(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
