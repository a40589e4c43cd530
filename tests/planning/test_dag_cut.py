"""DAG min cut: exact against brute force over every monotone placement; the reorder pass end to end."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch

from splitc.core.options import CompileOptions
from splitc.planning.dag_cut import is_monotone, max_flow_backend, placement_cost, solve_dag
from splitc.core.pass_manager import PassManager
from splitc.driver.pipeline import compile_model, default_passes, prepare
from splitc.core.graph import COMPUTE_OPS
from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
from splitc.core.passes.fold_constants import FoldConstantsPass
from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
from splitc.planning.plan import resolve_links
from splitc.core.passes.profile import ProfilePass
from splitc.planning.reorder_for_cut import (ReorderForCutPass, best_prefix_latency, build_dag_problem,
                                           reorder_nodes)
from tests.conftest import make_context
from tests.models import Chain, PooledBranches


def random_dag(rng: np.random.Generator, n: int) -> np.ndarray:
    """Edges u -> w (u < w) with a random density, so chains, trees and dense DAGs all occur."""
    density = rng.uniform(0.1, 0.6)
    pairs = [(u, w) for u in range(n) for w in range(u + 1, n) if rng.random() < density]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def all_monotone(n: int, k: int, edges: np.ndarray, fixed: dict[int, int], precedence: np.ndarray) -> np.ndarray:
    """Every placement in tiers^n that is monotone along edges and precedence and respects the pins."""
    every = np.array(list(itertools.product(range(k), repeat=n)), dtype=np.int64).reshape(-1, n)
    ok = np.ones(len(every), dtype=bool)
    for u, w in np.vstack([edges, precedence]):
        ok &= every[:, u] <= every[:, w]
    for v, t in fixed.items():
        ok &= every[:, v] == t
    return every[ok]


def random_problem(rng: np.random.Generator, k: int, n: int):
    edges = random_dag(rng, n)
    # node times and bytes over several orders of magnitude: fast and slow tiers, tiny and huge tensors
    node_time = rng.uniform(0, 1e-3, size=(k, n)) * 10.0 ** rng.uniform(-2, 1, size=(k, 1))
    out_bytes = np.floor(10.0 ** rng.uniform(0, 6, size=n))
    bandwidth = 10.0 ** rng.uniform(5, 9, size=k - 1)
    fixed = {0: 0} if rng.random() < 0.5 else {}
    precedence = np.zeros((0, 2), dtype=np.int64)
    if n >= 3 and rng.random() < 0.3:  # a pair tied to one tier, as a non-tensor value and its reader
        u, w = sorted(rng.choice(n, size=2, replace=False).tolist())
        precedence = np.array([(u, w), (w, u)])
    return node_time, edges, out_bytes, bandwidth, fixed, precedence


def _backends() -> list:
    """Both max-flow backends where PyMaxflow is installed; Dinic alone otherwise (said in the skip)."""
    bk = pytest.param("boykov-kolmogorov", marks=pytest.mark.skipif(
        max_flow_backend() != "boykov-kolmogorov", reason="PyMaxflow not installed (pip install pymaxflow)"))
    return ["scipy-dinic", bk]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("k", [2, 3])
def test_matches_brute_force(k: int, backend: str) -> None:
    rng = np.random.default_rng(100 + k)
    differs_from_prefix = 0
    for _ in range(150):
        n = int(rng.integers(1, 11 if k == 2 else 9))
        node_time, edges, out_bytes, bandwidth, fixed, precedence = random_problem(rng, k, n)
        placements = all_monotone(n, k, edges, fixed, precedence)
        costs = placement_cost(node_time, edges, out_bytes, bandwidth, placements)
        best = float(costs.min())
        solution = solve_dag(node_time, edges, out_bytes, bandwidth, fixed, precedence, backend=backend)
        assert is_monotone(solution.tier, np.vstack([edges, precedence]))
        assert all(solution.tier[v] == t for v, t in fixed.items())
        assert solution.cost == pytest.approx(placement_cost(node_time, edges, out_bytes, bandwidth, solution.tier))
        assert best - 1e-15 <= solution.cost <= best + solution.bound + 1e-15
        assert solution.bound <= 1e-6 * max(best, 1e-12) + 1e-15  # the rounding bound is tiny, not a loophole
        prefix = placements[np.all(np.diff(placements, axis=1) >= 0, axis=1)]  # prefixes of order 0..n-1
        differs_from_prefix += bool(placement_cost(node_time, edges, out_bytes, bandwidth, prefix).min() > best * (1 + 1e-9))
    assert differs_from_prefix > 0  # the random DAGs do exercise placements no prefix cut reaches


def test_multi_consumer_tensor_is_paid_once_per_link() -> None:
    # node 0 (1000 bytes) feeds 1, 2, 3; placing 0 on tier 0 and the rest on tier 2 ships it over both links once
    edges = [(0, 1), (0, 2), (0, 3)]
    out_bytes = np.array([1000.0, 1.0, 1.0, 1.0])
    bandwidth = np.array([8e3, 16e3])  # 1 s and 0.5 s per 1000 bytes
    node_time = np.array([[0.0, 5.0, 5.0, 5.0], [9.0, 5.0, 5.0, 5.0], [9.0, 0.0, 0.0, 0.0]])
    tier = np.array([0, 2, 2, 2])
    assert placement_cost(node_time, edges, out_bytes, bandwidth, tier) == pytest.approx(1.5)
    solution = solve_dag(node_time, edges, out_bytes, bandwidth, fixed={0: 0})
    assert solution.tier.tolist() == [0, 2, 2, 2]
    assert solution.cost == pytest.approx(1.5)
    # one consumer on tier 1, two on tier 2: link 0 once, link 1 once
    tier = np.array([0, 1, 2, 2])
    assert placement_cost(node_time, edges, out_bytes, bandwidth, tier) == pytest.approx(5.0 + 1.0 + 0.5)


@pytest.mark.parametrize("backend", _backends())
def test_rejects_contradictions_and_bad_input(backend: str) -> None:
    chain = [(i, i + 1) for i in range(5)]
    with pytest.raises(ValueError, match="contradict"):
        solve_dag(np.ones((3, 6)), chain, np.ones(6), np.ones(2), fixed={0: 2, 5: 0}, backend=backend)
    with pytest.raises(ValueError, match="not monotone"):
        placement_cost(np.ones((2, 6)), chain, np.ones(6), np.ones(1), np.array([1, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="bandwidth"):
        solve_dag(np.ones((3, 6)), chain, np.ones(6), np.ones(1))
    with pytest.raises(ValueError, match="non-negative"):
        solve_dag(-np.ones((2, 6)), chain, np.ones(6), np.ones(1))


@pytest.mark.parametrize("backend", _backends())
def test_one_tier_and_wide_dynamic_range(backend: str) -> None:
    one = solve_dag(np.array([[1.0, 2.0]]), [(0, 1)], np.ones(2), np.zeros(0))
    assert one.tier.tolist() == [0, 0] and one.cost == 3.0
    # 1 ns next to 1000 s: the second, rescaled solve still resolves the nanosecond decision
    node_time = np.array([[0.0, 2e-9, 1e3], [0.0, 1e-9, 0.0]])
    edges = [(0, 1), (0, 2)]
    solution = solve_dag(node_time, edges, np.zeros(3), np.array([1e9]), fixed={0: 0}, backend=backend)
    assert solution.tier.tolist() == [0, 1, 1] and solution.cost == pytest.approx(1e-9)


# --- the reorder pass on traced models ------------------------------------------------------------

def profiled(model: torch.nn.Module, shape, **options):
    gm = torch.fx.symbolic_trace(model)
    ctx = make_context([shape], **options)
    ProfilePass().run(gm, ctx)
    return gm, ctx


def compute_names(gm) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op in COMPUTE_OPS]


PI_CLOUD = dict(targets=("raspberry-pi-4", "cloud-gpu"), bandwidths=("20mbps",), rtts_ms=(1.0,))


def test_pass_reorders_branches_and_keeps_semantics() -> None:
    torch.manual_seed(0)
    model = PooledBranches().eval()
    gm, ctx = profiled(model, (1, 3, 64, 64), **PI_CLOUD)
    x = torch.randn(1, 3, 64, 64)
    want = model(x)
    links = resolve_links(ctx.tiers, ctx.options.bandwidths, ctx.options.rtts_ms)
    before = best_prefix_latency(gm, ctx.tiers, links)
    result = ReorderForCutPass().run(gm, ctx)
    assert result.modified, result.summary
    names = compute_names(gm)
    assert names.index("b_pool") < names.index("a1")  # both poolings before either heavy branch
    after = best_prefix_latency(gm, ctx.tiers, links)
    assert after < 0.8 * before
    assert f"{before * 1e3:.2f} ms -> {after * 1e3:.2f} ms" in result.summary
    torch.testing.assert_close(gm(x), want)


def test_prefix_cost_after_reorder_equals_min_cut() -> None:
    """With rtt 0 the chain DP over the reordered graph prices the min-cut placement exactly as the min cut did."""
    gm, ctx = profiled(PooledBranches().eval(), (1, 3, 64, 64), targets=("raspberry-pi-4", "cloud-gpu"),
                       bandwidths=("20mbps",), rtts_ms=(0.0,))
    links = resolve_links(ctx.tiers, ctx.options.bandwidths, ctx.options.rtts_ms)
    solution = build_dag_problem(gm, ctx.tiers).solve(np.array([link.bandwidth_bps for link in links]))
    assert best_prefix_latency(gm, ctx.tiers, links) > solution.cost * 1.1
    ReorderForCutPass().run(gm, ctx)
    assert best_prefix_latency(gm, ctx.tiers, links) == pytest.approx(solution.cost, rel=1e-9)


def test_guard_restores_order_when_rtt_makes_the_cut_lose() -> None:
    # jetson-nano -> cloud at 100 Mbps: shipping the pooled tensors beats staying local only without the 1 ms rtt
    gm, ctx = profiled(PooledBranches().eval(), (1, 3, 64, 64), targets=("jetson-nano", "cloud-gpu"),
                       bandwidths=("100mbps",), rtts_ms=(1.0,))
    original = compute_names(gm)
    result = ReorderForCutPass().run(gm, ctx)
    assert not result.modified and "gives no better prefix plan" in result.summary
    assert compute_names(gm) == original


@pytest.mark.parametrize("options, reason", [
    (dict(targets=("raspberry-pi-4",)), "one tier"),
    (dict(PI_CLOUD, split=("a_pool",)), "--split"),
    (dict(PI_CLOUD, objective="cost"), "objective 'cost'"),
    (dict(PI_CLOUD, workload="training"), "training"),
    (dict(PI_CLOUD, bandwidth_range="1mbps:100mbps"), "--bandwidth-range"),
])
def test_pass_is_a_no_op_when_it_must_be(options, reason) -> None:
    gm, ctx = profiled(PooledBranches().eval(), (1, 3, 64, 64), **options)
    original = compute_names(gm)
    result = ReorderForCutPass().run(gm, ctx)
    assert not result.modified and reason in result.summary
    assert compute_names(gm) == original


def test_chain_is_a_no_op() -> None:
    gm, ctx = profiled(Chain().eval(), (1, 3, 8, 8), **PI_CLOUD)
    result = ReorderForCutPass().run(gm, ctx)
    assert not result.modified and "chain" in result.summary


class _InPlaceFork(torch.nn.Module):
    """``y`` is read by the ``a`` branch, then changed in place by ``relu_``: the read must stay before it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.a = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        a = self.a(y)
        y.relu_()
        return a + y


def test_inplace_readers_keep_their_side() -> None:
    gm, ctx = profiled(_InPlaceFork().eval(), (1, 3, 8, 8), **PI_CLOUD)
    problem = build_dag_problem(gm, ctx.tiers)
    index = {n.name: i for i, n in enumerate(problem.nodes) if n is not None}
    assert (index["a"], index["relu_"]) in {tuple(p) for p in problem.precedence.tolist()}
    # a placement putting relu_ on tier 0 and its earlier reader on tier 1 is refused
    node_time = problem.node_time.copy()
    node_time[0, index["a"]] = node_time[1, index["relu_"]] = 1.0  # push 'a' up, 'relu_' down
    solution = solve_dag(node_time, problem.edges, problem.out_bytes, np.array([1e12]), problem.fixed,
                         problem.precedence)
    assert solution.tier[index["a"]] <= solution.tier[index["relu_"]]
    x = torch.randn(1, 3, 8, 8)
    want = gm(x)
    tiers = problem.compute_tiers(solution)
    reorder_nodes(gm, sorted((n for n in gm.graph.nodes if n.op in COMPUTE_OPS), key=lambda n: tiers[n]))
    torch.testing.assert_close(gm(x), want)


def googlenet() -> torch.nn.Module:
    """torchvision's GoogLeNet without aux heads and without its slow scipy-based weight init."""
    from torchvision.models import googlenet as factory

    torch.manual_seed(0)
    return factory(weights=None, aux_logits=False, init_weights=False).eval()


def test_googlenet_min_cut_never_loses_to_prefix_cuts() -> None:
    """Real branchy model (googlenet, 64x64): the min cut is <= every prefix plan, and after the reorder the
    chain DP reaches exactly its cost (rtt 0), across chains and bandwidths; counts how often they differ."""
    from splitc.targets.target import TargetRegistry

    prepared = prepare("tests.planning.test_dag_cut:googlenet", CompileOptions(targets=("jetson",)), [(1, 3, 64, 64)])
    gm = PassManager([EliminateDeadCodePass(), FoldConstantsPass(), ProfilePass(), FoldStaticShapesPass()]).run(
        prepared.traced.graph_module, prepared.ctx)
    original = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    registry = TargetRegistry.with_builtins()
    differ, cases = 0, 0
    for chain in (("raspberry-pi-4", "cloud-gpu"), ("jetson", "edge-cpu"), ("raspberry-pi-4", "edge-cpu", "cloud-gpu")):
        tiers = registry.resolve_chain(list(chain))
        problem = build_dag_problem(gm, tiers)
        for bw in ("5mbps", "50mbps", "500mbps"):
            links = resolve_links(tiers, (bw,), (0.0,))
            solution = problem.solve(np.array([link.bandwidth_bps for link in links]))
            reorder_nodes(gm, original)
            prefix = best_prefix_latency(gm, tiers, links)
            assert solution.cost <= prefix + solution.bound + 1e-12
            placed = problem.compute_tiers(solution)
            reorder_nodes(gm, sorted(original, key=lambda n: placed[n]))
            assert best_prefix_latency(gm, tiers, links) == pytest.approx(solution.cost, rel=1e-9)
            differ += prefix > solution.cost * (1 + 1e-9)
            cases += 1
    print(f"googlenet 64x64: the DAG optimum beats the prefix optimum in {differ} of {cases} cases")
    assert cases == 9


def test_compile_end_to_end_beats_every_prefix_plan(tmp_path, caplog) -> None:
    """2 tiers: the reordered bundle verifies in ONNX Runtime and predicts less than the best prefix plan of the
    traced order (the same pipeline without the reorder pass)."""
    options = CompileOptions(**PI_CLOUD)
    with caplog.at_level(logging.INFO, logger="splitc"):
        result = compile_model("tests.models:pooled_branches", options, tmp_path / "bundle",
                               input_shapes=[(1, 3, 64, 64)])
    assert "compute nodes reordered by tier of the DAG min cut" in caplog.text
    assert result.manifest["verification"]["passed"]
    dag_latency = result.prepared.ctx.plan_result.best.latency_s
    baseline = prepare("tests.models:pooled_branches", options, [(1, 3, 64, 64)])
    passes = [p for p in default_passes() if p.name in ("eliminate_dead_code", "fold_constants", "profile",
                                                        "fold_static_shapes", "candidates", "train_exits", "plan")]
    PassManager(passes).run(baseline.traced.graph_module, baseline.ctx)
    prefix_latency = baseline.ctx.plan_result.best.latency_s
    assert dag_latency < 0.8 * prefix_latency
    (transfer,) = result.manifest["transfers"]
    assert sorted(t["name"] for t in transfer["tensors"]) == ["a_pool", "b_pool"]  # both pooled maps, nothing else
