"""``fold_constants``: evaluate parameter-only subgraphs once and store them as buffers.

A node whose inputs are all weights or constants (e.g. torchvision Swin's
relative-position bias, gathered from a learned table) computes the same tensor
for every request. Left in the graph it could be chosen to cross a cut, and the
ONNX exporter would fold it into an initializer under a new name. Folding it here
makes it a ``get_attr`` like any weight: the cut pass copies it into the partitions
that read it and it never goes on the wire.

torch.fx's ``const_fold.split_const_subgraphs`` does the same job but returns a
module that evaluates the constants lazily on first call and renames attributes;
we need plain buffers in the graph before profiling, so the few lines are here.
"""

from __future__ import annotations

import torch
import torch.fx

from splitc.core.pass_manager import Pass, PassResult
from splitc.core.graph import COMPUTE_OPS

__all__ = ["FoldConstantsPass"]


class FoldConstantsPass(Pass):
    """Replace every parameter-only computation by a buffer holding its value."""

    name = "fold_constants"
    provides = ("splitc.constants_folded",)

    def run(self, gm, ctx) -> PassResult:
        values: dict[torch.fx.Node, object] = {}
        interpreter = torch.fx.Interpreter(gm)
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                values[node] = interpreter.fetch_attr(node.target)
            elif node.op in COMPUTE_OPS and node.all_input_nodes and all(a in values for a in node.all_input_nodes) \
                    and not _is_random(node):
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: values[a])
                with torch.no_grad():
                    values[node] = getattr(interpreter, node.op)(node.target, args, kwargs)
        folded = 0
        for node in [n for n in values if n.op in COMPUTE_OPS]:
            if isinstance(values[node], torch.Tensor) and any(u not in values for u in node.users):
                folded += 1
                name = f"_splitc_const_{node.name}"
                gm.register_buffer(name, values[node].detach().clone())
                with gm.graph.inserting_before(node):
                    replacement = gm.graph.get_attr(name)
                node.replace_all_uses_with(replacement)
        if folded:
            gm.graph.eliminate_dead_code()  # the folded subgraphs now have no users
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified=bool(folded), summary=f"{folded} parameter-only subgraph(s) folded to buffers")


def _is_random(node: torch.fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target))
    return any(key in name for key in ("rand", "dropout", "bernoulli", "normal"))
