"""``fold_static_shapes``: replace shape arithmetic by the constants it computes.

Bundles have static shapes, so every non-tensor value in the graph (``x.shape``,
``x.size(0)``, ``h // patch``, ``torch._assert(h == 224)``) is a constant for the
compiled input shape. Folding them leaves a graph whose every edge is a tensor,
so a cut never has to ship a Python int across the wire. Reads the values the
profile pass recorded in ``node.meta[CONST_VALUE]``.
"""

from __future__ import annotations

import torch
import torch.fx

from splitc.core.pass_manager import Pass, PassResult
from splitc.core.passes.profile import CONST_VALUE

__all__ = ["FoldStaticShapesPass"]

_SIDE_EFFECT_ONLY = {torch._assert}


class FoldStaticShapesPass(Pass):
    """Inline non-tensor node values as constants and drop the nodes that computed them."""

    name = "fold_static_shapes"
    requires = ("splitc.profile",)
    provides = ("splitc.static_shapes",)

    def run(self, gm, ctx) -> PassResult:
        folded = 0
        for node in list(gm.graph.nodes):
            if node.op in ("placeholder", "output", "get_attr") or CONST_VALUE not in node.meta:
                continue
            value = node.meta[CONST_VALUE]
            if value is None and node.target in _SIDE_EFFECT_ONLY and not node.users:
                gm.graph.erase_node(node)  # an assert on shapes that are now constants
                folded += 1
                continue
            if not _is_literal(value):
                continue
            _replace_uses(node, value)
            gm.graph.erase_node(node)
            folded += 1
        if folded:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified=bool(folded), summary=f"{folded} shape computations folded to constants")


def _is_literal(value: object) -> bool:
    if isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list, torch.Size)):
        return all(_is_literal(v) for v in value)
    return False


def _replace_uses(node: torch.fx.Node, value: object) -> None:
    literal = tuple(value) if isinstance(value, torch.Size) else value
    for user in list(node.users):
        user.args = torch.fx.node.map_arg(user.args, lambda a: literal if a is node else a)
        user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a: literal if a is node else a)
