"""Objectives beyond latency: enumeration, quantiles, Pareto front, weighted choice, constraints, variants.

Every vectorised result is checked against a plain loop over plans (``evaluate_cuts`` /
explicit dominance), on random chain problems.
"""

from __future__ import annotations

import dataclasses

import itertools
import math

import numpy as np
import pytest

from splitc.planning.objectives import (Weights, candidate_plans, evaluate_plans, pareto_mask, parse_objective,
                                        select_plan)
from splitc.core.placement import ChainProblem, evaluate_cuts
from splitc.planning.chain import solve_chain
from splitc.errors import SplitcError
from splitc.targets.target import TargetRegistry


def random_problem(rng, k=3, n=9, reach=False, memory=np.inf) -> ChainProblem:
    legal = rng.random(n + 1) < 0.7
    legal[0] = True
    r = None
    if reach:  # exits at a few positions: reach falls monotonically
        drops = np.sort(rng.random(n + 1))[::-1]
        r = np.maximum.accumulate(drops[::-1])[::-1]
        r = np.minimum(1.0, r / r[0])
    return ChainProblem(node_time=rng.random((k, n)) * 1e-3, cut_bytes=rng.integers(1, 10**6, n + 1).astype(float),
                        legal=legal, param_bytes=rng.random(n) * 1e5, memory=np.full(k, memory),
                        rtt=rng.random(k - 1) * 1e-2, bandwidth=rng.choice([1e6, 1e7, 1e8], k - 1), reach=r)


def all_plans(problem: ChainProblem) -> list[tuple[int, ...]]:
    cuts = [c for c in range(problem.n + 1) if problem.legal[c] or c == problem.n]
    return [p for p in itertools.product(cuts, repeat=problem.tiers - 1) if list(p) == sorted(p)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("reach", [False, True])
@pytest.mark.parametrize("boundaries", [False, True])
def test_enumeration_matches_brute_force_latency_and_memory(seed, reach, boundaries):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, k=3, reach=reach, memory=3e6 if seed % 2 else np.inf)
    if boundaries:  # per-run entry and exit costs of each tier (session run, layout conversions)
        problem = dataclasses.replace(problem, tier_entry_s=rng.random((3, problem.n + 1)) * 1e-3,
                                      tier_exit_s=rng.random((3, problem.n + 1)) * 1e-3)
    plans, exhaustive = candidate_plans(problem)
    assert exhaustive and sorted(map(tuple, plans.tolist())) == sorted(all_plans(problem))
    metrics = evaluate_plans(problem, [None] * 3, plans, rps=1.0, with_cost=False)
    for i, plan in enumerate(plans):
        ev = evaluate_cuts(problem, tuple(plan))
        assert metrics.latency_s[i] == pytest.approx(ev["total"], rel=1e-12, abs=1e-15)
        assert bool(metrics.fits[i]) == ev["fits"]
    if metrics.fits.any():  # the DP optimum is the enumeration's best feasible latency
        assert solve_chain(problem).latency == pytest.approx(metrics.latency_s[metrics.fits].min())


def test_quantiles_follow_the_share_of_requests_leaving_at_each_tier():
    # 3 tiers, 1 ms per node, no link cost; reach: 1 -> 0.6 after node 2 -> 0.3 after node 4
    problem = ChainProblem(node_time=np.full((3, 6), 1e-3), cut_bytes=np.zeros(7), legal=np.ones(7, bool),
                           param_bytes=np.zeros(6), memory=np.full(3, np.inf), rtt=np.zeros(2),
                           bandwidth=np.full(2, 1e9), reach=np.array([1, 1, 0.6, 0.6, 0.3, 0.3, 0.3]))
    m = evaluate_plans(problem, [None] * 3, np.array([[2, 4]]), rps=1.0, with_cost=False)
    # 40 % end after 2 ms, 30 % after 4 ms, 30 % after 6 ms: mean 0.4*2 + 0.3*4 + 0.3*6 = 3.8 ms
    assert m.latency_s[0] == pytest.approx(3.8e-3)
    assert m.p50_s[0] == pytest.approx(4e-3)  # cumulative share reaches 0.5 at the second tier
    assert m.p99_s[0] == pytest.approx(6e-3)


@pytest.mark.parametrize("seed", range(10))
def test_pareto_mask_matches_pairwise_dominance(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(40, 3)).astype(float)  # many ties on purpose
    keep = pareto_mask(values)
    for i, v in enumerate(values):
        dominated = any(np.all(w <= v) and np.any(w < v) for w in values)
        assert keep[i] <= (not dominated)
    # every non-dominated value vector is represented exactly once
    front = {tuple(v) for v, k in zip(values, keep) if k}
    expected = {tuple(v) for v in values if not any(np.all(w <= v) and np.any(w < v) for w in values)}
    assert front == expected and keep.sum() == len(expected)


def _metrics_with(latency, cost, dcor):
    from splitc.planning.objectives import PlanMetrics

    n = len(latency)
    latency = np.asarray(latency, float)
    return PlanMetrics(cuts=np.arange(n).reshape(-1, 1), latency_s=latency, p50_s=latency, p99_s=latency,
                       usd_per_request=np.asarray(cost, float), tier_usd=np.zeros((n, 2)),
                       dcor=None if dcor is None else np.asarray(dcor, float), fits=np.ones(n, bool), exhaustive=True)


def test_weighted_choice_scales_each_objective_over_the_feasible_plans():
    m = _metrics_with(latency=[1.0, 2.0, 3.0], cost=[30.0, 10.0, 0.0], dcor=[1.0, 0.5, 0.1])
    assert select_plan(m, Weights(1, 0, 0)).index == 0
    assert select_plan(m, parse_objective("cost")).index == 2
    # scaled: latency [0, .5, 1], cost [1, 1/3, 0]: J = [1, .83, 1] -> plan 1
    assert select_plan(m, Weights(1, 1, 0)).index == 1
    # a dominated plan (slow AND expensive) does not stretch the scale: still plan 1
    m4 = _metrics_with(latency=[1.0, 2.0, 3.0, 50.0], cost=[30.0, 10.0, 0.0, 90.0], dcor=[1.0, 0.5, 0.1, 1.0])
    assert select_plan(m4, Weights(1, 1, 0)).index == 1
    assert not select_plan(m4, Weights(1, 1, 0)).pareto[3]
    assert select_plan(m, parse_objective("privacy")).index == 2
    # an SLO of 2.5 drops plan 2, and the scaling then spans plans 0 and 1 only
    assert select_plan(m, parse_objective("cost"), slo_s=2.5).index == 1
    assert select_plan(m, Weights(1, 0, 0), max_dcor=0.6).index == 1


def test_impossible_constraints_say_the_best_reachable_value():
    m = _metrics_with(latency=[0.010, 0.020], cost=[1.0, 0.0], dcor=[0.9, 0.4])
    with pytest.raises(SplitcError, match=r"best reachable predicted p50 is 10\.00 ms"):
        select_plan(m, Weights(), slo_s=0.005)
    with pytest.raises(SplitcError, match=r"lowest reachable distance correlation is 0\.400"):
        select_plan(m, Weights(), max_dcor=0.1)


@pytest.mark.parametrize("objective, weights, message", [
    ("fastest", (), "unknown objective"),
    ("weighted", (), "needs --weights"),
    ("weighted", ("speed=1",), "known name"),
    ("weighted", ("latency=-1",), ">= 0"),
    ("weighted", ("latency=abc",), "must be a number"),
    ("weighted", ("latency=0", "cost=0"), "every --weights value is 0"),
    ("cost", ("latency=1",), "--weights was given with --objective cost"),
])
def test_bad_objective_flags(objective, weights, message):
    with pytest.raises(SplitcError, match=message):
        parse_objective(objective, weights)


def test_restricted_enumeration_keeps_the_dp_optimum_reachable():
    rng = np.random.default_rng(3)
    problem = random_problem(rng, k=3, n=60)
    solution = solve_chain(problem)
    plans, exhaustive = candidate_plans(problem, solution.best_at, limit=50)
    assert not exhaustive and len(plans) <= 60
    assert any(tuple(p) == solution.cuts for p in plans.tolist())


def test_bandwidth_variants_find_the_analytic_switch_point():
    from splitc.core.passes.candidates import Candidate, Candidates
    from splitc.planning.plan import PlanSettings, bandwidth_variants
    from splitc.core.options import CompileOptions

    # 2 tiers, 2 nodes. Cut 0 ships 1 MB; cut 1 ships 10 kB after 20 ms more on the device than on the cloud;
    # cut 2 keeps everything on the device (40 ms). Latency(cut0) = 1 + 8e6/b ; latency(cut1) = 21 + 8e4/b (ms, s)
    problem = ChainProblem(node_time=np.array([[0.020, 0.020], [0.0005, 0.0005]]),
                           cut_bytes=np.array([1e6, 1e4, 0.0]), legal=np.ones(3, bool), param_bytes=np.zeros(2),
                           memory=np.full(2, np.inf), rtt=np.zeros(1), bandwidth=np.array([1e7]))
    cands = Candidates(nodes=["a", "b"], cuts=[Candidate(i, after, (), int(b), True, "")
                                               for i, (after, b) in enumerate([(None, 1e6), ("a", 1e4), ("b", 0)])])
    settings = PlanSettings.from_options(CompileOptions(targets=("a", "b"), bandwidth_range="1mbps:10gbps"))
    tiers = TargetRegistry.with_builtins().resolve_chain(["jetson", "cloud-gpu"])
    variants = bandwidth_variants(problem, tiers, settings, None, cands)
    got = [tuple(c["index"] for c in v["plan"]["cuts"]) for v in variants]
    assert got == [(2,), (1,), (0,)]
    # cut2 vs cut1: 0.040 = 0.0205 + 8e4/b -> b = 8e4/0.0195; cut1 vs cut0: 0.0205 + 8e4/b = 0.001 + 8e6/b
    first = 8e4 / 0.0195
    second = (8e6 - 8e4) / 0.0195
    assert variants[0]["range_bps"][1] == pytest.approx(first, rel=2e-3)
    assert variants[1]["range_bps"][1] == pytest.approx(second, rel=2e-3)
    assert math.isclose(variants[-1]["range_bps"][1], 1e10)
