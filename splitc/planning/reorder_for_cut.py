"""``reorder_for_cut``: put the DAG's optimal placement within reach of the prefix-cut planner.

The planner (:mod:`splitc.planning.chain`) is exact over cuts that are prefixes
of *one* topological order of the graph. On a branchy model (inception, densenet)
the best placement may not be such a prefix: e.g. a cheap pooling at the head of
each of two branches should run on the device while both branches' heavy tails
run in the cloud, but the traced order lists one whole branch before the other.

This pass solves the placement over all monotone placements of the DAG
(:func:`splitc.planning.dag_cut.solve_dag`: one min cut, rtt left out) and, when
that placement is not a prefix of the current order, reorders the graph's
compute nodes stably by tier (tier-0 nodes first in their current relative order,
then tier 1, ...). A monotone placement makes this a valid topological order, so
the unchanged candidates pass and chain DP see the DAG optimum as a prefix cut
and still apply memory limits, rtt, exits and compression.

The new order is kept only when the chain DP (latency, no compression or exits)
finds a strictly better prefix plan in it than in the old order; otherwise the
old order is restored (memory limits or rtt can make the min-cut placement lose).

The DAG it solves: placeholders (pinned to tier 0) and compute nodes, plus a
zero-cost output node that reads the graph's outputs and sits after every sink,
so outputs end on the last tier that runs anything, as in the chain model.
``get_attr`` values are free and never cross (every tier holds its own copy).
A non-tensor value is tied to its readers' tier (it cannot be shipped), and a
reader of a tensor that an in-place op mutates keeps its side of that op.
"""

from __future__ import annotations

import operator

import numpy as np
import torch.fx

from splitc.planning.dag_cut import DagSolution, solve_dag
from splitc.core.pass_manager import Pass, PassResult
from splitc.planning.chain import solve_chain
from splitc.core.graph import COMPUTE_OPS
from splitc.core.passes.candidates import compute_candidates
from splitc.planning.plan import build_problem, resolve_links
from splitc.targets.cost_model import node_times
from splitc.core.passes.profile import IS_TENSOR, OUT_BYTES

__all__ = ["ReorderForCutPass", "DagProblem", "build_dag_problem", "best_prefix_latency", "reorder_nodes"]

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class DagProblem:
    """The profiled graph as arrays for :func:`solve_dag`.

    Attributes:
        nodes: the DAG's fx nodes (placeholders and compute nodes, in graph order), then None
            for the output node.
        node_time: ``[k, V]`` seconds.
        edges: ``[E, 2]`` data edges.
        out_bytes: ``[V]``.
        precedence: ``[P, 2]`` order-only pairs (ties of non-tensor values, in-place ops).
        fixed: placeholder pins.
    """

    def __init__(self, gm: torch.fx.GraphModule, tiers) -> None:
        graph_nodes = list(gm.graph.nodes)
        dag = [n for n in graph_nodes if n.op == "placeholder" or n.op in COMPUTE_OPS]
        self.nodes: list[torch.fx.Node | None] = [*dag, None]
        index = {n: i for i, n in enumerate(dag)}
        out = len(dag)
        compute = [n for n in dag if n.op in COMPUTE_OPS]
        times = np.zeros((len(tiers), len(dag) + 1))
        if compute:
            cols = [index[n] for n in compute]
            times[:, cols] = np.vstack([node_times(compute, t) for t in tiers])
        self.node_time = times
        self.out_bytes = np.array([float(n.meta.get(OUT_BYTES, 0)) for n in dag] + [0.0])
        self.fixed = {index[n]: 0 for n in dag if n.op == "placeholder"}
        edges, order = [], []
        for node in graph_nodes:
            reader = out if node.op == "output" else index.get(node)
            if reader is None:
                continue
            for arg in node.all_input_nodes:
                if arg in index:
                    edges.append((index[arg], reader))
                    if not _is_tensor(arg):  # cannot cross a link: same tier as every reader
                        order.append((reader, index[arg]))
        has_reader = {u for u, _ in edges}
        # the output sits after every sink (no data: only outputs' bytes travel), so it ends on the last used tier
        order += [(index[n], out) for n in compute if index[n] not in has_reader]
        order += _inplace_precedence(graph_nodes, index)
        self.edges = np.array(edges, dtype=np.int64).reshape(-1, 2)
        self.precedence = np.array(order, dtype=np.int64).reshape(-1, 2)

    def solve(self, bandwidth: np.ndarray) -> DagSolution:
        return solve_dag(self.node_time, self.edges, self.out_bytes, bandwidth, self.fixed, self.precedence)

    def compute_tiers(self, solution: DagSolution) -> dict[torch.fx.Node, int]:
        """Tier of every compute node under ``solution``."""
        return {n: int(t) for n, t in zip(self.nodes, solution.tier) if n is not None and n.op in COMPUTE_OPS}


def build_dag_problem(gm: torch.fx.GraphModule, tiers) -> DagProblem:
    """:class:`DagProblem` of a profiled graph on ``tiers``."""
    return DagProblem(gm, tiers)


def _is_tensor(node: torch.fx.Node) -> bool:
    return bool(node.meta.get(IS_TENSOR, node.op == "placeholder"))


def _mutates_first_arg(node: torch.fx.Node) -> bool:
    """In-place ops: ``f(x, inplace=True)``, ``x.add_(y)``, ``x += y``, ``nn.ReLU(inplace=True)``."""
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace"))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    if node.op == "call_module":
        return bool(getattr(node.graph.owning_module.get_submodule(node.target), "inplace", False))
    return False


def _inplace_precedence(graph_nodes: list[torch.fx.Node], index: dict) -> list[tuple[int, int]]:
    """Readers of a tensor an in-place op changes keep their side of that op (order and tier)."""
    position = {n: i for i, n in enumerate(graph_nodes)}
    pairs = []
    for node in graph_nodes:
        if node not in index or not node.args or not _mutates_first_arg(node):
            continue
        target = node.args[0]
        if not isinstance(target, torch.fx.Node):
            continue
        for other in target.users:
            if other is node or other not in index:
                continue
            first, second = (other, node) if position[other] < position[node] else (node, other)
            pairs.append((index[first], index[second]))
    return pairs


def best_prefix_latency(gm: torch.fx.GraphModule, tiers, links) -> float:
    """Predicted latency of the chain DP's optimum over prefix cuts of the current order (inf: none fits)."""
    candidates = compute_candidates(gm)
    if not candidates.nodes:
        return 0.0
    try:
        return solve_chain(build_problem(gm, candidates, tiers, links)).latency
    except ValueError:  # no prefix plan fits the tiers' memory
        return float("inf")


def reorder_nodes(gm: torch.fx.GraphModule, compute_order: list[torch.fx.Node]) -> None:
    """Lay the graph out as placeholders, get_attr values, ``compute_order``, output (must be topological)."""
    nodes = list(gm.graph.nodes)
    layout = ([n for n in nodes if n.op == "placeholder"] + [n for n in nodes if n.op == "get_attr"]
              + list(compute_order) + [n for n in nodes if n.op == "output"])
    if len(layout) != len(nodes):
        raise ValueError("the new order must list every compute node exactly once")
    for before, node in zip(layout, layout[1:]):
        before.append(node)  # moves ``node`` right after ``before``
    gm.graph.lint()
    gm.recompile()


def _single_order(gm: torch.fx.GraphModule) -> bool:
    """Whether the compute nodes have one topological order (each reads the one before it)."""
    compute = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    return all(prev in node.all_input_nodes for prev, node in zip(compute, compute[1:]))


def _skip_reason(gm: torch.fx.GraphModule, ctx) -> str | None:
    options = ctx.options
    if len(ctx.tiers) < 2:
        return "one tier: nothing to place"
    if options.split:
        return "--split names cut nodes in the traced order: kept as is"
    if options.objective != "latency":
        return f"objective '{options.objective}' re-ranks prefix cuts of the traced order: kept as is"
    if options.workload != "inference":
        return "training workload: the min cut models forward transfers only"
    if options.bandwidth_range:
        return "--bandwidth-range plans over one order for every bandwidth: kept as is"
    if _single_order(gm):
        return "the graph is a chain: its only topological order is the current one"
    return None


class ReorderForCutPass(Pass):
    """Reorder compute nodes so the DAG's min-cut placement is a prefix cut (when it beats the current order)."""

    name = "reorder_for_cut"
    requires = ("splitc.profile",)
    provides = ("dag_order",)

    def run(self, gm, ctx) -> PassResult:
        reason = _skip_reason(gm, ctx)
        if reason:
            return PassResult(gm, modified=False, summary=f"no reorder: {reason}")
        links = resolve_links(ctx.tiers, ctx.options.bandwidths, ctx.options.rtts_ms)
        problem = build_dag_problem(gm, ctx.tiers)
        solution = problem.solve(np.array([link.bandwidth_bps for link in links]))
        tiers = problem.compute_tiers(solution)
        compute = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
        placed = [tiers[n] for n in compute]
        dag_ms = solution.cost * 1e3
        if all(a <= b for a, b in zip(placed, placed[1:])):
            return PassResult(gm, modified=False, summary=(
                f"no reorder: the DAG min-cut placement ({dag_ms:.2f} ms without rtt) is a prefix of the current order"))
        before = best_prefix_latency(gm, ctx.tiers, links)
        original = list(compute)
        reorder_nodes(gm, sorted(compute, key=lambda n: tiers[n]))  # sorted() is stable: keeps relative order
        after = best_prefix_latency(gm, ctx.tiers, links)
        moved = sum(a is not b for a, b in zip(original, (n for n in gm.graph.nodes if n.op in COMPUTE_OPS)))
        if not after < before - 1e-9 * max(before, 1e-9):
            reorder_nodes(gm, original)
            return PassResult(gm, modified=False, summary=(
                f"no reorder: the DAG min-cut placement ({dag_ms:.2f} ms without rtt) gives no better prefix plan "
                f"({_ms(after)} vs {_ms(before)} in the current order)"))
        return PassResult(gm, modified=True, summary=(
            f"{moved} compute nodes reordered by tier of the DAG min cut ({dag_ms:.2f} ms without rtt): best "
            f"prefix-cut latency {_ms(before)} -> {_ms(after)} (chain DP, before compression/exits)"))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if np.isfinite(seconds) else "no plan fits memory"
