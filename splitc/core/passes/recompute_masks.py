"""``recompute_masks``: recompute cheap input-derived tensors next to each consumer; the small input crosses.

A transformer turns its padding mask (``attention_mask``, 1 x S int64) into an expanded
boolean mask (1 x 1 x S x S) once, and every layer's attention reads that. Left as is, the
expanded mask is live across every cut between the first and the last layer: S^2 bytes per
link per request (256 KiB at S = 512) where the 8 S bytes of the input would do.

This pass finds *cheap input-derived* nodes -- weight-free view, data-movement or elementwise
ops whose inputs are only model inputs, small constant buffers, or other such nodes -- whose
value is larger than the model inputs it derives from, and gives each consumer its own copy of
the chain, inserted right before it. The original chain then has no users and is removed. A
cut now carries the (small) model input instead of the derived tensor, and each tier recomputes
the mask it needs (a handful of elementwise ops per layer).

Runs after profiling (it reads op classes and byte counts; the copies carry the original
nodes' metadata) and after the constant folds, before ``reorder_for_cut`` and ``candidates``.
"""

from __future__ import annotations

import torch
import torch.fx

from splitc.core.graph import COMPUTE_OPS
from splitc.core.pass_manager import Pass, PassResult
from splitc.core.passes.profile import IS_TENSOR, OP_CLASS, OUT_BYTES

__all__ = ["RecomputeMasksPass", "recompute_input_derived", "MAX_CONSTANT_BYTES"]

_CHEAP_CLASSES = ("view", "data_movement", "elementwise")
#: a constant buffer larger than this is not duplicated into a consumer's chain
MAX_CONSTANT_BYTES = 64 * 1024


def _is_small_buffer(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    """A constant buffer (not a learned parameter) of at most :data:`MAX_CONSTANT_BYTES`."""
    if node.op != "get_attr":
        return False
    try:
        gm.get_parameter(node.target)
        return False  # a weight: recomputing would copy it to another tier
    except AttributeError:
        pass
    try:
        value = torch.fx.Interpreter(gm).fetch_attr(node.target)
    except AttributeError:
        return False
    return isinstance(value, torch.Tensor) and value.numel() * value.element_size() <= MAX_CONSTANT_BYTES


def _input_derived(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, set[torch.fx.Node]]:
    """Cheap input-derived node -> the model inputs (placeholders) it derives from."""
    sources: dict[torch.fx.Node, set[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        if node.meta.get(OP_CLASS) not in _CHEAP_CLASSES or not node.meta.get(IS_TENSOR):
            continue
        inputs = node.all_input_nodes
        if not inputs or not all(a.op == "placeholder" or a in sources or _is_small_buffer(a, gm) for a in inputs):
            continue
        found: set[torch.fx.Node] = set()
        for a in inputs:
            found |= {a} if a.op == "placeholder" else sources.get(a, set())
        if found:
            sources[node] = found
    return sources


def recompute_input_derived(gm: torch.fx.GraphModule) -> int:
    """Give each consumer of a worthwhile cheap input-derived chain its own copy, right before it.

    Worthwhile: the chain's value is larger than the model inputs it derives from.

    Returns:
        The number of consumers that got their own copy.
    """
    sources = _input_derived(gm)

    def worth(node: torch.fx.Node) -> bool:
        return node.meta.get(OUT_BYTES, 0) > sum(p.meta.get(OUT_BYTES, 0) for p in sources[node])

    copies = 0
    for consumer in list(gm.graph.nodes):
        if consumer.op not in COMPUTE_OPS or consumer in sources:
            continue
        targets = [a for a in consumer.all_input_nodes if a in sources and worth(a)]
        if not targets:
            continue
        memo: dict[torch.fx.Node, torch.fx.Node] = {}

        def clone(node: torch.fx.Node) -> torch.fx.Node:
            if node not in sources:
                return node  # a placeholder or a constant buffer: shared
            if node not in memo:
                with gm.graph.inserting_before(consumer):
                    memo[node] = gm.graph.node_copy(node, clone)
            return memo[node]

        replacement = {t: clone(t) for t in targets}
        consumer.args, consumer.kwargs = torch.fx.node.map_arg(
            (consumer.args, consumer.kwargs), lambda a: replacement.get(a, a))
        copies += 1
    if copies:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return copies


class RecomputeMasksPass(Pass):
    """Recompute input-derived masks on each tier instead of shipping them (see the module docstring)."""

    name = "recompute_masks"
    requires = ("splitc.profile",)
    provides = ("splitc.masks_local",)

    def run(self, gm, ctx) -> PassResult:
        copies = recompute_input_derived(gm)
        summary = (f"{copies} consumer(s) recompute an input-derived tensor locally" if copies
                   else "no input-derived tensor worth recomputing")
        return PassResult(gm, modified=bool(copies), summary=summary)
