"""The chain planner is exact: compare with brute force over every prefix-cut plan."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from splitc.compiler.planner import ChainProblem, evaluate_cuts, solve_chain


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
