"""The plan is data: the planning problem, a placement and its predicted cost, and what
capabilities may ask of the planner.

* :class:`ChainProblem` -- arrays describing one problem (node times per tier, bytes per cut,
  links, memory; optional wire bytes, coder time and reach written by capabilities), and
  :func:`evaluate_cuts`, the cost of a given plan under it. Capabilities adjust a problem
  (compression shrinks wire bytes, exits weight nodes by reach) without knowing the solver.
* :class:`LinkSpec`, :class:`PlanChoice`, :class:`PlanResult` -- what the plan pass returns;
  ``plan`` never mutates the graph, and the plan is written into the manifest in full, so a
  bundle explains itself.
* :class:`Planner` -- the planner's services a capability may use (solve a problem, re-plan
  after it changed the graph); the driver hands the planning package's implementation in as
  ``ctx.planner``, so no capability imports the planning package.

Problem (survey notation: tiers 0..k-1 in a chain, link t joins tier t and t+1).
Compute nodes ``0..N-1`` in topological order; a plan is ``0 = c_0 <= c_1 <= ... <=
c_{k-1} <= c_k = N`` and tier ``t`` runs nodes ``[c_t, c_{t+1})``. Its latency is::

    sum_t  T_t[c_t, c_{t+1})                       (compute; prefix sums of node times)
  + sum_{t<k-1} [c_{t+1} < N] * (rtt_t + 8 * bytes(c_{t+1}) / bw_t)    (links)

A link carries what crosses its cut; it is used only while work remains downstream
(a tier that runs nothing relays). Cut 0 ships the raw input.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["ChainProblem", "ChainSolution", "evaluate_cuts", "LinkSpec", "PlanChoice", "PlanResult", "Planner",
           "ProblemAdjuster", "Assessment", "Scorer"]


@dataclass(frozen=True)
class ChainProblem:
    """Arrays describing one planning problem (all in SI units).

    Attributes:
        node_time: ``[k, N]`` predicted seconds of each node on each tier.
        cut_bytes: ``[N+1]`` bytes crossing each cut.
        legal: ``[N+1]`` whether each cut can be shipped.
        param_bytes: ``[N]`` parameter bytes each node reads.
        memory: ``[k]`` usable bytes per tier (``inf`` = unlimited).
        rtt: ``[k-1]`` round-trip seconds of each link.
        bandwidth: ``[k-1]`` bits per second of each link.
        wire_bytes: ``[N+1]`` bytes on the wire at each cut once compressed (transfer
            dtype, bottleneck); None = ``cut_bytes`` (no compression). ``cut_bytes`` stays
            the in-memory size used for the memory check.
        link_extra_s: ``[k-1, N+1]`` seconds added to link t when its cut is c (encoder on
            the sender + decoder on the receiver); None = 0. Both default to today's model.
        reach: ``[N+1]`` share of requests that reach each position (early exits:
            ``reach[i]`` weights node i and the link at cut i); None = 1 everywhere.
            With it the objective is the *expected* latency; the DP stays exact.
        tier_entry_s: ``[k, N+1]`` seconds tier t pays when its partition starts at cut c and runs
            at least one node (one session run, layout conversions of what it receives); None = 0.
        tier_exit_s: ``[k, N+1]`` seconds tier t pays when its partition ends at cut c and runs at
            least one node (layout conversions of what it sends); None = 0. Entry is weighted by
            the reach at the partition's first node, exit by the reach at its last.
    """

    node_time: np.ndarray
    cut_bytes: np.ndarray
    legal: np.ndarray
    param_bytes: np.ndarray
    memory: np.ndarray
    rtt: np.ndarray
    bandwidth: np.ndarray
    wire_bytes: np.ndarray | None = None
    link_extra_s: np.ndarray | None = None
    reach: np.ndarray | None = None
    tier_entry_s: np.ndarray | None = None
    tier_exit_s: np.ndarray | None = None

    def weighted_entry(self, tier: int) -> np.ndarray:
        """``[N+1]`` entry seconds of ``tier`` by start cut, weighted by the reach there (0 at cut N)."""
        if self.tier_entry_s is None:
            return np.zeros(self.n + 1)
        entry = np.asarray(self.tier_entry_s[tier], dtype=np.float64)
        return entry if self.reach is None else entry * self.reach

    def weighted_exit(self, tier: int) -> np.ndarray:
        """``[N+1]`` exit seconds of ``tier`` by end cut, weighted by the reach at the range's last node."""
        if self.tier_exit_s is None:
            return np.zeros(self.n + 1)
        exit_ = np.asarray(self.tier_exit_s[tier], dtype=np.float64)
        if self.reach is None:
            return exit_
        last = np.concatenate([[1.0], np.asarray(self.reach[:self.n], dtype=np.float64)])  # reach of node c-1
        return exit_ * last

    def boundary_cost(self, tier: int, start: int, end: int, weighted: bool = True) -> float:
        """Entry + exit seconds of ``tier`` running nodes ``[start, end)`` (0 when it runs nothing)."""
        if end <= start:
            return 0.0
        if weighted:
            return float(self.weighted_entry(tier)[start] + self.weighted_exit(tier)[end])
        entry = 0.0 if self.tier_entry_s is None else float(self.tier_entry_s[tier][start])
        return entry + (0.0 if self.tier_exit_s is None else float(self.tier_exit_s[tier][end]))

    def weighted_node_time(self, tier: int) -> np.ndarray:
        """``[N]`` node times of ``tier`` weighted by the share of requests reaching each node."""
        return self.node_time[tier] if self.reach is None else self.node_time[tier] * self.reach[:self.n]

    def link_costs(self, link: int) -> np.ndarray:
        """``[N+1]`` seconds on ``link`` for every cut (0 at cut N: nothing downstream runs)."""
        wire = self.cut_bytes if self.wire_bytes is None else self.wire_bytes
        cost = self.rtt[link] + 8.0 * wire / self.bandwidth[link]
        if self.link_extra_s is not None:
            cost = cost + self.link_extra_s[link]
        if self.reach is not None:
            cost = cost * self.reach
        return np.where(np.arange(self.n + 1) < self.n, cost, 0.0)

    @property
    def tiers(self) -> int:
        return self.node_time.shape[0]

    @property
    def n(self) -> int:
        return self.node_time.shape[1]

    def link_cost(self, link: int, cut: int) -> float:
        """Seconds on ``link`` when the cut before tier ``link + 1`` is ``cut``."""
        if cut >= self.n:
            return 0.0
        return float(self.link_costs(link)[cut])

    def memory_of(self, start: int, end: int) -> float:
        """Bytes a tier needs to run nodes ``[start, end)`` (0 when it runs nothing)."""
        if end <= start:
            return 0.0
        params = float(self.param_bytes[start:end].sum())
        return params + float(self.cut_bytes[start:end + 1].max())


@dataclass
class ChainSolution:
    """The optimum and, per boundary, the best latency achievable at every cut.

    Attributes:
        cuts: optimal ``(c_1 .. c_{k-1})``.
        latency: its predicted latency in seconds.
        best_at: ``[k-1, N+1]``; ``best_at[b, c]`` = best latency with boundary b at cut c
            (``inf`` where infeasible).
        plans_at: ``plans_at[b][c]`` = the cuts achieving ``best_at[b, c]`` (None if infeasible).
    """

    cuts: tuple[int, ...]
    latency: float
    best_at: np.ndarray
    plans_at: list[list[tuple[int, ...] | None]] = field(repr=False)


def evaluate_cuts(problem: ChainProblem, cuts: tuple[int, ...]) -> dict[str, object]:
    """Latency breakdown of a given plan (no optimisation): compute per tier, time per link.

    Returns:
        ``{"compute": [k floats], "links": [k-1 floats], "total": float,
        "memory": [k floats], "fits": bool, "legal": bool, "reach": [k floats]}`` (reach: share
        of requests reaching each tier's first node; compute and links are already weighted by it)
    """
    bounds = (0, *cuts, problem.n)
    compute = [float(problem.weighted_node_time(t)[bounds[t]:bounds[t + 1]].sum())
               + problem.boundary_cost(t, bounds[t], bounds[t + 1]) for t in range(problem.tiers)]
    links = [problem.link_cost(t, bounds[t + 1]) for t in range(problem.tiers - 1)]
    memory = [problem.memory_of(bounds[t], bounds[t + 1]) for t in range(problem.tiers)]
    fits = all(m <= problem.memory[t] for t, m in enumerate(memory))
    legal = all(problem.legal[c] or c == problem.n for c in cuts) and list(cuts) == sorted(cuts)
    reach = [1.0 if problem.reach is None else float(problem.reach[b]) for b in bounds[:-1]]
    return {"compute": compute, "links": links, "total": sum(compute) + sum(links),
            "memory": memory, "fits": fits, "legal": legal, "reach": reach}


@dataclass(frozen=True)
class LinkSpec:
    """The network link between tier ``index`` and tier ``index + 1``."""

    index: int
    from_tier: str
    to_tier: str
    bandwidth_bps: float
    rtt_s: float
    source: str  # "flag" or "<tier> default uplink"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "from": self.from_tier, "to": self.to_tier,
                "bandwidth_bps": self.bandwidth_bps, "rtt_s": self.rtt_s, "source": self.source}


@dataclass(frozen=True)
class PlanChoice:
    """One complete placement and its predicted cost.

    Attributes:
        cuts: cut index per tier boundary (see :mod:`splitc.core.passes.candidates`).
        after: the last node before each cut (None = the cut ships the raw inputs).
        crossing: tensor names crossing each cut.
        crossing_bytes: bytes crossing each cut.
        compute_s: predicted compute seconds per tier.
        link_s: predicted seconds per link (0 when nothing downstream runs).
        memory_bytes: predicted memory per tier.
        latency_s: end-to-end predicted latency (expected over requests when there are exits).
        reach: with early exits, the share of requests reaching each tier (empty without exits).
        metrics: the other objectives of this plan (:meth:`splitc.planning.objectives.PlanMetrics.row`):
            p50_s, p99_s, usd_per_request, usd_per_million, tier_usd_per_request, dcor and
            latency_distribution (where requests end -- each exit, then the end -- with the share
            and the warm latency of each); empty when not evaluated.
    """

    cuts: tuple[int, ...]
    after: tuple[str | None, ...]
    crossing: tuple[tuple[str, ...], ...]
    crossing_bytes: tuple[int, ...]
    compute_s: tuple[float, ...]
    link_s: tuple[float, ...]
    memory_bytes: tuple[float, ...]
    latency_s: float
    reach: tuple[float, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        extra: dict[str, Any] = {}
        if m.get("usd_per_request") is not None:
            extra["cost"] = {"usd_per_request": m["usd_per_request"], "usd_per_million": m["usd_per_million"],
                             "tier_usd_per_request": m["tier_usd_per_request"]}
        if m.get("dcor") is not None:
            extra["privacy"] = {"dcor": m["dcor"]}
        return {
            "cuts": [{"index": c, "after": a, "tensors": list(t), "bytes": b}
                     for c, a, t, b in zip(self.cuts, self.after, self.crossing, self.crossing_bytes)],
            "predicted": {
                "latency_s": self.latency_s,
                "compute_s": list(self.compute_s),
                "transfer_s": list(self.link_s),
                "memory_bytes": list(self.memory_bytes),
                **({"reach": list(self.reach)} if self.reach else {}),
                **({"p50_s": m["p50_s"], "p99_s": m["p99_s"]} if "p50_s" in m else {}),
                **({"latency_distribution": m["latency_distribution"]} if m.get("latency_distribution") else {}),
            },
            **extra,
        }

    def describe(self) -> str:
        """The cuts in words, for logs and errors."""
        return ", ".join(f"after {a or 'input'}" for a in self.after) or "no cut"


@dataclass
class PlanResult:
    """What the plan step returns.

    Attributes:
        tiers: tier names in chain order.
        links: one :class:`LinkSpec` per link.
        best: the chosen plan.
        forced: whether the cuts came from ``--split``.
        alternatives: next-best distinct plans, best first.
        ranking: per boundary, one row per candidate cut with the best latency achievable there.
        objective: what was optimised and under which constraints (name, weights, slo_s, rps,
            max_dcor, workload, plans evaluated, exhaustive).
        pareto: the plans no other plan beats on every objective (latency, cost and, with a
            privacy profile, leakage), fastest first; the chosen plan is among them.
        variants: with ``--bandwidth-range``, the plans optimal across the range of the first
            link's bandwidth, each with the range where it wins (see planning/plan.py).
        figures: per tier, whether its compute time is measured (``splitc profile --model``) or
            predicted by the cost model (``tier``, ``nodes``, ``measured_nodes``, ``compute``).
        inputs: the model inputs planned for (name, shape, dtype, and ``assumed`` when splitc had to
            assume a size: a plan for an assumed shape is only as good as the assumption).
        explanation: why this plan: the best plan of each kind (one tier only, mid cut, knobs not
            given), the link-0 bandwidths where the optimum changes, and for a forced split the
            optimum (see planning/explain.py).
    """

    tiers: list[str]
    links: list[LinkSpec]
    best: PlanChoice
    forced: bool
    alternatives: list[PlanChoice] = field(default_factory=list)
    ranking: list[list[dict[str, Any]]] = field(default_factory=list)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "latency"})
    pareto: list[PlanChoice] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    explanation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_ranking: bool = False) -> dict[str, Any]:
        out = {
            "objective": self.objective.get("name", "latency"),
            "objective_settings": dict(self.objective),
            "forced": self.forced,
            **({"inputs": self.inputs} if self.inputs else {}),
            "tiers": list(self.tiers),
            "links": [link.to_dict() for link in self.links],
            **self.best.to_dict(),
        }
        if self.figures:
            out["figures"] = [dict(f) for f in self.figures]
        if self.pareto:
            out["pareto"] = [p.to_dict() for p in self.pareto]
        if self.variants:
            out["variants"] = [{k: v for k, v in entry.items() if k != "curve"} for entry in self.variants]
        if self.explanation:
            out["explanation"] = self.explanation
        if include_ranking:
            out["ranking"] = self.ranking
        return out


@dataclass(frozen=True)
class Assessment:
    """The plan the planner would choose for one problem, and how good it is (see :meth:`Planner.scorer`).

    Attributes:
        cuts: the chosen cuts (the forced ones with ``--split``).
        key: lexicographic score, lower is better: ``(constraint violation, scaled objective, expected
            latency, cost)``; comparable between problems scored by one scorer, so a capability can
            compare its own knob settings (e.g. exit thresholds) under the compile's objective.
        feasible: the plan meets memory and every constraint (``--slo-ms``, ``--max-dcor``).
        values: the plan's objectives: ``latency_s`` (expected), ``p50_s``, ``p99_s``,
            ``usd_per_request`` (None without price models), ``dcor`` (None without a privacy profile).
    """

    cuts: tuple[int, ...]
    key: tuple[float, ...]
    feasible: bool
    values: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


#: ``problem -> Assessment``: the compile's objective and constraints on a scale fixed once (:meth:`Planner.scorer`).
Scorer = Callable[["ChainProblem"], Assessment]


#: A capability's contribution to the planning problem: ``(problem, gm, ctx) -> problem``
#: (compression: wire bytes and coder time of its knobs). The driver lists them for the plan pass.
ProblemAdjuster = Callable[[ChainProblem, Any, Any], ChainProblem]


class Planner(abc.ABC):
    """What a capability may ask of the planner (``ctx.planner``, set by the driver).

    The planning package implements it; capabilities that change the graph or the wire
    after the plan (a pruned sender, an inserted bottleneck) use it to re-cost or re-plan
    without importing the planning package.
    """

    @abc.abstractmethod
    def base_problem(self, gm: Any, ctx: Any) -> ChainProblem:
        """The problem of the current graph and candidates with no capability's adjustment."""

    @abc.abstractmethod
    def solve(self, problem: ChainProblem) -> ChainSolution:
        """The exact optimum of ``problem`` (raises ValueError when nothing fits memory)."""

    @abc.abstractmethod
    def choice(self, problem: ChainProblem, candidates: Any, cuts: tuple[int, ...]) -> PlanChoice:
        """The full breakdown of ``cuts`` under ``problem``."""

    @abc.abstractmethod
    def forced_cuts(self, ctx: Any, problem: ChainProblem) -> tuple[int, ...]:
        """The cut indices of ``--split``, checked."""

    @abc.abstractmethod
    def scorer(self, ctx: Any, reference: ChainProblem) -> Scorer:
        """Score problems under the compile's objective and constraints, on a scale fixed by ``reference``.

        The returned function gives, for a problem (e.g. ``reference`` re-weighted by the reach of
        some exit thresholds), the plan the plan pass would choose and an :class:`Assessment` whose
        ``key`` orders problems: plans violating a constraint (memory, SLO, leakage) rank by how
        far they miss it, the others by the objective scaled with ``reference``'s feasible Pareto
        front. The exits' threshold search uses it, so exits and cuts are planned jointly for every
        objective and constraint without the exits importing the planning package.
        """

    @abc.abstractmethod
    def replan(self, gm: Any, ctx: Any) -> None:
        """Run the plan pass again on the current graph (``ctx.plan_result`` is replaced)."""
