"""``eliminate_dead_code``: drop nodes whose values nobody reads.

A dead node still reads its inputs, so it would keep them live across cuts (for
example ``a, _ = attn(q, k, v)`` leaves an unused ``getitem`` that holds the
attention module's tuple output live). torch.fx's own ``Graph.eliminate_dead_code``
does the work; it keeps side-effecting calls.
"""

from __future__ import annotations

from splitc.core.pass_manager import Pass, PassResult

__all__ = ["EliminateDeadCodePass"]


class EliminateDeadCodePass(Pass):
    """Remove unused, side-effect-free nodes."""

    name = "eliminate_dead_code"
    provides = ("splitc.no_dead_code",)

    def run(self, gm, ctx) -> PassResult:
        before = len(gm.graph.nodes)
        changed = gm.graph.eliminate_dead_code()
        if changed:
            gm.recompile()
        return PassResult(gm, modified=changed, summary=f"{before - len(gm.graph.nodes)} dead node(s) removed")
