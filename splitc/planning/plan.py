"""``plan``: choose the cut points of the tier chain that minimise predicted latency.

Builds the :class:`~splitc.planning.chain.ChainProblem` from the profile (node
costs on every tier through the target cost model), the candidates (bytes and
legality of every cut) and the links (flags or each tier's default uplink), solves
it exactly, and stores a :class:`~splitc.core.placement.PlanResult` in
``ctx.plan_result``. With ``--split`` the given cuts are evaluated instead (and
checked: known node, legal cut, chain order, memory).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch.fx

from splitc.core.pass_manager import Pass, PassResult
from splitc.core.placement import Assessment, LinkSpec, PlanChoice, Planner, PlanResult, ProblemAdjuster, Scorer
from splitc.planning.objectives import (SLO_QUANTILES, Scale, Weights, assess_plans, candidate_plans,
                                        constraint_violation, evaluate_plans, select_plan, weights_of)
from splitc.core.placement import ChainProblem, evaluate_cuts
from splitc.planning.chain import solve_chain
from splitc.planning.explain import WhatIf, describe_plan, explain_plan
from splitc.errors import SplitcError
from splitc.core.graph import model_output_names
from splitc.targets.cost_model import boundary_times, measured_mask, node_times
from splitc.units import format_bytes, parse_link_bandwidth
from splitc.core.passes.cut import PARTITION_OUTPUT
from splitc.core.passes.profile import PARAM_BYTES

__all__ = ["PlanPass", "PlanSettings", "ChainPlanner", "check_link_flags", "resolve_links", "build_problem",
           "training_problem", "bandwidth_variants", "figure_sources"]

log = logging.getLogger("splitc")


def check_link_flags(options) -> None:
    """Parse every ``--bandwidth`` value once, before any work (a unit is required; see
    :func:`splitc.units.parse_link_bandwidth`); the count is checked with the tiers in :func:`resolve_links`."""
    for value in options.bandwidths:
        parse_link_bandwidth(value)


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
        bw = parse_link_bandwidth(bandwidths[i if len(bandwidths) > 1 else 0]) if bandwidths else uplink.bandwidth_bps
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
    total = node.meta.get(PARAM_BYTES, 0)
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            total += arg.meta.get(PARAM_BYTES, 0)
    return total


def build_problem(gm: torch.fx.GraphModule, candidates, tiers, links) -> ChainProblem:
    """Arrays for the planner from the profiled graph, the candidates, targets and links."""
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = [by_name[name] for name in candidates.nodes]
    crossing = [c.crossing for c in candidates.cuts[:len(nodes)]] + [tuple(model_output_names(gm))]
    bounds = [boundary_times(nodes, crossing, t) for t in tiers]  # per run + layout conversions at the cuts
    return ChainProblem(
        tier_entry_s=np.vstack([b[0] for b in bounds]),
        tier_exit_s=np.vstack([b[1] for b in bounds]),
        node_time=np.vstack([node_times(nodes, t) for t in tiers]) if nodes else np.zeros((len(tiers), 0)),
        cut_bytes=candidates.cut_bytes,
        legal=candidates.legal_mask,
        param_bytes=np.array([_node_param_bytes(n) for n in nodes], dtype=np.float64),
        memory=np.array([t.usable_memory_bytes for t in tiers], dtype=np.float64),
        rtt=np.array([link.rtt_s for link in links]),
        bandwidth=np.array([link.bandwidth_bps for link in links]),
    )


def figure_sources(gm: torch.fx.GraphModule, candidates, tiers, best: PlanChoice) -> list[dict[str, Any]]:
    """Per tier of the chosen plan: how many of its nodes' times are measured (``splitc profile --model``).

    Everything else is predicted by the cost model: the other nodes, links, per-run costs and
    layout conversions at the cuts.
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = [by_name[name] for name in candidates.nodes]
    bounds = (0, *best.cuts, len(nodes))
    out = []
    for t, target in enumerate(tiers):
        part = nodes[bounds[t]:bounds[t + 1]]
        measured = int(measured_mask(part, target).sum()) if part else 0
        entry = {"tier": target.name, "nodes": len(part), "measured_nodes": measured,
                 "compute": "none" if not part else ("measured" if measured == len(part)
                                                     else "partly measured" if measured else "predicted")}
        if measured:
            entry["measured_by"] = target.model_profile.command or f"splitc profile --model {target.model_profile.model}"
        out.append(entry)
    return out


TRAINING_COMPUTE_FACTOR = 3.0  # forward + backward; backward ~ 2x the forward FLOPs (grads wrt inputs and weights)
TRAINING_PARAM_FACTOR = 4.0  # weights + gradients + two Adam moments per parameter


def training_problem(problem: ChainProblem) -> ChainProblem:
    """The problem of one split-learning training step instead of one inference (``--workload training``).

    Every node runs forward and backward (x :data:`TRAINING_COMPUTE_FACTOR`); each used link
    carries the activations forward and gradients of the same size back (twice the wire
    bytes, still one round trip per step); each tier holds weights, gradients and optimizer
    state (x :data:`TRAINING_PARAM_FACTOR`). Activations kept for the backward pass are not
    added to the memory check (an under-estimate, documented in docs/planner.md). No exits.
    """
    wire = problem.cut_bytes if problem.wire_bytes is None else problem.wire_bytes
    return dataclasses.replace(problem, node_time=problem.node_time * TRAINING_COMPUTE_FACTOR,
                               param_bytes=problem.param_bytes * TRAINING_PARAM_FACTOR,
                               wire_bytes=2.0 * np.asarray(wire, dtype=np.float64))


def choice(problem: ChainProblem, candidates, cuts: tuple[int, ...], metrics=None) -> PlanChoice:
    """A :class:`PlanChoice` with the full breakdown of ``cuts`` (and its other objectives from ``metrics``)."""
    cuts = tuple(int(c) for c in cuts)
    ev = evaluate_cuts(problem, cuts)
    row = metrics.index_of(cuts) if metrics is not None else None
    values = metrics.row(row) if row is not None else {}
    if "latency_distribution" in values:  # name where each share of requests ends (an exit's node, or the end)
        bounds = (0, *cuts, problem.n)
        for entry in values["latency_distribution"]:
            j = entry["position"]
            entry["after"] = candidates.cuts[j].after
            entry["tier"] = int(np.searchsorted(np.asarray(bounds[1:]), j - 1, side="right"))  # tier running node j-1
    used = [c < problem.n for c in cuts]  # a cut after the last node: nothing runs downstream, the link is unused
    return PlanChoice(
        cuts=tuple(cuts),
        after=tuple(candidates.cuts[c].after for c in cuts),
        crossing=tuple(candidates.cuts[c].crossing if u else () for c, u in zip(cuts, used)),
        crossing_bytes=tuple(candidates.cuts[c].bytes if u else 0 for c, u in zip(cuts, used)),
        compute_s=tuple(ev["compute"]),
        link_s=tuple(ev["links"]),
        memory_bytes=tuple(ev["memory"]),
        latency_s=float(ev["total"]),
        reach=tuple(ev["reach"]) if problem.reach is not None else (),
        metrics=values,
    )


class ChainPlanner(Planner):
    """The planner's services for capabilities (``ctx.planner``; see :class:`splitc.core.placement.Planner`)."""

    def __init__(self, adjusters: Sequence[ProblemAdjuster] = (), what_ifs: Sequence[WhatIf] = ()) -> None:
        self.adjusters = list(adjusters)
        self.what_ifs = list(what_ifs)

    def base_problem(self, gm, ctx) -> ChainProblem:
        links = resolve_links(ctx.tiers, ctx.options.bandwidths, ctx.options.rtts_ms)
        return build_problem(gm, ctx.candidates, ctx.tiers, links)

    def solve(self, problem: ChainProblem):
        return solve_chain(problem)

    def choice(self, problem: ChainProblem, candidates, cuts: tuple[int, ...]) -> PlanChoice:
        return choice(problem, candidates, cuts)

    def forced_cuts(self, ctx, problem: ChainProblem) -> tuple[int, ...]:
        return forced_cuts(ctx.options.split, ctx.candidates, problem, ctx.tiers)

    def replan(self, gm, ctx) -> None:
        PlanPass(self.adjusters, self.what_ifs).run(gm, ctx)

    def scorer(self, ctx, reference: ChainProblem) -> Scorer:
        """See :meth:`splitc.core.placement.Planner.scorer`.

        Latency alone and unconstrained (the default): the exact DP's optimum, keyed by its
        expected latency. Otherwise every plan is evaluated as the plan pass does (exhaustive up to
        :data:`~splitc.planning.objectives.MAX_PLANS`) and keyed by :func:`assess_plans` on the scale
        of ``reference``'s feasible front. With ``--split`` (or one tier) the forced plan is scored.
        """
        settings = ctx.settings_for(PlanSettings)
        dcor = ctx.privacy.dcor if getattr(ctx, "privacy", None) is not None else None
        forced = None
        if ctx.options.split:
            forced = forced_cuts(ctx.options.split, ctx.candidates, reference, ctx.tiers)
        elif len(ctx.tiers) == 1:
            forced = ()
        if settings.default_objective and forced is None:
            def exact(problem: ChainProblem) -> Assessment:
                try:
                    solution = solve_chain(problem)
                except ValueError:  # nothing fits memory
                    return Assessment((), (math.inf,), False, {})
                return Assessment(tuple(int(c) for c in solution.cuts), (0.0, solution.latency, solution.latency, 0.0),
                                  True, {"latency_s": solution.latency})
            return exact
        constraints = {"slo_s": settings.slo_s, "slo_quantile": settings.slo_quantile, "max_dcor": settings.max_dcor}

        def metrics_of(problem: ChainProblem):
            if forced is not None:
                plans = np.array([forced], dtype=np.int64)
            else:
                try:
                    best_at = solve_chain(problem).best_at
                except ValueError:
                    best_at = None
                plans, _ = candidate_plans(problem, best_at)
            return evaluate_plans(problem, ctx.tiers, plans, settings.rps, dcor=dcor)

        first = metrics_of(reference)
        scale = Scale.of(first, constraint_violation(first, **constraints) == 0)

        def assess(problem: ChainProblem) -> Assessment:
            metrics = metrics_of(problem)
            i, key = assess_plans(metrics, settings.weights, scale, **constraints)
            row = metrics.row(i)
            return Assessment(tuple(int(c) for c in metrics.cuts[i]), key, key[0] == 0.0,
                              {k: row[k] for k in ("latency_s", "p50_s", "p99_s", "usd_per_request", "dcor")})
        return assess


class PlanPass(Pass):
    """Pick the cuts that best meet the objective (or check the forced ones); never mutates the graph.

    Args:
        adjusters: capabilities' contributions to the problem, applied in order before solving
            (the driver hands them in: compression's wire bytes and coder time, then the exits'
            reach, chosen jointly with the cuts through ``ctx.planner``).
        what_ifs: capabilities' "had the user given this flag" problems (compression's knobs not
            given), whose best plans the explanation lists (:mod:`splitc.planning.explain`).
    """

    name = "plan"
    requires = ("splitc.profile", "candidates")
    provides = ("plan",)

    def __init__(self, adjusters: Sequence[ProblemAdjuster] = (), what_ifs: Sequence[WhatIf] = ()) -> None:
        self.adjusters = list(adjusters)
        self.what_ifs = list(what_ifs)

    def run(self, gm, ctx) -> PassResult:
        candidates = ctx.candidates
        if not candidates.nodes:
            raise SplitcError("the model has no operations to place")
        settings = ctx.settings_for(PlanSettings)
        planner = ChainPlanner(self.adjusters, self.what_ifs)
        ctx.planner = planner
        links = resolve_links(ctx.tiers, ctx.options.bandwidths, ctx.options.rtts_ms)
        problem = build_problem(gm, candidates, ctx.tiers, links)
        for adjust in self.adjusters:
            problem = adjust(problem, gm, ctx)
        if settings.workload == "training":
            problem = training_problem(problem)
        dcor = ctx.privacy.dcor if getattr(ctx, "privacy", None) is not None else None
        names = [t.name for t in ctx.tiers]
        cut_solution = None
        if len(ctx.tiers) == 1 or ctx.options.split:
            attached = {n.name for n in gm.graph.nodes if n.meta.get(PARTITION_OUTPUT)}  # e.g. exit heads
            cuts = forced_cuts(ctx.options.split, candidates, problem, ctx.tiers, attached) if ctx.options.split else ()
            metrics = evaluate_plans(problem, ctx.tiers, np.array([cuts], dtype=np.int64), settings.rps, dcor=dcor)
            if not metrics.fits[0]:
                raise _memory_error(problem, ctx.tiers)
            best = choice(problem, candidates, cuts, metrics)
            _warn_forced(best, settings)
            ranking, alternatives, pareto, forced = [], [], [], bool(ctx.options.split)
            evaluated, exhaustive = 1, True
        else:
            try:
                solution = solve_chain(problem)
            except ValueError:
                raise _memory_error(problem, ctx.tiers) from None
            cut_solution = solution
            metrics, selection = select(problem, ctx.tiers, settings, dcor, solution, candidates)
            best = choice(problem, candidates, tuple(metrics.cuts[selection.index]), metrics)
            ranking = _ranking(solution, candidates)
            if settings.default_objective:
                alternatives = _alternatives(solution, problem, candidates, ctx.options.alternatives, metrics)
            else:
                ranked = [i for i in selection.ranked() if i != selection.index][:ctx.options.alternatives]
                alternatives = [choice(problem, candidates, tuple(metrics.cuts[i]), metrics) for i in ranked]
            front = np.flatnonzero(selection.pareto)
            front = front[np.argsort(metrics.latency_s[front], kind="stable")]
            pareto = [choice(problem, candidates, tuple(metrics.cuts[i]), metrics) for i in front]
            forced, evaluated, exhaustive = False, len(metrics), metrics.exhaustive
        variants = []
        if settings.bandwidth_range is not None and len(ctx.tiers) > 1 and not ctx.options.split:
            variants = bandwidth_variants(problem, ctx.tiers, settings, dcor, candidates)
        objective = {**settings.to_dict(), "plans_evaluated": evaluated, "exhaustive": exhaustive}
        indifference = cost_indifference(gm, candidates, ctx.tiers, best, problem)
        if indifference:
            objective["indifference"] = indifference
        what_ifs = [w for what_if in self.what_ifs for w in what_if(problem, gm, ctx)]
        explanation = explain_plan(problem, candidates, names, best.cuts, forced=forced,
                                   bandwidth_bps=links[0].bandwidth_bps if links else None,
                                   latency_objective=settings.default_objective, what_ifs=what_ifs,
                                   solution=cut_solution)
        ctx.plan_result = PlanResult(names, links, best, forced, alternatives, ranking, objective, pareto, variants,
                                     figures=figure_sources(gm, candidates, ctx.tiers, best), explanation=explanation)
        summary = (f"{'forced' if forced else 'best'} cut(s): {best.describe()}; predicted "
                   f"{best.latency_s * 1e3:.2f} ms{_cost_words(best)}{_gap_words(explanation)} "
                   f"({len(candidates.cuts)} candidates, objective {settings.name})")
        return PassResult(gm, modified=False, summary=summary)


@dataclass(frozen=True)
class PlanSettings:
    """The planner's objective and constraints, validated from the compile options."""

    name: str
    weights: Weights
    rps: float
    slo_s: float | None
    max_dcor: float | None
    workload: str
    bandwidth_range: tuple[float, float] | None
    slo_quantile: str = "p50"

    @classmethod
    def from_options(cls, options) -> "PlanSettings":
        weights = weights_of(options)
        objective = "weighted" if options.weights else options.objective
        rps = float(options.rps)
        if not math.isfinite(rps) or rps <= 0:
            raise SplitcError(f"--rps must be a positive request rate, got {options.rps:g}",
                              "give the expected requests per second, e.g. --rps 50")
        slo = options.slo_ms
        if slo is not None and (not math.isfinite(slo) or slo <= 0):
            raise SplitcError(f"--slo-ms must be a positive number of milliseconds, got {slo:g}")
        if options.max_dcor is not None and not 0 <= options.max_dcor <= 1:
            raise SplitcError(f"--max-dcor must be in [0, 1] (a distance correlation), got {options.max_dcor:g}")
        if options.workload not in ("inference", "training"):
            raise SplitcError(f"unknown workload '{options.workload}'", "valid workloads: inference, training")
        if options.workload == "training" and tuple(options.exits) not in ((), ("none",)):
            raise SplitcError("--workload training has no early exits (every sample runs the whole model)",
                              "drop --exits")
        quantile = str(getattr(options, "slo_quantile", "p50") or "p50").lower()
        if quantile not in SLO_QUANTILES:
            raise SplitcError(f"--slo-quantile must be one of {', '.join(SLO_QUANTILES)}, got '{quantile}'")
        if quantile != "p50" and slo is None:
            log.warning("[plan] --slo-quantile %s has no effect without --slo-ms", quantile)
        # exits are planned jointly with the cuts for every objective and constraint: the exits' threshold search
        # scores each setting through ctx.planner.scorer (exits/heads.py), and an exit may sit anywhere in a tier
        return cls(objective, weights, rps, None if slo is None else slo / 1e3, options.max_dcor, options.workload,
                   _parse_range(options.bandwidth_range) if options.bandwidth_range else None, quantile)

    @property
    def needs(self) -> frozenset[str]:
        """Analyses the planner needs from other passes: ``leakage`` (the privacy profile) when privacy
        is weighted (``--objective privacy``, a ``privacy=w`` weight > 0) or constrained (``--max-dcor``)."""
        return frozenset({"leakage"}) if self.max_dcor is not None or self.weights.privacy > 0 else frozenset()

    @property
    def default_objective(self) -> bool:
        """Latency only and unconstrained: the DP's optimum is the answer."""
        return self.weights.pure_latency and self.slo_s is None and self.max_dcor is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights.to_dict(), "rps": self.rps, "slo_s": self.slo_s,
                "slo_applies_to": self.slo_quantile, "max_dcor": self.max_dcor, "workload": self.workload,
                **({"bandwidth_range_bps": list(self.bandwidth_range)} if self.bandwidth_range else {})}


def _parse_range(text: str) -> tuple[float, float]:
    lo_text, sep, hi_text = str(text).partition(":")
    if not sep:
        raise SplitcError(f"--bandwidth-range '{text}' is not LOW:HIGH", "e.g. --bandwidth-range 1mbps:100mbps")
    lo, hi = (parse_link_bandwidth(t, "--bandwidth-range") for t in (lo_text, hi_text))
    if not 0 < lo < hi:
        raise SplitcError(f"--bandwidth-range needs 0 < LOW < HIGH, got {text}")
    return float(lo), float(hi)


def select(problem: ChainProblem, tiers, settings: PlanSettings, dcor, solution, candidates):
    """Evaluate the plans and choose one (see :mod:`splitc.planning.objectives`)."""
    plans, exhaustive = candidate_plans(problem, solution.best_at)
    if not (plans == np.asarray(solution.cuts)).all(axis=1).any():  # a restricted set keeps the DP optimum
        plans = np.vstack([np.asarray(solution.cuts, dtype=np.int64).reshape(1, -1), plans])
    metrics = evaluate_plans(problem, tiers, plans, settings.rps, dcor=dcor, exhaustive=exhaustive)

    def describe(i: int) -> str:
        return ", ".join(f"after {candidates.cuts[int(c)].after or 'input'}" for c in metrics.cuts[i])

    try:
        selection = select_plan(metrics, settings.weights, slo_s=settings.slo_s, max_dcor=settings.max_dcor,
                                describe=describe, slo_quantile=settings.slo_quantile)
    except ValueError:
        raise _memory_error(problem, tiers) from None
    if settings.default_objective:  # exact DP optimum (ties may differ from the enumeration's order)
        selection.index = metrics.index_of(solution.cuts)
    return metrics, selection


def bandwidth_variants(problem: ChainProblem, tiers, settings: PlanSettings, dcor, candidates,
                       grid: int = 33, rel_tol: float = 1e-3) -> list[dict[str, Any]]:
    """Plans optimal across ``--bandwidth-range`` of the first link, and where the optimum switches.

    Only the first link varies (the device uplink, the one that changes in the field).
    The choice is re-made (same objective and constraints) on a log grid of bandwidths;
    wherever two neighbouring grid points choose different plans, the switching bandwidth
    is bisected (in log space) to ``rel_tol``. A plan may win on several disjoint ranges;
    each range is listed. Grid points where no plan meets the constraints are reported
    as such instead of failing the whole compile.
    """
    lo, hi = settings.bandwidth_range

    def at(bw: float) -> ChainProblem:
        bandwidth = problem.bandwidth.copy()
        bandwidth[0] = bw
        return dataclasses.replace(problem, bandwidth=bandwidth)

    def choose(bw: float) -> tuple[int, ...] | None:
        varied = at(bw)
        try:
            solution = solve_chain(varied)
            metrics, selection = select(varied, tiers, settings, dcor, solution, candidates)
        except (SplitcError, ValueError):
            return None
        return tuple(int(c) for c in metrics.cuts[selection.index])

    points = np.geomspace(lo, hi, grid)
    chosen = [choose(float(b)) for b in points]

    edges = []  # (bandwidth where the plan changes, plan below, plan above)
    for (b0, p0), (b1, p1) in zip(zip(points, chosen), zip(points[1:], chosen[1:])):
        if p0 == p1:
            continue
        left, right = float(b0), float(b1)
        while right / left > 1 + rel_tol:
            mid = math.sqrt(left * right)
            if choose(mid) == p0:
                left = mid
            else:
                right = mid
        edges.append((math.sqrt(left * right), p0, p1))
    ranges, start, current = [], lo, chosen[0]
    for bw, _, above in edges:
        ranges.append((start, bw, current))
        start, current = bw, above
    ranges.append((start, hi, current))
    out = []
    for low, high, plan in ranges:
        entry: dict[str, Any] = {"range_bps": [low, high]}
        if plan is None:
            entry["plan"] = None
            entry["reason"] = "no plan meets the constraints at these bandwidths"
        else:
            mid = math.sqrt(low * high)
            metrics = evaluate_plans(at(mid), tiers, np.array([plan]), settings.rps, dcor=dcor)
            entry["plan"] = choice(at(mid), candidates, plan, metrics).to_dict()
            entry["plan"]["evaluated_at_bps"] = mid
            # latency of this plan over the whole range, for the report's plot (not written to the manifest)
            curve = np.geomspace(lo, hi, 48)
            entry["curve"] = {"bandwidth_bps": curve.tolist(),
                              "latency_s": [float(evaluate_cuts(at(float(b)), plan)["total"]) for b in curve]}
        out.append(entry)
    return out


#: Built-in counterparts for the VM-vs-FaaS comparison when the chain has only one of the two.
COUNTERPART = {"vm": "aws-lambda", "faas": "c6i-xlarge"}


def cost_indifference(gm, candidates, tiers, best: PlanChoice, problem: ChainProblem) -> list[dict]:
    """For each cloud tier of the chosen plan, the request rate where VM and FaaS cost the same for its partition.

    The partition is priced on a VM target and on a FaaS target: the other priced tier of the
    chain when it has both kinds (a hybrid chain), else the built-in counterpart
    (:data:`COUNTERPART`). Each target's busy time comes from its own cost model. Below the
    rate FaaS is cheaper, above it the VM (see :func:`splitc.planning.pricing.indifference_rps`).
    """
    from splitc.planning.pricing import indifference_rps
    from splitc.targets.target import TargetRegistry

    by_model = {t.price["model"]: t for t in tiers if t.price["model"] in ("vm", "faas")}
    by_name = {n.name: n for n in gm.graph.nodes}
    bounds = (0, *best.cuts, problem.n)
    out = []
    for t, target in enumerate(tiers):
        model = target.price["model"]
        if model not in COUNTERPART or bounds[t + 1] <= bounds[t]:
            continue
        other_model = "faas" if model == "vm" else "vm"
        if other_model not in by_model:  # the built-in counterpart, loaded once (parses the catalog)
            by_model[other_model] = TargetRegistry.with_builtins().resolve_chain([COUNTERPART[model]])[0]
        other = by_model[other_model]
        nodes = [by_name[name] for name in candidates.nodes[bounds[t]:bounds[t + 1]]]
        busy = {model: float(node_times(nodes, target).sum()), other_model: float(node_times(nodes, other).sum())}
        vm, faas = (target, other) if model == "vm" else (other, target)
        if busy["vm"] <= 0 or busy["faas"] <= 0:
            continue
        memory = problem.memory_of(bounds[t], bounds[t + 1])
        try:
            rate = indifference_rps(vm, busy["vm"], faas, busy["faas"], memory)
        except SplitcError as exc:  # e.g. the partition does not fit the function's memory
            out.append({"tier": target.name, "vm": vm.name, "faas": faas.name, "rps": None, "note": exc.one_line()})
            continue
        out.append({"tier": target.name, "vm": vm.name, "faas": faas.name, "vm_busy_s": busy["vm"],
                    "faas_busy_s": busy["faas"], "rps": rate if math.isfinite(rate) else None})
    return out


def _warn_forced(best: PlanChoice, settings: PlanSettings) -> None:
    m = best.metrics
    key = f"{settings.slo_quantile}_s"
    if settings.slo_s is not None and m.get(key, 0.0) > settings.slo_s:
        log.warning("[plan] the forced split's predicted %s %.2f ms exceeds --slo-ms %g", settings.slo_quantile,
                    m[key] * 1e3, settings.slo_s * 1e3)
    if settings.max_dcor is not None and m.get("dcor") is not None and m["dcor"] > settings.max_dcor:
        log.warning("[plan] the forced split leaks distance correlation %.3f > --max-dcor %g", m["dcor"],
                    settings.max_dcor)


def _gap_words(explanation: dict[str, Any]) -> str:
    """For a forced split: the optimum under the same problem and how far the forced plan is from it."""
    optimum, chosen = explanation.get("optimum"), explanation["chosen"]
    if not optimum or optimum.get("latency_s") is None or chosen.get("latency_s") is None:
        return ""
    gap = chosen["latency_s"] - optimum["latency_s"]
    if gap <= 1e-12:
        return "; the forced split is the optimum"
    return (f"; the optimum ({describe_plan(optimum)}) is {optimum['latency_s'] * 1e3:.2f} ms: the forced split is "
            f"{gap * 1e3:.2f} ms ({gap / optimum['latency_s']:.0%}) slower")


def _cost_words(best: PlanChoice) -> str:
    usd = best.metrics.get("usd_per_million")
    return "" if usd is None else f", ${usd:.4g} per million requests"


def forced_cuts(split: tuple[str, ...], candidates, problem: ChainProblem, tiers,
                attached: set[str] | frozenset[str] = frozenset()) -> tuple[int, ...]:
    """Cut indices of ``--split NODE,...`` after checking them.

    Args:
        attached: nodes that stay on the tier of the node before them (extra partition outputs such as
            an exit head right after a ``--split`` node: the exit is decided before the transfer); a cut
            after a split node moves past them.
    """
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
            while cuts[-1] < len(candidates.nodes) and candidates.nodes[cuts[-1]] in attached:
                cuts[-1] += 1
        except KeyError:
            close = difflib.get_close_matches(name, candidates.names(), n=5)  # node names and module paths
            hint = f"did you mean: {', '.join(close)}?" if close else "run 'splitc plan' to list the nodes"
            raise SplitcError(f"--split node '{name}' is not a node or module of the traced graph", hint) from None
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


def _ranking(solution, candidates) -> list[list[dict]]:
    tables = []
    for b, row in enumerate(solution.best_at):
        entries = []
        last = len(candidates.nodes)
        for cut in candidates.cuts:
            best = float(row[cut.index])
            used = cut.index < last  # a cut after the last node sends nothing: its link is unused
            entries.append({
                "index": cut.index, "after": cut.after, "block": cut.block,
                "tensors": list(cut.crossing) if used else [], "bytes": cut.bytes if used else 0,
                "legal": cut.legal, "reason": cut.reason,
                "best_latency_s": best if np.isfinite(best) else None,
                "plan": list(solution.plans_at[b][cut.index]) if solution.plans_at[b][cut.index] else None,
            })
        entries.sort(key=lambda e: (e["best_latency_s"] is None, e["best_latency_s"] or 0.0, e["index"]))
        tables.append(entries)
    return tables


def _alternatives(solution, problem, candidates, count: int, metrics=None) -> list[PlanChoice]:
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
    return [choice(problem, candidates, plan, metrics) for _, plan in pool[:count]]


def _memory_error(problem: ChainProblem, tiers) -> SplitcError:
    sizes = ", ".join(f"{t.name} {format_bytes(t.usable_memory_bytes)}" for t in tiers)
    whole = problem.memory_of(0, problem.n)
    return SplitcError(f"no placement fits the tiers' memory (usable: {sizes}; the whole model needs "
                       f"{format_bytes(whole)})", "add a larger tier to the chain or compress the model")
