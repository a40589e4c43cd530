"""The latency cost model: roofline compute per node plus per-kernel overhead; links.

For a node on a target::

    time = max(flops / (peak_flops[precision] * efficiency[op_class]),
               bytes_moved / memory_bandwidth) + op_overhead

``bytes_moved`` is inputs read + outputs written + parameters read. Nodes of the
``view`` class cost nothing (no kernel); depthwise convolutions use the target's
``conv_depthwise`` efficiency when it has one; BatchNorms folded into the preceding
convolution at export cost nothing; classes the target's backend fuses into the
previous kernel (``fused_op_classes``) pay no overhead and no memory traffic of
their own, only their FLOPs. The per-kernel overhead is what dominates small-batch
inference on fast accelerators (see ``shared/measurements``: a median ResNet-50
node costs ~27 us on an H100 in eager PyTorch, whatever its FLOPs).

A link costs ``rtt + 8 * bytes / bandwidth_bps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch.fx

from splitc.core.op_classes import FREE_OP_CLASSES
from splitc.core.passes.profile import DEPTHWISE, FLOPS, FOLDABLE, IN_BYTES, OP_CLASS, OUT_BYTES, PARAM_BYTES

if TYPE_CHECKING:
    from splitc.targets.target import Link, Target

__all__ = ["node_time", "node_times", "link_time", "precision_of"]

_PRECISION = {"torch.float32": "fp32", "torch.float64": "fp32", "torch.float16": "fp16",
              "torch.bfloat16": "fp16", "torch.int8": "int8", "torch.uint8": "int8"}


def precision_of(node: torch.fx.Node) -> str:
    """The precision a node computes in, from its output dtype (fp32 when unknown)."""
    meta = node.meta.get("tensor_meta")
    dtype = getattr(meta, "dtype", None)
    return _PRECISION.get(str(dtype), "fp32")


def node_time(node: torch.fx.Node, target: "Target") -> float:
    """Predicted seconds for one call of ``node`` on ``target`` (needs the profile pass)."""
    meta = node.meta
    op_class = meta.get(OP_CLASS, "other")
    if op_class in FREE_OP_CLASSES or meta.get(FOLDABLE):
        return 0.0
    flops = float(meta.get(FLOPS, 0))
    precision = precision_of(node)
    peak = target.peak_flops.get(precision) or target.peak_flops["fp32"]
    efficiency = target.efficiency.get(op_class, target.efficiency["other"])
    if meta.get(DEPTHWISE):  # a refinement the target may measure (splitc profile); else conv's
        efficiency = target.efficiency.get("conv_depthwise", efficiency)
    compute = flops / (peak * efficiency)
    if op_class in target.fused_op_classes:
        return compute
    moved = meta.get(IN_BYTES, 0) + meta.get(OUT_BYTES, 0) + meta.get(PARAM_BYTES, 0)
    return max(compute, moved / target.memory_bandwidth) + target.op_overhead_s


def node_times(nodes: Iterable[torch.fx.Node], target: "Target") -> np.ndarray:
    """:func:`node_time` for each node, as a float64 array."""
    return np.array([node_time(n, target) for n in nodes], dtype=np.float64)


def link_time(num_bytes: float | np.ndarray, link: "Link") -> float | np.ndarray:
    """Seconds to ship ``num_bytes`` over ``link``: one round trip plus serialisation."""
    return link.rtt_s + 8.0 * np.asarray(num_bytes, dtype=np.float64) / link.bandwidth_bps
