"""Objectives beyond latency: monetary cost, privacy, weights, constraints and the Pareto front.

The latency DP (:mod:`splitc.planning.chain`) is exact in O(kN) because latency adds up
node by node. The other two objectives do not:

* **cost** -- a VM is paid per whole instance, so a tier's cost per request is a step
  function of its busy time and of the request rate reaching it
  (:mod:`splitc.planning.pricing`);
* **privacy** -- what an attacker on a link recovers depends on the tensors crossing
  that link; a plan leaks as much as its leakiest used link. Leakage is the distance
  correlation between the input and what crosses the cut
  (:mod:`splitc.privacy.leakage`), 1 for the raw input, 0 when nothing leaves the device.

So these are evaluated on an explicit set of plans: every chain of legal cuts when
there are at most :data:`MAX_PLANS` of them (exact), otherwise the cuts the latency DP
ranks best at each boundary (the result says ``exhaustive: false``). For each plan:

* ``latency_s``: expected end-to-end latency (what the DP minimises; with early exits an
  average over requests);
* ``p50_s`` / ``p99_s``: quantiles of the per-request latency. The latency model is
  deterministic per path, so quantiles only differ from the mean through early exits
  (requests leave at different tiers) and FaaS cold starts (a share of requests pays
  the cold start); network jitter and queueing are not modelled. The SLO applies to p50 or, with
  ``--slo-quantile p99``, to p99; ``latency_distribution`` lists where requests end (each exit,
  inside a tier or at its end, then the model's end) with the share and warm latency of each;
* ``usd_per_request``: sum over tiers of (share of requests reaching the tier) x (that
  tier's price per request at ``rps x reach``);
* ``dcor``: max over used links of the leakage at the link's cut (None without a privacy
  profile).

**Weighted objective.** Each objective is scaled by its range over the feasible Pareto
front -- 0 at the ideal point (the best feasible value), 1 at the nadir point (the worst
value among non-dominated feasible plans) -- then ``J = sum_i w_i * scaled_i``; the plan
with the least J wins, ties going to lower latency then lower cost. Scaling makes weights
comparable across units (ms, dollars, correlation) and independent of the model's size;
taking the range over the front, not over every plan, keeps absurd plans (a cut that
ships a huge tensor) from stretching the scale. A weight of 0 ignores an objective.

**Constraints**: each tier's memory (always), ``--slo-ms`` on p50 or p99, ``--max-dcor`` on
leakage. When a constraint removes every plan the error says the best reachable value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from splitc.core.placement import ChainProblem
from splitc.planning.chain import range_memory
from splitc.errors import SplitcError

__all__ = ["OBJECTIVES", "Weights", "parse_objective", "weights_of", "PlanMetrics", "candidate_plans", "evaluate_plans",
           "pareto_mask", "select_plan", "MAX_PLANS", "stops_of", "SLO_QUANTILES", "Scale", "assess_plans"]

OBJECTIVES = ("latency", "cost", "privacy", "weighted")
WEIGHT_NAMES = ("latency", "cost", "privacy")
MAX_PLANS = 200_000  # explicit plans evaluated at once (~10 float arrays each: a few tens of MB)


@dataclass(frozen=True)
class Weights:
    """Weights of the scaled objectives (see module docstring)."""

    latency: float = 1.0
    cost: float = 0.0
    privacy: float = 0.0

    def as_array(self) -> np.ndarray:
        return np.array([self.latency, self.cost, self.privacy], dtype=np.float64)

    def to_dict(self) -> dict[str, float]:
        return {"latency": self.latency, "cost": self.cost, "privacy": self.privacy}

    @property
    def pure_latency(self) -> bool:
        return self.cost == 0 and self.privacy == 0


def parse_objective(objective: str, weights: Sequence[str] = ()) -> Weights:
    """Weights from ``--objective`` and ``--weights name=value,...``.

    A single objective still keeps a tiny latency weight (1e-6) so that, among plans
    equally good on it (e.g. every device-only plan costs $0), the fastest wins.

    Raises:
        SplitcError: unknown objective or weight name, a weight that is not a finite number
            >= 0, all weights zero, or weights given with a single-objective ``--objective``.
    """
    if objective not in OBJECTIVES:
        raise SplitcError(f"unknown objective '{objective}'", f"valid objectives: {', '.join(OBJECTIVES)}")
    if weights and objective not in ("weighted", "latency"):
        raise SplitcError(f"--weights was given with --objective {objective}",
                          "use --objective weighted (or leave --objective out) to combine objectives")
    if not weights:
        if objective == "weighted":
            raise SplitcError("--objective weighted needs --weights", "e.g. --weights latency=1,cost=0.5,privacy=0")
        tie = 1e-6
        return {"latency": Weights(1.0, 0.0, 0.0), "cost": Weights(tie, 1.0, 0.0),
                "privacy": Weights(tie, 0.0, 1.0)}[objective]
    values = {}
    for item in weights:
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in WEIGHT_NAMES:
            raise SplitcError(f"--weights entry '{item}' is not name=value with a known name",
                              f"known names: {', '.join(WEIGHT_NAMES)}, e.g. --weights latency=1,cost=0.5")
        try:
            value = float(raw)
        except ValueError:
            raise SplitcError(f"--weights {name} must be a number, got '{raw}'") from None
        if not math.isfinite(value) or value < 0:
            raise SplitcError(f"--weights {name} must be a finite number >= 0, got {raw}")
        if name in values:
            raise SplitcError(f"--weights names '{name}' twice")
        values[name] = value
    if not any(values.values()):
        raise SplitcError("every --weights value is 0", "give at least one objective a positive weight")
    return Weights(values.get("latency", 0.0), values.get("cost", 0.0), values.get("privacy", 0.0))


def weights_of(options) -> Weights:
    """The weights a compile's options ask for: ``--weights`` alone (objective left at latency) means weighted."""
    objective = options.objective
    if options.weights and objective == "latency":
        objective = "weighted"
    return parse_objective(objective, options.weights)


@dataclass
class PlanMetrics:
    """Objectives of many plans at once (row ``i`` describes ``cuts[i]``)."""

    cuts: np.ndarray  # [P, k-1] cut indices
    latency_s: np.ndarray  # [P] expected latency
    p50_s: np.ndarray
    p99_s: np.ndarray
    usd_per_request: np.ndarray  # [P] (nan where a tier has no price model or cost was not computed)
    tier_usd: np.ndarray  # [P, k] per tier, already weighted by reach
    dcor: np.ndarray | None  # [P] leakage; None without a privacy profile
    fits: np.ndarray  # [P] memory fits every tier
    exhaustive: bool
    stop_positions: np.ndarray | None = None  # [S] positions where requests end (exits, then the model's end)
    stop_shares: np.ndarray | None = None  # [S] share of requests ending at each
    stop_latency_s: np.ndarray | None = None  # [P, S] latency of a request ending there

    def __len__(self) -> int:
        return len(self.latency_s)

    def row(self, i: int) -> dict[str, Any]:
        """The objectives of plan ``i`` as plain numbers (for PlanChoice and JSON)."""
        return {"latency_s": float(self.latency_s[i]), "p50_s": float(self.p50_s[i]), "p99_s": float(self.p99_s[i]),
                "usd_per_request": _finite_or_none(self.usd_per_request[i]),
                "usd_per_million": _finite_or_none(self.usd_per_request[i] * 1e6),
                "tier_usd_per_request": [float(v) for v in self.tier_usd[i]],
                "dcor": None if self.dcor is None else float(self.dcor[i]),
                **({"latency_distribution": self.distribution(i)} if self.stop_positions is not None else {})}

    def distribution(self, i: int) -> list[dict[str, float]]:
        """Plan ``i``'s per-request latency distribution: one entry per place requests end (early exits make it
        multimodal), ``{"position", "share", "latency_s"}``, cold starts not included."""
        return [{"position": int(p), "share": float(s), "latency_s": float(x)}
                for p, s, x in zip(self.stop_positions, self.stop_shares, self.stop_latency_s[i])]

    def index_of(self, cuts: Sequence[int]) -> int | None:
        hits = np.flatnonzero((self.cuts == np.asarray(cuts, dtype=np.int64)).all(axis=1))
        return int(hits[0]) if len(hits) else None


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def candidate_plans(problem: ChainProblem, best_at: np.ndarray | None = None,
                    limit: int = MAX_PLANS) -> tuple[np.ndarray, bool]:
    """Every non-decreasing tuple of legal cuts (``[P, k-1]``), or a restricted set beyond ``limit``.

    The restricted set keeps, per boundary, the cuts with the best latency the DP can reach
    through them (``best_at``), as many as fit ``limit`` plans.

    Returns:
        (cuts, exhaustive)
    """
    k, n = problem.tiers, problem.n
    if k == 1:
        return np.zeros((1, 0), dtype=np.int64), True
    legal = np.flatnonzero(np.append(problem.legal[:n], True))  # cut n (nothing downstream) is always allowed
    exhaustive = math.comb(len(legal) + k - 2, k - 1) <= limit
    if exhaustive:
        pools = [legal] * (k - 1)
    else:
        if best_at is None:
            raise ValueError("best_at is needed to restrict the plans")
        per = max(2, int(limit ** (1.0 / (k - 1))))
        pools = []
        for b in range(k - 1):
            row = best_at[b, legal]
            pools.append(np.sort(legal[np.argsort(row, kind="stable")[:per]]))
    rows = pools[0].reshape(-1, 1).astype(np.int64)
    for pool in pools[1:]:  # extend every partial plan by each cut not before its last one (vectorised)
        left, right = np.nonzero(rows[:, -1][:, None] <= pool[None, :])
        rows = np.hstack([rows[left], pool[right].reshape(-1, 1).astype(np.int64)])
    return rows, exhaustive


def stops_of(problem: ChainProblem) -> tuple[np.ndarray, np.ndarray]:
    """Where requests end and which share ends there: ``(positions, shares)``.

    A request that leaves at an exit of node ``p`` has run nodes ``0..p`` and ends at position
    ``p + 1``; the rest end at ``n``. Read from ``problem.reach`` (``reach[j-1] - reach[j]`` of
    the requests leave at position ``j``), so the exits may sit anywhere, inside a tier or at
    its end. Without reach every request ends at ``n``.
    """
    n = problem.n
    if problem.reach is None:
        return np.array([n], dtype=np.int64), np.array([1.0])
    reach = np.asarray(problem.reach, dtype=np.float64)
    drop = reach[:-1] - reach[1:]  # drop[j-1]: share leaving at position j
    positions = [j for j in range(1, n) if drop[j - 1] > 1e-15]
    shares = [float(drop[j - 1]) for j in positions]
    positions.append(n)
    shares.append(float(reach[n - 1]) if n >= 1 else 1.0)  # leaving after the last node = finishing
    return np.array(positions, dtype=np.int64), np.array(shares)


def evaluate_plans(problem: ChainProblem, tiers, cuts: np.ndarray, rps: float, *,
                   dcor: np.ndarray | None = None, exhaustive: bool = True,
                   with_cost: bool = True) -> PlanMetrics:
    """Latency (expected, p50, p99, distribution), cost and leakage of every plan in ``cuts`` (vectorised).

    Per-request latency: a request that ends at position ``j`` (:func:`stops_of`; an exit inside a
    tier or the end of the model) has run every node before ``j`` on its tier, unweighted, and
    crossed every used link whose cut is before ``j`` (an exit at the last node of a tier fires
    before that tier's link). The quantiles are taken over these paths with their shares.

    Cost: a tier is priced at the rate of requests entering it (``rps x reach`` at its first node)
    and the *expected* busy seconds of such a request (its nodes weighted by the share of the
    entering requests still running there), so exits inside a VM tier lower its load and exits
    before a FaaS tier lower its invocations (and raise its cold-start share).

    Args:
        problem: the planning problem (with reach when there are exits).
        tiers: the chain's targets (their price models).
        cuts: ``[P, k-1]`` plans.
        rps: request rate the prices assume (requests per second entering tier 0).
        dcor: ``[N+1]`` leakage per cut (privacy profile), or None.
        exhaustive: whether ``cuts`` is every plan (recorded on the result).
        with_cost: compute monetary cost (needs every tier's price model).
    """
    k, n = problem.tiers, problem.n
    cuts = np.asarray(cuts, dtype=np.int64)
    cuts = cuts.reshape(max(len(cuts), 1), 0) if k == 1 else cuts.reshape(-1, k - 1)  # one tier: one empty plan
    count = len(cuts)
    bounds = np.hstack([np.zeros((count, 1), np.int64), cuts, np.full((count, 1), n, np.int64)])
    reach_pos = np.ones(n + 1) if problem.reach is None else np.asarray(problem.reach, dtype=np.float64)
    plain = replace(problem, reach=None)
    positions, shares = stops_of(problem)

    expected = np.zeros(count)
    fits = np.ones(count, dtype=bool)
    busy = np.zeros((count, k))  # expected seconds a request entering tier t spends there
    memory = np.zeros((count, k))
    reach = np.zeros((count, k))
    stop_latency = np.zeros((count, len(positions)))  # latency of a request ending at each stop
    for t in range(k):
        s, e = bounds[:, t], bounds[:, t + 1]
        weighted = _prefix(problem.weighted_node_time(t))
        unweighted = _prefix(problem.node_time[t])
        runs = e > s  # entry and exit (session run, layout conversions) only when the tier runs something
        bound = np.where(runs, problem.weighted_entry(t)[s] + problem.weighted_exit(t)[e], 0.0)
        plain_entry = np.where(runs, plain.weighted_entry(t)[s], 0.0)
        plain_exit = np.where(runs, plain.weighted_exit(t)[e], 0.0)
        expected += weighted[e] - weighted[s] + bound
        reach[:, t] = reach_pos[s]
        entering = reach[:, t]
        with np.errstate(divide="ignore", invalid="ignore"):
            busy[:, t] = np.where(entering > 0,
                                  (weighted[e] - weighted[s] + bound) / np.where(entering > 0, entering, 1.0),
                                  unweighted[e] - unweighted[s] + plain_entry + plain_exit)
        # a request ending at stop j paid this tier's entry if it reached the tier's first node (j > s), its
        # exit if it reached the tier's last node (j >= e): the weights weighted_entry/weighted_exit use
        stop_latency += np.where(positions[None, :] > s[:, None], plain_entry[:, None], 0.0)
        stop_latency += np.where(positions[None, :] >= e[:, None], plain_exit[:, None], 0.0)
        memory[:, t] = range_memory(problem, s, e)
        fits &= memory[:, t] <= problem.memory[t]
        for i, j in enumerate(positions):  # nodes of this tier run before the stop
            stop_latency[:, i] += unweighted[np.clip(j, s, e)] - unweighted[s]
        if t < k - 1:
            expected += problem.link_costs(t)[e]
            link = plain.link_costs(t)[e]
            stop_latency += np.where(e[:, None] < positions[None, :], link[:, None], 0.0)

    tier_usd = np.full((count, k), np.nan)
    p50 = _quantile(stop_latency, shares, 0.5)
    p99 = _quantile(stop_latency, shares, 0.99)
    if with_cost:
        tier_usd, cold_share, cold_s = _tier_costs(tiers, busy, memory, reach, rps)
        fits &= np.isfinite(tier_usd).all(axis=1)  # e.g. a partition larger than a FaaS tier's memory size
        # a tier's cold start counts at quantile q once more than 1 - q of all requests pay it (cold requests
        # are the slowest; see splitc.planning.pricing.ColdStart)
        p50 = p50 + ((cold_share > 0.5) * cold_s).sum(axis=1)
        p99 = p99 + ((cold_share > 0.01) * cold_s).sum(axis=1)
    usd = tier_usd.sum(axis=1)
    leak = None
    if dcor is not None:
        leak = np.zeros(count)
        for t in range(k - 1):
            c = cuts[:, t]
            used = c < n
            leak = np.where(used, np.maximum(leak, np.nan_to_num(dcor[c], nan=1.0)), leak)
    return PlanMetrics(cuts, expected, p50, p99, usd, tier_usd, leak, fits, exhaustive,
                       stop_positions=positions, stop_shares=shares, stop_latency_s=stop_latency)


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1)
    out[1:] = np.cumsum(values)
    return out


def _quantile(path: np.ndarray, shares: np.ndarray, q: float) -> np.ndarray:
    """Per plan, the q-quantile of the path latencies ``path[:, i]`` when a share ``shares[i]`` of requests takes path i."""
    shares = np.broadcast_to(np.asarray(shares, dtype=np.float64), path.shape)
    order = np.argsort(path, axis=1, kind="stable")
    values = np.take_along_axis(path, order, axis=1)
    cum = np.cumsum(np.take_along_axis(shares, order, axis=1), axis=1)
    first = np.argmax(cum >= q - 1e-12, axis=1)
    return values[np.arange(len(path)), first]


def _tier_costs(tiers, busy: np.ndarray, memory: np.ndarray, reach: np.ndarray,
                rps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tier: USD per request entering tier 0 (reach-weighted), each FaaS tier's cold share of all
    requests, and its cold-start seconds (``[k]``; 0 for tiers without cold starts).

    A partition a FaaS tier cannot hold gets an infinite cost (the plan is then infeasible).
    """
    from splitc.planning.pricing import tier_cold_start, tier_plan_cost

    usd = np.zeros(busy.shape)
    cold = np.zeros(busy.shape)
    seconds = np.zeros(busy.shape[1])
    for t, target in enumerate(tiers):
        runs = busy[:, t] > 0  # a tier that runs nothing is not provisioned
        if not runs.any():
            continue
        # weighted by reach inside: a VM holding a partition that no request reaches still costs its instance
        usd[runs, t] = tier_plan_cost(target, busy[runs, t], reach[runs, t], rps, memory[runs, t], infeasible="inf")
        start = tier_cold_start(target, rps * reach[runs, t])
        if start is not None:
            cold[runs, t] = start.share * reach[runs, t]
            seconds[t] = start.cold_start_s
    return usd, cold, seconds


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (``[P, m]``, lower is better) that no other row dominates; duplicates keep one.

    Repeatedly keeps the lexicographically smallest remaining row (no remaining row can
    dominate it) and drops every row it weakly dominates: O(front size x P), vectorised.
    """
    values = np.asarray(values, dtype=np.float64)
    keep = np.zeros(len(values), dtype=bool)
    remaining = np.lexsort(values.T[::-1])  # by first column, then the next...
    while remaining.size:
        best = remaining[0]
        keep[best] = True
        remaining = remaining[~np.all(values[remaining] >= values[best], axis=1)]
    return keep


@dataclass
class Selection:
    """The chosen plan index and what the choice saw."""

    index: int
    feasible: np.ndarray
    score: np.ndarray  # weighted scaled objective (inf where infeasible)
    pareto: np.ndarray  # Pareto-optimal among memory-feasible plans

    def ranked(self) -> np.ndarray:
        """Feasible plan indices, best score first."""
        idx = np.flatnonzero(np.isfinite(self.score))
        return idx[np.argsort(self.score[idx], kind="stable")]


def select_plan(metrics: PlanMetrics, weights: Weights, *, slo_s: float | None = None,
                max_dcor: float | None = None, describe=None, slo_quantile: str = "p50") -> Selection:
    """The plan minimising the weighted scaled objective under memory, SLO and leakage constraints.

    Args:
        describe: ``f(index) -> str`` naming a plan in error messages (e.g. its cuts).
        slo_quantile: which predicted quantile ``slo_s`` bounds (``p50`` or ``p99``).

    Raises:
        SplitcError: when a constraint leaves no plan (saying the best reachable value).
    """
    describe = describe or (lambda i: str(list(metrics.cuts[i])))
    feasible = metrics.fits.copy()
    if not feasible.any():
        raise ValueError("no plan fits the tiers' memory")  # the plan pass words this one
    if slo_s is not None:
        quantile = _slo_column(metrics, slo_quantile)
        meets = feasible & (quantile <= slo_s)
        if not meets.any():
            best = int(np.flatnonzero(feasible)[np.argmin(quantile[feasible])])
            raise SplitcError(f"no plan meets --slo-ms {slo_s * 1e3:g} on {slo_quantile}: the best reachable predicted "
                              f"{slo_quantile} is {quantile[best] * 1e3:.2f} ms ({describe(best)})",
                              "raise --slo-ms, use faster tiers or links, or compress the transfer")
        feasible = meets
    if max_dcor is not None:
        if metrics.dcor is None:
            raise SplitcError("--max-dcor needs the privacy profile", "pass --calib with calibration inputs")
        meets = feasible & (metrics.dcor <= max_dcor + 1e-12)
        if not meets.any():
            best = int(np.flatnonzero(feasible)[np.argmin(metrics.dcor[feasible])])
            raise SplitcError(f"no plan{' within the SLO' if slo_s is not None else ''} keeps leakage <= --max-dcor "
                              f"{max_dcor:g}: the lowest reachable distance correlation is "
                              f"{metrics.dcor[best]:.3f} ({describe(best)})",
                              "raise --max-dcor, relax --slo-ms, or add noise with --privacy-epsilon")
        feasible = meets
    w = weights.as_array()
    columns = [metrics.latency_s, metrics.usd_per_request,
               metrics.dcor if metrics.dcor is not None else np.zeros(len(metrics))]
    if w[1] > 0 and not np.isfinite(metrics.usd_per_request[feasible]).all():
        raise SplitcError("the cost objective needs a price model on every tier", "add 'price:' to the target YAML")
    if w[2] > 0 and metrics.dcor is None:
        raise SplitcError("the privacy objective needs the privacy profile", "pass --calib with calibration inputs")
    objectives = [metrics.latency_s, np.nan_to_num(metrics.usd_per_request, nan=0.0)]
    if metrics.dcor is not None:
        objectives.append(metrics.dcor)
    values = np.column_stack(objectives)
    pareto = np.zeros(len(metrics), dtype=bool)
    fit_idx = np.flatnonzero(metrics.fits)
    pareto[fit_idx] = pareto_mask(values[fit_idx])
    # ideal and nadir points over the feasible Pareto front: dominated plans (however bad) do not stretch the scale
    front = pareto
    if not np.array_equal(feasible, metrics.fits):  # SLO / leakage bounds removed plans: the front of the rest
        front = np.zeros(len(metrics), dtype=bool)
        idx = np.flatnonzero(feasible)
        front[idx] = pareto_mask(values[idx])
    score = np.zeros(len(metrics))
    for weight, column in zip(w, columns):
        if weight == 0:
            continue
        lo, hi = column[front].min(), column[front].max()
        score = score + weight * ((column - lo) / (hi - lo) if hi > lo else np.zeros_like(column))
    score = np.where(feasible, score, np.inf)
    tie_cost = np.nan_to_num(metrics.usd_per_request, nan=0.0)
    order = np.lexsort((tie_cost, metrics.latency_s, score))
    return Selection(int(order[0]), feasible, score, pareto)


#: The latency quantiles ``--slo-ms`` may bound (``--slo-quantile``).
SLO_QUANTILES = ("p50", "p99")


def _slo_column(metrics: PlanMetrics, quantile: str) -> np.ndarray:
    if quantile not in SLO_QUANTILES:
        raise SplitcError(f"unknown SLO quantile '{quantile}'", f"valid: {', '.join(SLO_QUANTILES)}")
    return metrics.p50_s if quantile == "p50" else metrics.p99_s


@dataclass(frozen=True)
class Scale:
    """Fixed ideal (``lo``) and range (``span``) of latency, cost and leakage, for comparing plans of
    *different* problems on one scale (:func:`assess_plans`): the same scaling as :func:`select_plan`,
    taken once, from a reference problem's feasible Pareto front, instead of per problem."""

    lo: np.ndarray  # [3]
    span: np.ndarray  # [3], > 0

    @classmethod
    def of(cls, metrics: PlanMetrics, feasible: np.ndarray | None = None) -> "Scale":
        """The scale of ``metrics``' front among ``feasible`` plans (all memory-feasible ones when none is)."""
        values = _objective_values(metrics)
        mask = metrics.fits if feasible is None or not feasible.any() else feasible
        if not mask.any():
            return cls(np.zeros(3), np.ones(3))
        idx = np.flatnonzero(mask)
        front = values[idx][pareto_mask(values[idx])]
        lo, hi = front.min(axis=0), front.max(axis=0)
        # a flat objective on the reference front (e.g. every device-only plan costs $0) may still vary once
        # exits change the problem: scale it by its own magnitude instead of dividing by 0
        span = np.where(hi > lo, hi - lo, np.maximum(np.abs(lo), 1e-12))
        return cls(lo, span)


def _objective_values(metrics: PlanMetrics) -> np.ndarray:
    """``[P, 3]`` latency, cost (0 where unpriced) and leakage (0 without a profile)."""
    return np.column_stack([metrics.latency_s, np.nan_to_num(metrics.usd_per_request, nan=0.0),
                            metrics.dcor if metrics.dcor is not None else np.zeros(len(metrics))])


def constraint_violation(metrics: PlanMetrics, *, slo_s: float | None = None, slo_quantile: str = "p50",
                         max_dcor: float | None = None) -> np.ndarray:
    """``[P]`` how far each plan misses its constraints: 0 when it meets all of them, ``inf`` when it does
    not fit memory, else the relative excess over the SLO plus the excess over the leakage bound."""
    excess = np.zeros(len(metrics))
    if slo_s is not None:
        excess += np.maximum(0.0, _slo_column(metrics, slo_quantile) - slo_s) / slo_s
    if max_dcor is not None and metrics.dcor is not None:
        excess += np.maximum(0.0, metrics.dcor - max_dcor - 1e-12)
    return np.where(metrics.fits, excess, np.inf)


def assess_plans(metrics: PlanMetrics, weights: Weights, scale: Scale, *, slo_s: float | None = None,
                 slo_quantile: str = "p50", max_dcor: float | None = None) -> tuple[int, tuple[float, ...]]:
    """The best plan of ``metrics`` and its key on a fixed ``scale`` (lower keys are better across problems).

    Key ``(violation, J, latency, cost)``: plans meeting every constraint first (violation 0), then the
    weighted scaled objective ``J = sum_i w_i (v_i - lo_i) / span_i`` with the scale held fixed, so two
    problems (e.g. two exit-threshold settings) compare on the same ruler; ties go to lower latency,
    then lower cost, as in :func:`select_plan`.
    """
    violation = constraint_violation(metrics, slo_s=slo_s, slo_quantile=slo_quantile, max_dcor=max_dcor)
    values = _objective_values(metrics)
    score = ((values - scale.lo) / scale.span * weights.as_array()).sum(axis=1)
    order = np.lexsort((values[:, 1], values[:, 0], score, violation))
    i = int(order[0])
    return i, (float(violation[i]), float(score[i]), float(values[i, 0]), float(values[i, 1]))
