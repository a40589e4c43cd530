"""``plan``: choose the cut points of the tier chain that minimise predicted latency.

Builds the :class:`~splitc.compiler.planner.ChainProblem` from the profile (node
costs on every tier through the target cost model), the candidates (bytes and
legality of every cut) and the links (flags or each tier's default uplink), solves
it exactly, and stores a :class:`~splitc.compiler.plan.PlanResult` in
``ctx.plan_result``. With ``--split`` the given cuts are evaluated instead (and
checked: known node, legal cut, chain order, memory).
"""

from __future__ import annotations

import difflib

import numpy as np
import torch.fx

from splitc.compiler.compression import adjust_problem
from splitc.compiler.pass_manager import Pass, PassResult
from splitc.compiler.plan import LinkSpec, PlanChoice, PlanResult
from splitc.compiler.planner import ChainProblem, evaluate_cuts, solve_chain
from splitc.errors import SplitcError
from splitc.passes.candidates import Candidates
from splitc.targets.cost_model import node_times
from splitc.units import format_bytes, parse_bandwidth

__all__ = ["PlanPass", "resolve_links", "build_problem"]


def resolve_links(tiers, bandwidths: tuple[str, ...], rtts_ms: tuple[float, ...]) -> list[LinkSpec]:
    """One link per pair of neighbouring tiers: flags first, else the sender's default uplink."""
    count = len(tiers) - 1
    for flag, given in (("--bandwidth", bandwidths), ("--rtt-ms", rtts_ms)):
        if len(given) not in (0, 1, count):
            raise SplitcError(f"{flag} was given {len(given)} values for {count} link(s)",
                              f"give one value for every link or exactly {count}, in chain order")
    for rtt in rtts_ms:
        if rtt < 0:
            raise SplitcError(f"--rtt-ms must not be negative (got {rtt})")
    links = []
    for i in range(count):
        sender, receiver = tiers[i], tiers[i + 1]
        uplink = sender.uplink
        if (not bandwidths or not rtts_ms) and uplink is None:
            raise SplitcError(f"target '{sender.name}' has no default uplink to '{receiver.name}'",
                              "pass --bandwidth and --rtt-ms for this link")
        bw = parse_bandwidth(bandwidths[i if len(bandwidths) > 1 else 0]) if bandwidths else uplink.bandwidth_bps
        rtt = rtts_ms[i if len(rtts_ms) > 1 else 0] / 1e3 if rtts_ms else uplink.rtt_s
        links.append(LinkSpec(i, sender.name, receiver.name, float(bw), float(rtt),
                              _link_source(sender.name, bool(bandwidths), bool(rtts_ms))))
    return links


def _link_source(sender: str, bandwidth_flag: bool, rtt_flag: bool) -> str:
    """Where a link's figures come from, as the plan table says it."""
    if bandwidth_flag and rtt_flag:
        return "flags"
    if bandwidth_flag or rtt_flag:
        return f"{'bandwidth' if bandwidth_flag else 'rtt'} from flag, rest from {sender} default uplink"
    return f"{sender} default uplink"


def _node_param_bytes(node: torch.fx.Node) -> int:
    """Parameters a node reads: its module's, plus any get_attr weights passed to it."""
    total = node.meta.get("splitc.param_bytes", 0)
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            total += arg.meta.get("splitc.param_bytes", 0)
    return total


def build_problem(gm: torch.fx.GraphModule, candidates: Candidates, tiers, links) -> ChainProblem:
    """Arrays for the planner from the profiled graph, the candidates, targets and links."""
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = [by_name[name] for name in candidates.nodes]
    return ChainProblem(
        node_time=np.vstack([node_times(nodes, t) for t in tiers]) if nodes else np.zeros((len(tiers), 0)),
        cut_bytes=candidates.cut_bytes,
        legal=candidates.legal_mask,
        param_bytes=np.array([_node_param_bytes(n) for n in nodes], dtype=np.float64),
        memory=np.array([t.usable_memory_bytes for t in tiers], dtype=np.float64),
        rtt=np.array([link.rtt_s for link in links]),
        bandwidth=np.array([link.bandwidth_bps for link in links]),
    )


def choice(problem: ChainProblem, candidates: Candidates, cuts: tuple[int, ...]) -> PlanChoice:
    """A :class:`PlanChoice` with the full breakdown of ``cuts``."""
    ev = evaluate_cuts(problem, cuts)
    return PlanChoice(
        cuts=tuple(cuts),
        after=tuple(candidates.cuts[c].after for c in cuts),
        crossing=tuple(candidates.cuts[c].crossing for c in cuts),
        crossing_bytes=tuple(candidates.cuts[c].bytes for c in cuts),
        compute_s=tuple(ev["compute"]),
        link_s=tuple(ev["links"]),
        memory_bytes=tuple(ev["memory"]),
        latency_s=float(ev["total"]),
        reach=tuple(ev["reach"]) if problem.reach is not None else (),
    )


class PlanPass(Pass):
    """Pick the latency-optimal cuts (or check the forced ones); never mutates the graph."""

    name = "plan"
    requires = ("splitc.profile", "candidates")
    provides = ("plan",)

    def run(self, gm, ctx) -> PassResult:
        candidates = ctx.candidates
        if not candidates.nodes:
            raise SplitcError("the model has no operations to place")
        links = resolve_links(ctx.tiers, ctx.options.bandwidths, ctx.options.rtts_ms)
        problem = build_problem(gm, candidates, ctx.tiers, links)
        problem = adjust_problem(problem, gm, candidates, ctx)  # wire bytes / coder time of --transfer-dtype, --bottleneck
        if getattr(ctx, "exits", None) is not None:  # early exits: thresholds chosen jointly with the cuts;
            from splitc.compiler.exits import plan_exits  # the problem comes back weighted by reach
            problem = plan_exits(problem, ctx, forced_cuts)
        names = [t.name for t in ctx.tiers]
        if len(ctx.tiers) == 1:
            best, ranking, alternatives, forced = choice(problem, candidates, ()), [], [], False
            if best.memory_bytes[0] > problem.memory[0]:
                raise _memory_error(problem, ctx.tiers)
        elif ctx.options.split:
            cuts = forced_cuts(ctx.options.split, candidates, problem, ctx.tiers)
            best, ranking, alternatives, forced = choice(problem, candidates, cuts), [], [], True
        else:
            try:
                solution = solve_chain(problem)
            except ValueError:
                raise _memory_error(problem, ctx.tiers) from None
            best = choice(problem, candidates, solution.cuts)
            ranking = _ranking(solution, candidates)
            alternatives = _alternatives(solution, problem, candidates, ctx.options.alternatives)
            forced = False
        ctx.plan_result = PlanResult(names, links, best, forced, alternatives, ranking)
        where = ", ".join(f"after {a or 'input'}" for a in best.after) or "no cut"
        summary = (f"{'forced' if forced else 'best'} cut(s): {where}; predicted "
                   f"{best.latency_s * 1e3:.2f} ms ({len(candidates.cuts)} candidates)")
        return PassResult(gm, modified=False, summary=summary)


def forced_cuts(split: tuple[str, ...], candidates: Candidates, problem: ChainProblem, tiers) -> tuple[int, ...]:
    """Cut indices of ``--split NODE,...`` after checking them."""
    if len(split) != len(tiers) - 1:
        raise SplitcError(f"--split names {len(split)} node(s) but the chain of {len(tiers)} tiers has "
                          f"{len(tiers) - 1} boundary(ies)", "give one node per boundary, in order")
    cuts = []
    for name in split:
        if name in ("input", "<input>"):
            cuts.append(0)
            continue
        try:
            cuts.append(candidates.index_of(name))
        except KeyError:
            close = difflib.get_close_matches(name, candidates.nodes, n=5)
            hint = f"did you mean: {', '.join(close)}?" if close else "run 'splitc plan' to list the nodes"
            raise SplitcError(f"--split node '{name}' is not a node of the traced graph", hint) from None
        cut = candidates.cuts[cuts[-1]]
        if not cut.legal and cut.index != len(candidates.nodes):
            raise SplitcError(f"cannot cut after '{name}': {cut.reason}", "pick a neighbouring node")
    if list(cuts) != sorted(cuts):
        raise SplitcError(f"--split nodes {', '.join(split)} are not in graph order",
                          "list them from the first tier to the last")
    ev = evaluate_cuts(problem, tuple(cuts))
    for tier, mem in zip(tiers, ev["memory"]):
        if mem > tier.usable_memory_bytes:
            raise SplitcError(f"the forced split needs {format_bytes(mem)} on '{tier.name}', which has "
                              f"{format_bytes(tier.usable_memory_bytes)} usable", "move the cut earlier or pick a larger tier")
    return tuple(cuts)


def _ranking(solution, candidates: Candidates) -> list[list[dict]]:
    tables = []
    for b, row in enumerate(solution.best_at):
        entries = []
        for cut in candidates.cuts:
            best = float(row[cut.index])
            entries.append({
                "index": cut.index, "after": cut.after, "tensors": list(cut.crossing), "bytes": cut.bytes,
                "legal": cut.legal, "reason": cut.reason,
                "best_latency_s": best if np.isfinite(best) else None,
                "plan": list(solution.plans_at[b][cut.index]) if solution.plans_at[b][cut.index] else None,
            })
        entries.sort(key=lambda e: (e["best_latency_s"] is None, e["best_latency_s"] or 0.0, e["index"]))
        tables.append(entries)
    return tables


def _alternatives(solution, problem, candidates, count: int) -> list[PlanChoice]:
    seen = {solution.cuts}
    pool = []
    for b, row in enumerate(solution.best_at):
        for c in np.argsort(row, kind="stable"):
            plan = solution.plans_at[b][int(c)]
            if plan is None or plan in seen:
                continue
            seen.add(plan)
            pool.append((float(row[c]), plan))
            if len(pool) >= count * len(solution.best_at):
                break
    pool.sort()
    return [choice(problem, candidates, plan) for _, plan in pool[:count]]


def _memory_error(problem: ChainProblem, tiers) -> SplitcError:
    sizes = ", ".join(f"{t.name} {format_bytes(t.usable_memory_bytes)}" for t in tiers)
    whole = problem.memory_of(0, problem.n)
    return SplitcError(f"no placement fits the tiers' memory (usable: {sizes}; the whole model needs "
                       f"{format_bytes(whole)})", "add a larger tier to the chain or compress the model")
