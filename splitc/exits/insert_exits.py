"""``insert_exits``: attach the kept exit heads to the graph as real nodes.

For exit ``i`` at node ``X`` (chosen by the plan pass, see
:mod:`splitc.exits.heads`) two nodes are inserted right after ``X``::

    exit{i}_logits     = call_module splitc_exit{i}(X)             # class scores [1, classes]
    exit{i}_confidence = call_module splitc_exit{i}_confidence(...)  # max softmax [1]

with their own submodules. Nothing reads them inside the graph; the cut pass makes
them extra outputs of the partition holding them, so ONNX export writes them under
those names, and cuts that partition right after ``exit{i}_confidence``
(:data:`~splitc.core.passes.cut.SEGMENT_END`): the tier runs the part up to the exit,
the runtime applies the exit rule, and only the requests that stay run the next
segment, on the same tier. An exit therefore fires wherever its node runs -- inside a
tier as well as at a tier's end. Because nodes are added, the candidate cuts are
recomputed and the plan's cut indices remapped so that each cut stays after the same
backbone node and the exit heads stay upstream of it.

Writes ``node.meta["splitc.exit"] = i``, the profile keys and ``PARTITION_OUTPUT`` on the new nodes and
``SEGMENT_END`` on each confidence node; marks ``ctx.exits.inserted`` (a later re-plan keeps these exits).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from splitc.exits.heads import ExitConfidence
from splitc.core.pass_manager import Pass, PassResult
from splitc.core.passes.candidates import compute_candidates
from splitc.core.passes.cut import PARTITION_OUTPUT, SEGMENT_END
from splitc.core.passes.profile import FLOPS, FLOPS_SOURCE, IN_BYTES, IS_TENSOR, OP_CLASS, OUT_BYTES, PARAM_BYTES

__all__ = ["InsertExitsPass", "insert_exit_nodes", "EXIT_META"]

EXIT_META = "splitc.exit"


def _annotate(node: torch.fx.Node, value: torch.Tensor, flops: int, in_bytes: int, index: int) -> None:
    node.meta.update({
        "tensor_meta": _extract_tensor_metadata(value), IS_TENSOR: True, OP_CLASS: "other",
        FLOPS: int(flops), FLOPS_SOURCE: "counted", OUT_BYTES: value.numel() * value.element_size(),
        IN_BYTES: in_bytes, PARAM_BYTES: 0, EXIT_META: index, PARTITION_OUTPUT: True,
    })


def insert_exit_nodes(gm: torch.fx.GraphModule, exits: list[tuple[str, torch.nn.Module, int]]) -> dict[str, tuple[str, str]]:
    """Insert ``(node name, head, head FLOPs)`` exits; returns node -> (logits name, confidence name)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    names = {}
    for i, (node_name, head, flops) in enumerate(exits):
        feature = by_name[node_name]
        gm.add_submodule(f"splitc_exit{i}", head)
        gm.add_submodule(f"splitc_exit{i}_confidence", ExitConfidence())
        with gm.graph.inserting_after(feature):
            logits = gm.graph.create_node("call_module", f"splitc_exit{i}", (feature,), {}, name=f"exit{i}_logits")
        with gm.graph.inserting_after(logits):
            conf = gm.graph.create_node("call_module", f"splitc_exit{i}_confidence", (logits,), {},
                                        name=f"exit{i}_confidence")
        meta = feature.meta["tensor_meta"]
        with torch.no_grad():
            value = head(torch.zeros(tuple(meta.shape), dtype=meta.dtype))
            score = ExitConfidence()(value)
        _annotate(logits, value, flops, feature.meta.get(OUT_BYTES, 0), i)
        _annotate(conf, score, 4 * value.numel(), value.numel() * value.element_size(), i)
        conf.meta[SEGMENT_END] = True  # the exit rule runs here: the partition holding it ends after it
        names[node_name] = (logits.name, conf.name)
    gm.graph.lint()
    gm.recompile()
    return names


def _remap(old, new, index: int) -> int:
    """New cut index after the same backbone node, past any exit nodes attached to it."""
    if index == 0:
        return 0
    k = new.index_of(old.nodes[index - 1])
    while k < len(new.nodes) and new.nodes[k].startswith("exit") and new.nodes[k] not in old.nodes:
        k += 1
    return k


class InsertExitsPass(Pass):
    """Attach the exit heads the plan kept; remap the plan's cuts to the new graph."""

    name = "insert_exits"
    requires = ("plan", "exit_candidates")
    provides = ("exits",)

    def run(self, gm, ctx) -> PassResult:
        setup = getattr(ctx, "exits", None)
        if setup is None or not setup.chosen:
            return PassResult(gm, modified=False, summary="no exits to insert")
        exits = [(c.candidate.node, c.candidate.head, c.candidate.head_flops) for c in setup.chosen]
        setup.tensor_names = insert_exit_nodes(gm, exits)
        setup.inserted = True
        old, new = ctx.candidates, compute_candidates(gm)
        remap = lambda c: _remap(old, new, c)  # noqa: E731
        plan = ctx.plan_result
        plan.best = dataclasses.replace(plan.best, cuts=tuple(remap(c) for c in plan.best.cuts))
        plan.alternatives = [dataclasses.replace(a, cuts=tuple(remap(c) for c in a.cuts)) for a in plan.alternatives]
        plan.pareto = [dataclasses.replace(a, cuts=tuple(remap(c) for c in a.cuts)) for a in plan.pareto]
        for variant in plan.variants:
            for cut in (variant.get("plan") or {}).get("cuts", []):
                cut["index"] = remap(cut["index"])
        for rows in plan.ranking:
            for row in rows:
                row["index"] = remap(row["index"])
                row["plan"] = [remap(c) for c in row["plan"]] if row["plan"] else row["plan"]
        ctx.candidates = new
        where = ", ".join(f"exit{i} at {node} (threshold {c.threshold:.4f})"
                          for i, ((node, _, _), c) in enumerate(zip(exits, setup.chosen)))
        return PassResult(gm, modified=True, summary=f"{len(exits)} exit(s): {where}")
