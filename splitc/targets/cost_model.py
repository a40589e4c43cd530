"""The latency cost model: kernels (fused node sequences), layout conversions, per-run cost; links.

A node on a target, when it starts a kernel of its own::

    time = max(flops / (peak_flops[precision] * efficiency[op_class]),
               bytes_moved / memory_bandwidth) + op_overhead  (+ layout conversions)

``bytes_moved`` is inputs read + outputs written + parameters read. Nodes of the
``view`` class cost nothing (no kernel); depthwise convolutions use the target's
``conv_depthwise`` efficiency when it has one; BatchNorms folded into the preceding
convolution at export cost nothing.

**Kernels.** Backends run some node sequences as one kernel (ONNX Runtime on CPU:
Conv + BatchNorm + ReLU, Conv + residual Add + ReLU, MatMul + bias + GELU, Add +
LayerNorm). The target lists them as role sequences, head first
(``fused_patterns: [conv+act, conv+binary+act, ...]``; roles in
:data:`~splitc.targets.target.FUSION_ROLES`), learned by ``splitc profile`` from
timed pairs and triples: a node continues its producer's kernel when the producer
has no other user and (producer's kernel so far + this node's role) is a prefix of
a declared pattern. A node inside another's kernel pays only its FLOPs (no launch,
no memory round trip of its own). Older target files list whole classes instead
(``fused_op_classes``): every node of such a class is priced that way.

**Layout conversions** (``layout_conversion`` > 0). ONNX Runtime runs convolutions and
what follows them (pooling, activations, residual adds) in a blocked layout (NCHWc) and
converts at the edges of such a run: into it before a convolution that reads a plain
tensor, out of it before a node that cannot take it. Each conversion costs
``layout_conversion * bytes / memory_bandwidth``: inside a graph it is charged to the
node that needs it (:func:`node_times`), at a cut to the partitions on both sides
(:func:`boundary_times`): a real network's consecutive convolutions share one
conversion, a single-convolution benchmark pays two.

**Per run.** Each partition run (one ``session.run``) costs ``run_overhead_s`` once
(:func:`boundary_times` adds it to every tier's entry cost).

**Measured nodes.** A target written by ``splitc profile --model`` carries this model's
own node times (``model_profile``): a node whose name, op and output bytes match takes
its measured figure instead of the prediction (:func:`measured_mask` says which).

A link costs ``rtt + 8 * bytes / bandwidth_bps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch.fx

from splitc.core.op_classes import FREE_OP_CLASSES
from splitc.core.passes.profile import (DEPTHWISE, FLOPS, FOLDABLE, IN_BYTES, IS_TENSOR, OP_CLASS, OP_NAME, OUT_BYTES,
                                        PARAM_BYTES)

if TYPE_CHECKING:
    from splitc.targets.target import Link, Target

__all__ = ["node_time", "node_times", "link_time", "precision_of", "fusion_role", "kernel_roles", "boundary_times",
           "subgraph_time", "measured_mask", "LAYOUT_REGION_ROLES"]

_PRECISION = {"torch.float32": "fp32", "torch.float64": "fp32", "torch.float16": "fp16",
              "torch.bfloat16": "fp16", "torch.int8": "int8", "torch.uint8": "int8"}
_COMPUTE_OPS = ("call_module", "call_function", "call_method")
#: Roles ONNX Runtime keeps in the blocked layout once a convolution produced it.
LAYOUT_REGION_ROLES = frozenset({"conv", "pool", "act", "binary", "norm"})
#: ONNX Runtime's blocked convolutions read inputs of fewer channels than a block (8) as they are.
_MIN_BLOCKED_CHANNELS = 8


def precision_of(node: torch.fx.Node) -> str:
    """The precision a node computes in, from its output dtype (fp32 when unknown)."""
    meta = node.meta.get("tensor_meta")
    dtype = getattr(meta, "dtype", None)
    return _PRECISION.get(str(dtype), "fp32")


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Inputs that carry a tensor computed in the graph (not weights, not Python values)."""
    return [a for a in node.all_input_nodes
            if a.op in ("placeholder", *_COMPUTE_OPS) and a.meta.get(IS_TENSOR, a.op == "placeholder")]


def _channels(node: torch.fx.Node) -> int:
    """Channel count (dim 1) of a 4-D tensor value, else a large number (no exemption)."""
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return int(shape[1]) if shape is not None and len(shape) == 4 else 1 << 30


def fusion_role(node: torch.fx.Node) -> str:
    """What ``node`` is to kernel fusion: its op class, with element-wise split into ``act`` / ``binary``."""
    op_class = node.meta.get(OP_CLASS, "other")
    if op_class == "elementwise":
        return "binary" if len(_tensor_inputs(node)) >= 2 else "act"
    return op_class


class _Context:
    """Kernel chains and layout regions of a graph for one target, computed once in topological order."""

    def __init__(self, target: "Target") -> None:
        self.target = target
        self.prefixes = {p[:i] for p in target.fused_patterns for i in range(2, len(p) + 1)}
        self.chain: dict[torch.fx.Node, tuple[str, ...]] = {}
        self.region: dict[torch.fx.Node, bool] = {}

    def visit(self, node: torch.fx.Node) -> None:
        if node in self.chain:
            return
        if node.op not in _COMPUTE_OPS:
            self.chain[node], self.region[node] = (), False
            return
        producers = _tensor_inputs(node)
        for p in producers:
            self.visit(p)
        role = fusion_role(node)
        if role == "view":  # no kernel: a view of a blocked tensor is converted where a kernel reads it
            self.chain[node], self.region[node] = (), any(self.region[p] for p in producers)
            return
        if node.meta.get(FOLDABLE) and producers:  # folded into its convolution: invisible
            self.chain[node], self.region[node] = self.chain[producers[0]], self.region[producers[0]]
            return
        chain: tuple[str, ...] = (role,)
        for p in producers:
            if self.chain[p] and len(p.users) == 1 and self.chain[p] + (role,) in self.prefixes:
                chain = self.chain[p] + (role,)
                break
        self.chain[node] = chain
        self.region[node] = role == "conv" or (role in LAYOUT_REGION_ROLES
                                               and any(self.region[p] for p in producers))

    def fused(self, node: torch.fx.Node) -> bool:
        return len(self.chain.get(node, ())) > 1 or node.meta.get(OP_CLASS) in self.target.fused_op_classes

    def conversion_bytes(self, node: torch.fx.Node) -> int:
        """Bytes converted between layouts before ``node`` runs (into or out of the blocked layout)."""
        if not self.target.layout_conversion or node.op not in _COMPUTE_OPS or node.meta.get(FOLDABLE):
            return 0
        role = fusion_role(node)
        moved = 0
        for p in _tensor_inputs(node):
            if role == "conv" and not self.region[p]:
                if _channels(p) >= _MIN_BLOCKED_CHANNELS:  # a stem conv on 3 channels reads the plain layout
                    moved += int(p.meta.get(OUT_BYTES, 0))   # into the blocked layout
            elif role not in LAYOUT_REGION_ROLES and self.region[p] and role != "view":
                moved += int(p.meta.get(OUT_BYTES, 0))   # out of it
        return moved


def _iterative_visit(ctx: _Context, nodes: Iterable[torch.fx.Node]) -> None:
    """Visit every node of the graphs ``nodes`` belong to in topological order (no deep recursion)."""
    graphs = []
    for node in nodes:
        if node.graph not in graphs:
            graphs.append(node.graph)
    for graph in graphs:
        for node in graph.nodes:  # fx keeps nodes in topological order: producers are always visited first
            ctx.visit(node)


def _measured(node: torch.fx.Node, target: "Target") -> float | None:
    profile = target.model_profile
    if profile is None:
        return None
    row = profile.nodes.get(node.name)
    if row is None or row.op != node.meta.get(OP_NAME) or row.out_bytes != node.meta.get(OUT_BYTES):
        return None
    return row.seconds


def _predicted(node: torch.fx.Node, target: "Target", ctx: _Context) -> float:
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
    if ctx.fused(node):
        return compute
    moved = meta.get(IN_BYTES, 0) + meta.get(OUT_BYTES, 0) + meta.get(PARAM_BYTES, 0)
    convert = target.layout_conversion * ctx.conversion_bytes(node) / target.memory_bandwidth
    return max(compute, moved / target.memory_bandwidth) + target.op_overhead_s + convert


def node_times(nodes: Iterable[torch.fx.Node], target: "Target") -> np.ndarray:
    """Predicted (or measured) seconds of one call of each node on ``target`` (needs the profile pass).

    Kernel chains and layout regions are computed over the whole graph the nodes belong to.

    Args:
        nodes: profiled fx nodes (any order; usually the compute nodes of one graph).
        target: the tier.

    Returns:
        ``[len(nodes)]`` float64 seconds.
    """
    nodes = list(nodes)
    ctx = _Context(target)
    _iterative_visit(ctx, nodes)
    out = np.empty(len(nodes), dtype=np.float64)
    for i, node in enumerate(nodes):
        measured = _measured(node, target)
        out[i] = measured if measured is not None else _predicted(node, target, ctx)
    return out


def node_time(node: torch.fx.Node, target: "Target") -> float:
    """Predicted seconds for one call of ``node`` on ``target`` (see :func:`node_times`)."""
    return float(node_times([node], target)[0])


def measured_mask(nodes: Sequence[torch.fx.Node], target: "Target") -> np.ndarray:
    """``[len(nodes)]`` booleans: which nodes take a measured figure from the target's ``model_profile``."""
    return np.array([_measured(n, target) is not None for n in nodes], dtype=bool)


def kernel_roles(nodes: Iterable[torch.fx.Node], target: "Target") -> dict[str, tuple[str, ...]]:
    """Node name -> the roles of the kernel it ends, head first (length > 1: fused into its producer)."""
    nodes = list(nodes)
    ctx = _Context(target)
    _iterative_visit(ctx, nodes)
    return {n.name: ctx.chain[n] for n in nodes}


def boundary_times(nodes: Sequence[torch.fx.Node], crossing: Sequence[Sequence[str]],
                   target: "Target") -> tuple[np.ndarray, np.ndarray]:
    """Seconds a tier pays at the cuts that start and end its partition (besides its nodes' times).

    Entry at cut ``c``: one run of the partition (``run_overhead_s``) plus the layout conversion of
    every tensor crossing ``c`` that was in the blocked layout and is read there by a node that
    keeps it (the receiver converts it back). Exit at cut ``c``: the conversion of every crossing
    tensor produced in the blocked layout (the sender converts it to a plain tensor before it
    leaves). Cut 0 ships model inputs (plain); the exit at the last cut covers the model outputs.
    Measured nodes (``model_profile``) already include the conversions of the whole model, so a
    tensor produced by one is not converted again at the last cut.

    Args:
        nodes: the compute nodes in plan order (``candidates.nodes``).
        crossing: per cut ``0..N``, the names of the tensors crossing it (the last: model outputs).
        target: the tier.

    Returns:
        ``(entry, exit)``, each ``[N+1]`` seconds.
    """
    n = len(nodes)
    entry = np.full(n + 1, target.run_overhead_s, dtype=np.float64)
    exit_ = np.zeros(n + 1, dtype=np.float64)
    if not target.layout_conversion or not nodes:
        return entry, exit_
    ctx = _Context(target)
    _iterative_visit(ctx, nodes)
    by_name = {node.name: node for node in nodes}
    per_byte = target.layout_conversion / target.memory_bandwidth
    for c, names in enumerate(crossing):
        for name in names:
            node = by_name.get(name)
            if node is None or not ctx.region.get(node):
                continue
            size = float(node.meta.get(OUT_BYTES, 0))
            if c == n and _measured(node, target) is not None:
                continue
            exit_[c] += per_byte * size
            if c < n and any(ctx.region.get(u, False) and fusion_role(u) in LAYOUT_REGION_ROLES for u in node.users):
                entry[c] += per_byte * size
    return entry, exit_


def subgraph_time(gm: torch.fx.GraphModule, target: "Target") -> float:
    """Predicted seconds of one run of a whole graph (a partition or a benchmark) as its own session.

    Its nodes (:func:`node_times`; its inputs are plain tensors), the conversion of outputs left in
    the blocked layout, and one run's fixed cost.
    """
    nodes = [n for n in gm.graph.nodes if n.op in _COMPUTE_OPS]
    total = float(node_times(nodes, target).sum()) + target.run_overhead_s
    if target.layout_conversion:
        ctx = _Context(target)
        _iterative_visit(ctx, nodes)
        output = next((n for n in gm.graph.nodes if n.op == "output"), None)
        outs = output.all_input_nodes if output is not None else []
        total += sum(target.layout_conversion * o.meta.get(OUT_BYTES, 0) / target.memory_bandwidth
                     for o in dict.fromkeys(outs) if ctx.region.get(o))
    return total


def link_time(num_bytes: float | np.ndarray, link: "Link") -> float | np.ndarray:
    """Seconds to ship ``num_bytes`` over ``link``: one round trip plus serialisation."""
    return link.rtt_s + 8.0 * np.asarray(num_bytes, dtype=np.float64) / link.bandwidth_bps
