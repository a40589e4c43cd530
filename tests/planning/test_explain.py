"""Why this plan (splitc/planning/explain.py, issue 16.1 and 16.7): the best plan of each kind, the bandwidths
where the optimum changes, a forced split's gap -- each checked against brute force or a re-solve."""

from __future__ import annotations

import dataclasses
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from splitc.core.placement import evaluate_cuts
from splitc.planning.chain import solve_chain
from splitc.planning.explain import bandwidth_switches, explain_plan
from splitc.planning.report import format_explanation
from tests.cli import run_cli
from tests.planning.test_chain import random_problem


def _candidates(n: int):
    cuts = [SimpleNamespace(index=i, after=None if i == 0 else f"n{i - 1}") for i in range(n + 1)]
    return SimpleNamespace(cuts=cuts)


def _all_plans(problem):
    for cuts in itertools.combinations_with_replacement(range(problem.n + 1), problem.tiers - 1):
        ev = evaluate_cuts(problem, cuts)
        if ev["legal"] and ev["fits"]:
            yield cuts, ev["total"]


@pytest.mark.parametrize("k", [2, 3])
def test_kinds_match_brute_force(k: int) -> None:
    rng = np.random.default_rng(7 + k)
    checked = 0
    for _ in range(40):
        problem = random_problem(rng, k, int(rng.integers(2, 8)))
        try:
            solution = solve_chain(problem)
        except ValueError:
            continue
        tiers = [f"t{i}" for i in range(k)]
        e = explain_plan(problem, _candidates(problem.n), tiers, solution.cuts, forced=False,
                         bandwidth_bps=float(problem.bandwidth[0]), latency_objective=True, solution=solution)
        kinds = {entry["label"]: entry for entry in e["kinds"]}
        n = problem.n
        for t in range(k):  # everything on tier t: the raw input travels to it
            cuts = (0,) * t + (n,) * (k - 1 - t)
            assert kinds[f"all on t{t}"]["cuts"] == list(cuts)
            assert kinds[f"all on t{t}"]["runs_on"] == [f"t{t}"]
            assert kinds[f"all on t{t}"]["links_used"] == t
            ev = evaluate_cuts(problem, cuts)
            want = ev["total"] if ev["legal"] and ev["fits"] else None
            assert kinds[f"all on t{t}"]["latency_s"] == (None if want is None else pytest.approx(want))
        mids = [total for cuts, total in _all_plans(problem) if any(0 < c < n for c in cuts)]
        if mids:
            assert kinds["best mid cut"]["latency_s"] == pytest.approx(min(mids), rel=1e-12)
            assert len(kinds["best mid cut"]["runs_on"]) >= 2
        else:
            assert "best mid cut" not in kinds
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("k", [2, 3])
def test_bandwidth_switches_are_where_the_optimum_changes(k: int) -> None:
    """Just inside a switch point the chosen plan is still optimal; just beyond it, the named plan is."""
    rng = np.random.default_rng(100 + k)
    seen = {"below": 0, "above": 0}
    for _ in range(60):
        problem = random_problem(rng, k, int(rng.integers(2, 9)))
        problem = dataclasses.replace(problem, rtt=problem.rtt * 0.1)
        solution = solve_chain(problem)
        bw = float(problem.bandwidth[0])
        switches = bandwidth_switches(problem, _candidates(problem.n), [f"t{i}" for i in range(k)], solution,
                                      solution.cuts, bw)
        for s in switches:
            seen[s["direction"]] += 1
            edge = s["bandwidth_bps"]
            assert (edge < bw) if s["direction"] == "below" else (edge > bw)
            inside, beyond = (edge * 1.001, edge / 1.001) if s["direction"] == "below" else (edge / 1.001, edge * 1.001)
            for at, cuts in ((inside, solution.cuts), (beyond, tuple(s["plan"]["cuts"]))):
                varied = dataclasses.replace(problem, bandwidth=np.array([at, *problem.bandwidth[1:]]))
                assert evaluate_cuts(varied, cuts)["total"] == pytest.approx(solve_chain(varied).latency, rel=1e-9)
        directions = {s["direction"] for s in switches}
        if "above" not in directions:  # no faster link makes another plan optimal, up to 10 Tbps
            varied = dataclasses.replace(problem, bandwidth=np.array([1e13, *problem.bandwidth[1:]]))
            assert evaluate_cuts(varied, solution.cuts)["total"] == pytest.approx(solve_chain(varied).latency, rel=1e-6)
    assert seen["below"] >= 5 and seen["above"] >= 5


MODEL = ["tests.models:Residual", "--input-shape", "1,3,32,32"]


def test_plan_table_explains_a_one_partition_result(capsys) -> None:
    code, out, err = run_cli(capsys, "plan", *MODEL, "-t", "jetson,cloud-gpu")
    assert code == 0, err
    assert "chosen plan: all on jetson-orin-nano (no link used)" in out
    for row in ("all on jetson-orin-nano (device only)", "all on cloud-gpu-t4 (server only)", "best mid cut",
                "+ --transfer-dtype float16", "+ --transfer-dtype uint8", "+ --bottleneck 0.125"):
        assert row in out
    assert "what would change it (link 0 is 20 Mbps now)" in out
    code, out, _ = run_cli(capsys, "plan", *MODEL, "-t", "jetson,cloud-gpu", "--json")
    plan = json.loads(out)
    device = next(k for k in plan["explanation"]["kinds"] if k["kind"] == "device only")
    assert device["bytes_sent"] == 0 and device["links_used"] == 0
    # an all-on-device plan claims no bytes on the unused link
    assert plan["cuts"][0]["bytes"] == 0 and plan["cuts"][0]["tensors"] == []


def test_forced_split_prints_the_optimum_and_the_gap(capsys) -> None:
    code, out, err = run_cli(capsys, "plan", *MODEL, "-t", "jetson,cloud-gpu", "--split", "stem")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("forced split:"))
    assert "the optimum (all on jetson-orin-nano (no link used))" in line and "slower" in line
    assert "the optimum (cut none" not in err
    assert "the forced split is" in err  # the [plan] log line says it too
    code, out, _ = run_cli(capsys, "plan", *MODEL, "-t", "jetson,cloud-gpu", "--split", "stem", "--json")
    e = json.loads(out)["explanation"]
    gap = e["chosen"]["latency_s"] - e["optimum"]["latency_s"]
    assert gap > 0 and f"gap {gap * 1e3:.2f} ms" in "\n".join(format_explanation(json.loads(out)))
