"""Exits and cuts planned jointly, for every objective and constraint, checked by brute force on small problems.

Every test builds a small chain problem and a synthetic set of trained exits (confidences, predictions and labels
per calibration sample), lets :func:`choose_exits` search the thresholds with the real planner's scorer
(``ChainPlanner.scorer``, the one the plan pass hands the exits), and compares with a brute force written from
first principles: every threshold combination x every plan, each calibration sample walked node by node to where it
leaves (an exit anywhere in a tier, or the end), its latency, the tiers it enters and the links it crosses; the mean,
p50/p99 and per-tier busy time and cost computed from those samples directly.
"""

from __future__ import annotations

import dataclasses
import itertools
import types

import numpy as np
import pytest

from splitc.core.accuracy import AccuracyTarget, binomial_margin
from splitc.core.placement import ChainProblem
from splitc.exits.heads import ExitCandidate, ExitHead, ExitSetup, MARGIN_SE, choose_exits
from splitc.planning.objectives import evaluate_plans, stops_of
from splitc.planning.plan import ChainPlanner
from splitc.planning.pricing import tier_plan_cost
from tests.conftest import make_context

GRID = 5
SAMPLES = 80
CHOSEN: dict[str, list] = {}  # what the joint choice kept, per case (the last test checks it is not trivial)


def _setup(rng, positions: list[int], k: int, classes: int = 4, target: float = 0.9) -> ExitSetup:
    truth = rng.integers(0, classes, SAMPLES)
    full = np.where(rng.random(SAMPLES) < 0.95, truth, (truth + 1) % classes)
    candidates = []
    for p in positions:
        confidence = rng.random(SAMPLES)
        right = rng.random(SAMPLES) < 0.5 + 0.5 * confidence  # confident exits are right more often
        candidates.append(ExitCandidate(f"n{p}", p, p / 10, ExitHead((1, 4), classes), head_flops=100,
                                        head_time=rng.random(k) * 2e-4, confidence=confidence,
                                        prediction=np.where(right, truth, (truth + 1) % classes)))
    index = np.arange(SAMPLES)
    return ExitSetup(candidates, "labels", AccuracyTarget(target), {"train": index[:0], "calibrate": index,
                                                                      "test": index}, truth, full, classes)


def _problem(rng, k: int, n: int = 8, memory=None) -> ChainProblem:
    """Later tiers faster (x3 each), links of a few ms: offloading, exits before a link and exits inside a tier
    all compete."""
    speed = 3.0 ** -np.arange(k)[:, None]
    return ChainProblem(node_time=(rng.random((k, n)) * 2e-3 + 1e-4) * speed,
                        cut_bytes=rng.integers(1_000, 60_000, n + 1) * 1.0, legal=rng.random(n + 1) < 0.8,
                        param_bytes=rng.random(n) * 4e5,
                        memory=np.full(k, np.inf) if memory is None else np.asarray(memory, float),
                        rtt=rng.random(k - 1) * 3e-3, bandwidth=np.full(k - 1, 100e6))


def _brute_force(problem, setup, tiers, rps, dcor=None):
    """Every (threshold combination, plan) with its metrics, from the samples themselves."""
    n, k = problem.n, problem.tiers
    cal = setup.splits["calibrate"]
    grids = [np.unique(np.concatenate([[np.inf], np.quantile(c.confidence[cal], np.linspace(0, 1, GRID))]))
             for c in setup.candidates]
    full_acc = float(np.mean(setup.full_prediction == setup.truth))
    need = setup.target.required(full_acc)
    margin = MARGIN_SE * binomial_margin(need, len(cal))
    plans = [p for p in itertools.product(range(n + 1), repeat=k - 1) if list(p) == sorted(p)
             and all(problem.legal[c] or c == n for c in p)]
    rows = []
    for combo in itertools.product(*grids):
        exit_at = np.full(SAMPLES, -1)
        for e, c in enumerate(setup.candidates):
            exit_at[(exit_at < 0) & (c.confidence >= combo[e])] = e
        pred = setup.full_prediction.copy()
        for e, c in enumerate(setup.candidates):
            pred[exit_at == e] = c.prediction[exit_at == e]
        if np.mean(pred == setup.truth) < need + margin - 1e-12:
            continue
        active = [e for e in range(len(combo)) if np.isfinite(combo[e]) and np.any(exit_at == e)]
        node_time = problem.node_time.copy()
        for e in active:
            node_time[:, setup.candidates[e].position] += setup.candidates[e].head_time
        stop = np.array([setup.candidates[e].position + 1 if e >= 0 and e in active else n for e in exit_at])
        for plan in plans:
            bounds = (0, *plan, n)
            latency = np.zeros(SAMPLES)
            busy, reach, memory = [], [], []
            for t in range(k):
                s, end = bounds[t], bounds[t + 1]
                spent = np.array([node_time[t, s:min(end, j)].sum() if j > s else 0.0 for j in stop])
                latency += spent
                entering = stop > s
                reach.append(entering.mean())
                busy.append(spent[entering].mean() if entering.any() else node_time[t, s:end].sum())
                memory.append(problem.memory_of(s, end))
                if t < k - 1 and end < n:
                    link = problem.rtt[t] + 8 * problem.cut_bytes[end] / problem.bandwidth[t]
                    latency += np.where(stop > end, link, 0.0)
            ordered = np.sort(latency)
            quantile = lambda q: ordered[int(np.ceil(q * SAMPLES - 1e-9)) - 1]  # noqa: E731
            cost = sum(float(np.sum(tier_plan_cost(tiers[t], busy[t], reach[t], rps, memory[t], infeasible="inf")))
                       if end > s else 0.0 for t, (s, end) in enumerate(zip(bounds, bounds[1:])))
            leak = max([dcor[c] for c in plan if c < n], default=0.0) if dcor is not None else None
            rows.append({"thresholds": combo, "plan": plan, "latency": latency.mean(), "p50": quantile(0.5),
                         "p99": quantile(0.99), "usd": float(cost), "dcor": leak,
                         "fits": all(m <= problem.memory[t] for t, m in enumerate(memory)) and np.isfinite(cost)})
    return rows


def _chosen_row(rows, setup, assessment):
    thresholds = [np.inf] * len(setup.candidates)
    for c in setup.chosen:
        thresholds[setup.candidates.index(c.candidate)] = c.threshold
    matches = [r for r in rows if list(r["thresholds"]) == thresholds and r["plan"] == assessment.cuts]
    assert matches, (thresholds, assessment.cuts)
    return matches[0]


CASES = {
    # name: (targets, options, objective column, constraint(row) -> bool)
    "latency": (("jetson", "cloud-gpu", "cloud-gpu-a100"), {}, "latency", None),
    "cost (VM vs FaaS)": (("c6i-large", "aws-lambda"), {"objective": "cost", "rps": 40.0}, "usd", None),
    "cost, three tiers": (("jetson", "c6i-large", "aws-lambda"), {"objective": "cost", "rps": 40.0}, "usd", None),
    "latency, SLO on p99": (("jetson", "cloud-gpu"), {"slo_quantile": "p99"}, "latency", "p99"),
    "latency, SLO on p50": (("jetson", "cloud-gpu"), {}, "latency", "p50"),
    "latency, max dcor": (("jetson", "cloud-gpu", "cloud-gpu-a100"), {"max_dcor": 0.5}, "latency", "dcor"),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("case", list(CASES))
def test_joint_choice_equals_brute_force(case, seed):
    targets, options, column, constraint = CASES[case]
    rng = np.random.default_rng(seed)
    k = len(targets)
    problem = _problem(rng, k)
    positions = sorted(rng.choice(np.arange(1, problem.n - 1), size=2, replace=False).tolist())
    setup = _setup(rng, positions, k)
    dcor = rng.random(problem.n + 1) if constraint == "dcor" else None
    ctx = make_context([(1, 4)], targets=targets, **options)
    rows = None
    if constraint in ("p50", "p99"):  # an SLO that binds: the 30th percentile of what the plans reach
        rows = _brute_force(problem, setup, ctx.tiers, options.get("rps", 10.0))
        slo = float(np.quantile([r[constraint] for r in rows], 0.3))
        ctx = make_context([(1, 4)], targets=targets, slo_ms=slo * 1e3, **options)
    if dcor is not None:
        ctx.privacy = types.SimpleNamespace(dcor=dcor)
    assess = ChainPlanner().scorer(ctx, problem)
    _, assessment = choose_exits(problem, setup, assess, grid=GRID)
    rows = _brute_force(problem, setup, ctx.tiers, options.get("rps", 10.0), dcor)

    def ok(r) -> bool:
        if not r["fits"]:
            return False
        if constraint in ("p50", "p99"):
            return r[constraint] <= slo + 1e-12
        if constraint == "dcor":
            return r["dcor"] <= 0.5 + 1e-12
        return True

    feasible = [r for r in rows if ok(r)]
    assert feasible
    best = min(r[column] for r in feasible)
    chosen = _chosen_row(rows, setup, assessment)
    assert ok(chosen) and assessment.feasible
    assert chosen[column] == pytest.approx(best, rel=1e-9, abs=1e-15)
    CHOSEN.setdefault(case, []).append((len(setup.chosen), assessment.cuts))
    # the planner's own figures for the chosen setting are the brute force's
    values = assessment.values
    assert values["latency_s"] == pytest.approx(chosen["latency"], rel=1e-9)
    if "p99_s" in values:
        assert values["p99_s"] == pytest.approx(chosen["p99"], rel=1e-9)
        assert values["p50_s"] == pytest.approx(chosen["p50"], rel=1e-9)
    if column == "usd":
        assert values["usd_per_request"] == pytest.approx(chosen["usd"], rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_memory_limits_hold_for_the_joint_choice(seed):
    rng = np.random.default_rng(seed)
    problem = _problem(rng, 2)
    problem = dataclasses.replace(problem, memory=np.array([problem.memory_of(0, 4) * 1.01, np.inf]))
    setup = _setup(rng, [2, 5], 2)
    ctx = make_context([(1, 4)], targets=("jetson", "cloud-gpu"))
    _, assessment = choose_exits(problem, setup, ChainPlanner().scorer(ctx, problem), grid=GRID)
    rows = _brute_force(problem, setup, ctx.tiers, 10.0)
    best = min(r["latency"] for r in rows if r["fits"])
    chosen = _chosen_row(rows, setup, assessment)
    assert chosen["fits"] and chosen["latency"] == pytest.approx(best, rel=1e-9)
    assert problem.memory_of(0, assessment.cuts[0]) <= problem.memory[0]


def test_stops_and_distribution_for_exits_inside_a_tier():
    """An exit inside tier 0 ends requests before tier 0's link: its requests never pay the link."""
    n = 6
    reach = np.array([1, 1, 0.7, 0.7, 0.7, 0.4, 0.4])  # exits after node 1 (30 %) and node 4 (30 %)
    problem = ChainProblem(node_time=np.full((2, n), 1e-3), cut_bytes=np.zeros(n + 1), legal=np.ones(n + 1, bool),
                           param_bytes=np.zeros(n), memory=np.full(2, np.inf), rtt=np.array([10e-3]),
                           bandwidth=np.array([1e9]), reach=reach)
    positions, shares = stops_of(problem)
    assert positions.tolist() == [2, 5, 6] and shares.tolist() == pytest.approx([0.3, 0.3, 0.4])
    m = evaluate_plans(problem, [None] * 2, np.array([[4]]), rps=1.0, with_cost=False)
    # 30 % leave after 2 ms (tier 0), 30 % after 4 ms + 10 ms link + 1 ms, 40 % after 16 ms
    assert [d["latency_s"] for d in m.distribution(0)] == pytest.approx([2e-3, 15e-3, 16e-3])
    assert m.latency_s[0] == pytest.approx(0.3 * 2e-3 + 0.3 * 15e-3 + 0.4 * 16e-3)
    assert m.p50_s[0] == pytest.approx(15e-3) and m.p99_s[0] == pytest.approx(16e-3)


def test_the_brute_force_cases_are_not_trivial():
    """Across the cases above, exits are kept (inside tiers too) and plans differ: the comparison means something."""
    if len(CHOSEN) < len(CASES):
        pytest.skip("runs after test_joint_choice_equals_brute_force in the same session")
    kept = [count for runs in CHOSEN.values() for count, _ in runs]
    assert sum(1 for c in kept if c > 0) >= len(kept) // 2
    assert len({cuts for runs in CHOSEN.values() for _, cuts in runs}) >= 3


def test_splitc_plan_with_exits_and_the_cost_objective_on_a_hybrid_chain(capsys):
    """`splitc plan MODEL --calib ... --exits auto --objective cost --target c6i-large,aws-lambda` works: exits and
    cuts are chosen for cost, and the plan reports the cost, both quantiles and the latency distribution."""
    import json

    from tests.cli import run_cli
    from tests.digits_model import trained_digits

    model, calib = trained_digits()
    code, out, err = run_cli(capsys, "plan", str(model), "--calib", str(calib), "--exits", "auto", "--objective",
                             "cost", "--target", "c6i-large,aws-lambda", "--rps", "50", "--slo-ms", "50",
                             "--slo-quantile", "p99", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["objective"] == "cost" and plan["objective_settings"]["slo_applies_to"] == "p99"
    predicted = plan["predicted"]
    assert predicted["p99_s"] <= 0.05 and predicted["p50_s"] <= predicted["p99_s"]
    assert plan["cost"]["usd_per_million"] > 0
    spread = predicted["latency_distribution"]  # (this tiny model keeps no exit at this rate: FaaS bills 1 ms anyway)
    assert spread and sum(d["share"] for d in spread) == pytest.approx(1.0) and spread[-1]["after"] == "fc"
    code, out, _ = run_cli(capsys, "plan", str(model), "--calib", str(calib), "--exits", "auto", "--objective",
                           "cost", "--target", "c6i-large,aws-lambda", "--rps", "50")
    assert code == 0 and "cost:" in out and "p99" in out
