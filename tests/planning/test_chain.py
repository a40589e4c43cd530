"""The chain planner is exact: compare with brute force over every prefix-cut plan."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from splitc.core.placement import ChainProblem, evaluate_cuts
from splitc.planning.chain import solve_chain


def random_problem(rng: np.random.Generator, k: int, n: int, memory_tight: bool = False) -> ChainProblem:
    cut_bytes = rng.integers(1, 10_000, size=n + 1).astype(float)
    params = rng.integers(0, 5_000, size=n).astype(float)
    if memory_tight:
        whole = params.sum() + cut_bytes.max()
        memory = rng.uniform(0.3, 1.2, size=k) * whole
    else:
        memory = np.full(k, np.inf)
    legal = rng.random(n + 1) > 0.25
    return ChainProblem(
        node_time=rng.uniform(0, 1e-3, size=(k, n)) * rng.uniform(0.1, 10, size=(k, 1)),
        cut_bytes=cut_bytes, legal=legal, param_bytes=params, memory=memory,
        rtt=rng.uniform(0, 5e-3, size=k - 1), bandwidth=rng.uniform(1e5, 1e8, size=k - 1))


def brute_force(problem: ChainProblem) -> tuple[float, tuple[int, ...] | None]:
    best, best_cuts = np.inf, None
    for cuts in itertools.combinations_with_replacement(range(problem.n + 1), problem.tiers - 1):
        ev = evaluate_cuts(problem, cuts)
        if ev["legal"] and ev["fits"] and ev["total"] < best - 1e-15:
            best, best_cuts = ev["total"], cuts
    return best, best_cuts


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("tight", [False, True])
def test_matches_brute_force(k: int, tight: bool) -> None:
    rng = np.random.default_rng(1000 * k + tight)
    checked = 0
    for _ in range(60):
        problem = random_problem(rng, k, int(rng.integers(1, 9)), memory_tight=tight)
        want, _ = brute_force(problem)
        if not np.isfinite(want):
            with pytest.raises(ValueError):
                solve_chain(problem)
            continue
        solution = solve_chain(problem)
        ev = evaluate_cuts(problem, solution.cuts)
        assert ev["legal"] and ev["fits"]
        assert solution.latency == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert ev["total"] == pytest.approx(want, rel=1e-12, abs=1e-15)
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("k", [2, 3])
def test_best_at_every_candidate_is_exact(k: int) -> None:
    """best_at[b, c] equals the brute-force optimum restricted to plans with cut b at c."""
    rng = np.random.default_rng(7 + k)
    for _ in range(25):
        problem = random_problem(rng, k, int(rng.integers(1, 7)), memory_tight=True)
        try:
            solution = solve_chain(problem)
        except ValueError:
            continue
        for b in range(k - 1):
            for c in range(problem.n + 1):
                totals = [evaluate_cuts(problem, cuts)["total"]
                          for cuts in itertools.combinations_with_replacement(range(problem.n + 1), k - 1)
                          if cuts[b] == c and evaluate_cuts(problem, cuts)["legal"]
                          and evaluate_cuts(problem, cuts)["fits"]]
                want = min(totals) if totals else np.inf
                got = solution.best_at[b, c]
                if np.isfinite(want):
                    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
                    plan = solution.plans_at[b][c]
                    assert plan[b] == c
                    assert evaluate_cuts(problem, plan)["total"] == pytest.approx(want, rel=1e-12, abs=1e-15)
                else:
                    assert not np.isfinite(got) and solution.plans_at[b][c] is None


def test_raw_input_cut_is_a_transfer() -> None:
    """Cut 0 ships the raw input: a fast second tier wins when the link is fast."""
    problem = ChainProblem(node_time=np.array([[1.0, 1.0], [0.001, 0.001]]), cut_bytes=np.array([100.0, 1e9, 10.0]),
                           legal=np.ones(3, bool), param_bytes=np.zeros(2), memory=np.full(2, np.inf),
                           rtt=np.array([0.01]), bandwidth=np.array([8e6]))
    solution = solve_chain(problem)
    assert solution.cuts == (0,)
    assert solution.latency == pytest.approx(0.01 + 100 * 8 / 8e6 + 0.002)


def test_unused_link_costs_nothing() -> None:
    """When everything runs on tier 0, no transfer (and no rtt) is paid."""
    problem = ChainProblem(node_time=np.array([[0.001, 0.001], [0.0, 0.0]]), cut_bytes=np.array([1e9, 1e9, 1e9]),
                           legal=np.ones(3, bool), param_bytes=np.zeros(2), memory=np.full(2, np.inf),
                           rtt=np.array([0.5]), bandwidth=np.array([1e6]))
    solution = solve_chain(problem)
    assert solution.cuts == (2,)
    assert solution.latency == pytest.approx(0.002)


def test_memory_forces_offload() -> None:
    problem = ChainProblem(node_time=np.array([[0.001] * 4, [0.01] * 4]), cut_bytes=np.full(5, 10.0),
                           legal=np.ones(5, bool), param_bytes=np.array([100.0, 100.0, 100.0, 100.0]),
                           memory=np.array([215.0, np.inf]), rtt=np.array([0.0]), bandwidth=np.array([1e9]))
    solution = solve_chain(problem)
    assert solution.cuts == (2,)  # two nodes (200 B) + 10 B activations fit in 215 B; three do not


def test_ten_thousand_node_chain_under_a_second() -> None:
    rng = np.random.default_rng(0)
    problem = random_problem(rng, 3, 10_000, memory_tight=False)
    start = time.perf_counter()
    solution = solve_chain(problem)
    elapsed = time.perf_counter() - start
    assert evaluate_cuts(problem, solution.cuts)["legal"]
    assert elapsed < 5.0  # the benchmark measures the real figure; this only guards against blow-ups


def _with_reach(rng: np.random.Generator, problem: ChainProblem) -> ChainProblem:
    """The same problem with early exits: reach is non-increasing from 1 (exits at random nodes)."""
    import dataclasses

    drops = np.where(rng.random(problem.n + 1) < 0.3, rng.uniform(0, 0.4, problem.n + 1), 0.0)
    drops[0] = 0.0
    return dataclasses.replace(problem, reach=np.cumprod(1 - drops))


def _weighted_by_hand(problem: ChainProblem, cuts: tuple[int, ...]) -> float:
    bounds = (0, *cuts, problem.n)
    total = sum(problem.node_time[t, i] * problem.reach[i] for t in range(problem.tiers)
                for i in range(bounds[t], bounds[t + 1]))
    for t in range(problem.tiers - 1):
        c = bounds[t + 1]
        if c < problem.n:
            total += problem.reach[c] * (problem.rtt[t] + 8.0 * problem.cut_bytes[c] / problem.bandwidth[t])
    return float(total)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("tight", [False, True])
def test_reach_weighted_matches_brute_force(k: int, tight: bool) -> None:
    rng = np.random.default_rng(7000 + 10 * k + tight)
    checked = 0
    for _ in range(60):
        problem = _with_reach(rng, random_problem(rng, k, int(rng.integers(1, 9)), memory_tight=tight))
        want, _ = brute_force(problem)
        if not np.isfinite(want):
            continue
        solution = solve_chain(problem)
        assert solution.latency == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert evaluate_cuts(problem, solution.cuts)["total"] == pytest.approx(
            _weighted_by_hand(problem, solution.cuts), rel=1e-12, abs=1e-15)
        checked += 1
    assert checked >= 20


def test_reach_of_ones_changes_nothing() -> None:
    import dataclasses

    rng = np.random.default_rng(5)
    problem = random_problem(rng, 3, 8)
    plain, ones = solve_chain(problem), solve_chain(dataclasses.replace(problem, reach=np.ones(problem.n + 1)))
    assert plain.cuts == ones.cuts and plain.latency == pytest.approx(ones.latency, rel=1e-12)
    assert evaluate_cuts(problem, plain.cuts)["reach"] == [1.0, 1.0, 1.0]


def test_exit_discounts_everything_after_it() -> None:
    # 90% of requests leave after node 0: node 1, the link at cut 1 and the cloud's work weigh 0.1
    import dataclasses

    problem = ChainProblem(node_time=np.array([[0.001, 0.5], [0.001, 0.001]]), cut_bytes=np.array([1e3, 1e3, 10.0]),
                           legal=np.ones(3, bool), param_bytes=np.zeros(2), memory=np.full(2, np.inf),
                           rtt=np.array([0.05]), bandwidth=np.array([1e6]), reach=np.array([1.0, 0.1, 0.1]))
    solution = solve_chain(problem)
    assert solution.cuts == (1,)
    assert solution.latency == pytest.approx(0.001 + 0.1 * (0.05 + 8e3 / 1e6) + 0.1 * 0.001)
    assert evaluate_cuts(problem, (1,))["reach"] == [1.0, 0.1]
    assert evaluate_cuts(dataclasses.replace(problem, reach=None), (1,))["total"] == pytest.approx(0.06)


# -- compression at the cut (issue 4): wire bytes and coder time per cut ------------------------------


def _compressed(problem: ChainProblem, rng: np.random.Generator) -> ChainProblem:
    import dataclasses

    wire = problem.cut_bytes * rng.uniform(0.01, 1.0, size=problem.n + 1)
    extra = rng.uniform(0, 2e-3, size=(problem.tiers - 1, problem.n + 1))
    return dataclasses.replace(problem, wire_bytes=wire, link_extra_s=extra)


def test_default_compression_fields_keep_todays_costs() -> None:
    rng = np.random.default_rng(7)
    problem = random_problem(rng, 3, 6)
    for link in range(2):
        for cut in range(problem.n + 1):
            want = 0.0 if cut >= problem.n else problem.rtt[link] + 8.0 * problem.cut_bytes[cut] / problem.bandwidth[link]
            assert problem.link_cost(link, cut) == pytest.approx(want, rel=1e-15)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("tight", [False, True])
def test_compressed_problem_matches_brute_force(k: int, tight: bool) -> None:
    rng = np.random.default_rng(77 + k + 10 * tight)
    for _ in range(40):
        problem = _compressed(random_problem(rng, k, int(rng.integers(1, 8)), memory_tight=tight), rng)
        want, _ = brute_force(problem)
        if not np.isfinite(want):
            continue
        solution = solve_chain(problem)
        assert solution.latency == pytest.approx(want, rel=1e-12, abs=1e-15)
        ev = evaluate_cuts(problem, solution.cuts)
        assert ev["total"] == pytest.approx(want, rel=1e-12, abs=1e-15)
        # memory still uses the in-memory bytes, links the compressed ones plus the coder time
        for t in range(k - 1):
            c = solution.cuts[t]
            if c < problem.n:
                assert ev["links"][t] == pytest.approx(problem.rtt[t] + 8.0 * problem.wire_bytes[c] / problem.bandwidth[t]
                                                       + problem.link_extra_s[t, c])


def _with_boundaries(problem: ChainProblem, rng: np.random.Generator, reach: bool) -> ChainProblem:
    """Per-run entry and exit costs (session run, layout conversions) of the size of the node times, optional reach."""
    import dataclasses

    k, n = problem.tiers, problem.n
    extra = {"tier_entry_s": rng.uniform(0, 2e-3, size=(k, n + 1)), "tier_exit_s": rng.uniform(0, 2e-3, size=(k, n + 1))}
    if reach:
        extra["reach"] = np.concatenate([[1.0], np.sort(rng.uniform(0.2, 1.0, size=n))[::-1]])
    return dataclasses.replace(problem, **extra)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("reach", [False, True])
def test_entry_and_exit_costs_keep_the_dp_exact(k: int, reach: bool) -> None:
    """A tier that runs something pays entry[start] + exit[end]; the DP's optimum and best_at equal brute force."""
    rng = np.random.default_rng(50 + 10 * k + reach)
    checked = 0
    for _ in range(40):
        problem = _with_boundaries(random_problem(rng, k, int(rng.integers(1, 7)), memory_tight=True), rng, reach)
        want, _ = brute_force(problem)
        if not np.isfinite(want):
            continue
        solution = solve_chain(problem)
        assert solution.latency == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert evaluate_cuts(problem, solution.cuts)["total"] == pytest.approx(want, rel=1e-12, abs=1e-15)
        for b in range(k - 1):
            for c in range(problem.n + 1):
                plans = [cuts for cuts in itertools.combinations_with_replacement(range(problem.n + 1), k - 1)
                         if cuts[b] == c and evaluate_cuts(problem, cuts)["legal"] and evaluate_cuts(problem, cuts)["fits"]]
                best = min((evaluate_cuts(problem, p)["total"] for p in plans), default=np.inf)
                if np.isfinite(best):
                    assert solution.best_at[b, c] == pytest.approx(best, rel=1e-12, abs=1e-15)
        checked += 1
    assert checked >= 15


def test_an_empty_tier_pays_no_entry_or_exit() -> None:
    """The session run is paid only by tiers that run a node: one tier doing everything pays it once."""
    problem = ChainProblem(node_time=np.array([[1e-3, 1e-3], [1e-3, 1e-3]]), cut_bytes=np.zeros(3),
                           legal=np.ones(3, bool), param_bytes=np.zeros(2), memory=np.full(2, np.inf),
                           rtt=np.zeros(1), bandwidth=np.array([1e9]),
                           tier_entry_s=np.full((2, 3), 5e-3), tier_exit_s=np.full((2, 3), 1e-3))
    assert evaluate_cuts(problem, (2,))["total"] == pytest.approx(2e-3 + 6e-3)  # tier 1 runs nothing
    assert evaluate_cuts(problem, (1,))["total"] == pytest.approx(2e-3 + 12e-3)
    solution = solve_chain(problem)
    assert solution.cuts in ((0,), (2,)) and solution.latency == pytest.approx(8e-3)
