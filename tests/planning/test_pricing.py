"""Price models: hand-worked examples per model, vectorisation, VM steps, indifference point, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from splitc.errors import SplitcError
from splitc.planning.pricing import (
    DEFAULT_KEEP_ALIVE_S,
    cold_start,
    faas_vcpus,
    indifference_rps,
    plan_cost,
    plan_usd_per_request,
    tier_cold_start,
    tier_cost,
    tier_plan_cost,
    vm_instances,
)
from splitc.targets.target import Target, TargetRegistry

MIB = 2**20


@pytest.fixture(scope="module")
def reg() -> TargetRegistry:
    return TargetRegistry.with_builtins()


def _with_price(target: Target, **changes) -> Target:
    return dataclasses.replace(target, price={**target.price, **changes})


# --------------------------------------------------------------------------- one model at a time


def test_free_costs_nothing(reg):
    assert tier_cost(reg.resolve("jetson"), [0.0, 0.5, 3.0], 10.0).tolist() == [0.0, 0.0, 0.0]


def test_energy_by_hand(reg):
    edge = reg.resolve("edge-cpu")  # 80 W, $0.15/kWh
    # 80 W x 0.05 s = 4 J = 4 / 3.6e6 kWh = 1.1111e-6 kWh; x $0.15 = $1.6667e-7
    assert tier_cost(edge, 0.05, 10.0)[0] == pytest.approx(1.6666667e-7, rel=1e-6)
    # energy per request does not depend on the rate
    assert tier_cost(edge, 0.05, 0.001)[0] == pytest.approx(1.6666667e-7, rel=1e-6)


def test_vm_by_hand(reg):
    vm = reg.resolve("c6i-large")  # $0.085/h, default target utilisation 0.7
    # rate 10/s, busy 0.05 s -> load 0.5 instance-s/s, 0.5 / 0.7 = 0.71 -> 1 instance
    # $0.085 / 3600 s = $2.3611e-5 per second, / 10 req/s = $2.3611e-6 per request
    assert tier_cost(vm, 0.05, 10.0)[0] == pytest.approx(2.3611111e-6, rel=1e-6)
    # rate 30/s: load 1.5 / 0.7 = 2.14 -> 3 instances: 3 x 2.3611e-5 / 30 = $2.3611e-6
    assert tier_cost(vm, 0.05, 30.0)[0] == pytest.approx(2.3611111e-6, rel=1e-6)
    # one request an hour pays the whole instance-hour: $0.085 per request
    assert tier_cost(vm, 0.05, 1 / 3600)[0] == pytest.approx(0.085, rel=1e-9)


def test_vm_target_utilisation_is_a_price_field(reg):
    vm = _with_price(reg.resolve("c6i-large"), target_utilisation=0.5)
    # load 0.6 / 0.5 = 1.2 -> 2 instances: 2 x 0.085 / 3600 / 12 = $3.9352e-6
    assert tier_cost(vm, 0.05, 12.0)[0] == pytest.approx(2 * 0.085 / 3600 / 12, rel=1e-9)


def test_faas_by_hand(reg):
    faas = reg.resolve("lambda")  # 10240 MB = 10 GB, $1.66667e-5 / GB-s, $2e-7 / request, 1 ms billing
    # busy 0.2 s -> 10 GB x 0.2 s = 2 GB-s x 1.66667e-5 = 3.33334e-5, + 2e-7 = $3.35334e-5
    # (rate 1/s, keep-alive 300 s: exp(-300) cold share, negligible)
    assert tier_cost(faas, 0.2, 1.0)[0] == pytest.approx(3.35334e-5, rel=1e-6)
    # billing rounds up to 1 ms: 30.1 ms bills 31 ms -> 10 x 0.031 x 1.66667e-5 + 2e-7 = $5.36668e-6
    assert tier_cost(faas, 0.0301, 1.0)[0] == pytest.approx(5.36668e-6, rel=1e-6)
    # exactly 3 ms stays 3 ms despite float noise (0.003 / 0.001 = 2.9999999999999996)
    assert tier_cost(faas, 0.003, 1.0)[0] == pytest.approx(10 * 0.003 * 1.66667e-5 + 2e-7, rel=1e-9)


def test_faas_cold_starts_are_billed_and_reported(reg):
    faas = _with_price(reg.resolve("lambda"), keep_alive_s=300.0)
    rate = 1 / 300  # one request per keep-alive window: cold share exp(-1) = 0.3679
    # warm part: 10 x 0.2 x 1.66667e-5 + 2e-7 = 3.35334e-5
    # init billed: 0.3679 x 10 GB x 1.5 s x 1.66667e-5 = 9.1970e-5
    expected = 3.35334e-5 + math.exp(-1) * 10 * 1.5 * 1.66667e-5
    assert tier_cost(faas, 0.2, rate)[0] == pytest.approx(expected, rel=1e-6)
    part = plan_cost([faas], [0.2], [1.0], rate).tiers[0]
    assert part.cold_share == pytest.approx(math.exp(-1))
    assert part.cold_latency_s == pytest.approx(math.exp(-1) * 1.5)  # 0.5518 s expected added latency
    assert part.gb_seconds == pytest.approx(10 * (0.2 + math.exp(-1) * 1.5))


def test_cold_start_share_and_quantiles():
    cs = cold_start(np.array([1 / 300, 0.1]), keep_alive_s=300.0, cold_start_s=1.5)
    np.testing.assert_allclose(cs.share, [math.exp(-1), math.exp(-30)])
    np.testing.assert_allclose(cs.mean_added_s, [1.5 * math.exp(-1), 1.5 * math.exp(-30)])
    # 36.8% cold: the median is warm, the p90 / p99 are cold; at 0.1 req/s nothing shows
    assert cs.added_at_quantile(0.5).tolist() == [0.0, 0.0]
    assert cs.added_at_quantile(0.9).tolist() == [1.5, 0.0]
    # 60% cold (rate = -ln(0.6) / W): the median itself is a cold start
    assert cold_start(-math.log(0.6) / 300, 300.0, 1.5).added_at_quantile(0.5) == 1.5


def test_cold_share_falls_with_rate():
    share = cold_start(np.geomspace(1e-5, 1.0, 200), DEFAULT_KEEP_ALIVE_S, 1.5).share
    assert np.all(np.diff(share) < 0)  # strictly: exp(-300) is still a positive float
    assert share[0] > 0.99 and share[-1] < 1e-100


def test_tier_cold_start_uses_the_price_fields(reg):
    assert tier_cold_start(reg.resolve("c6i-large"), 1.0) is None  # VMs: long-running, no cold starts
    faas = _with_price(reg.resolve("lambda"), keep_alive_s=60.0)
    cs = tier_cold_start(faas, [1 / 60, 1 / 6])  # exp(-1), exp(-10)
    np.testing.assert_allclose(cs.share, [math.exp(-1), math.exp(-10)])
    assert cs.cold_start_s == 1.5
    bare = dataclasses.replace(faas, price={k: v for k, v in faas.price.items() if k != "keep_alive_s"})
    assert tier_cold_start(bare, 1 / DEFAULT_KEEP_ALIVE_S).share == pytest.approx(math.exp(-1))  # the default


def test_faas_vcpus_scale_with_memory(reg):
    faas = reg.resolve("lambda")  # 1769 MB per vCPU, at most 6
    assert faas_vcpus(faas, 1769) == pytest.approx(1.0)
    assert faas_vcpus(faas) == pytest.approx(10240 / 1769)  # 5.79 at the configured 10240 MB
    assert faas_vcpus(_with_price(faas, mb_per_vcpu=1000.0)) == 6  # capped


def test_tier_running_nothing_costs_nothing(reg):
    for name in ("c6i-large", "lambda", "edge-cpu"):
        assert tier_cost(reg.resolve(name), 0.0, 5.0)[0] == 0.0


# --------------------------------------------------------------------------- vectorised, steps


def test_vectorised_equals_scalar(reg):
    rng = np.random.default_rng(0)
    busy = rng.uniform(0.0, 0.3, 64)
    rates = rng.uniform(0.01, 40.0, 64)
    memory = rng.uniform(1, 4000, 64) * MIB
    for name in ("jetson", "edge-cpu", "c6i-large", "cloud-gpu", "lambda"):
        target = reg.resolve(name)
        many = tier_cost(target, busy, rates, memory)
        one_by_one = [tier_cost(target, b, r, m)[0] for b, r, m in zip(busy, rates, memory)]
        np.testing.assert_allclose(many, one_by_one, rtol=1e-12, err_msg=name)


def test_vm_instances_step_at_the_right_rate():
    # busy 0.1 s, u 0.7: one instance carries 7 req/s, two carry 14
    rates = np.array([0.001, 7.0, 7.01, 14.0, 14.01])
    assert vm_instances(0.1, rates, 0.7).tolist() == [1, 1, 2, 2, 3]
    assert vm_instances(0.0, rates, 0.7).tolist() == [0] * 5


def test_plan_cost_hybrid_by_hand(reg):
    tiers = [reg.resolve("jetson"), reg.resolve("c6i-large"), reg.resolve("lambda")]
    cost = plan_cost(tiers, compute_s=[0.02, 0.05, 0.2], reach=[1.0, 1.0, 0.1], rps=10.0,
                     memory_bytes=[1e6, 1e6, 500 * MIB])
    device, vm, faas = cost.tiers
    assert device.usd_per_request == 0 and device.model == "free"
    # VM: 1 instance ($2.3611e-5 per s) shared by 10 req/s -> $2.3611e-6 per request, 50% busy
    assert vm.instances == 1 and vm.utilisation == pytest.approx(0.5)
    assert vm.usd_per_request == pytest.approx(2.3611111e-6, rel=1e-6)
    # FaaS: reached by 1 req/s; $3.35334e-5 per call -> per plan request x 0.1 = $3.35334e-6
    assert faas.rate_rps == pytest.approx(1.0)
    assert faas.usd_per_tier_request == pytest.approx(3.35334e-5, rel=1e-6)
    assert faas.usd_per_request == pytest.approx(3.35334e-6, rel=1e-6)
    assert faas.instances == pytest.approx(0.2)  # Little's law: 1 req/s x 0.2 s
    # total 2.3611e-6 + 3.35334e-6 = 5.71445e-6 per request, $5.71 per million
    assert cost.usd_per_request == pytest.approx(5.714451e-6, rel=1e-6)
    assert cost.usd_per_million == pytest.approx(5.714451, rel=1e-6)
    json.dumps(cost.to_dict())


def test_plan_cost_vm_reached_by_nobody_still_costs_its_instance(reg):
    vm = reg.resolve("c6i-large")
    cost = plan_cost([reg.resolve("jetson"), vm], [0.01, 0.05], [1.0, 0.0], rps=10.0)
    assert cost.tiers[1].usd_per_tier_request is None
    assert cost.usd_per_request == pytest.approx(0.085 / 3600 / 10)  # one idle instance over 10 req/s


def test_tier_plan_cost_is_reach_weighted_and_defined_at_zero_reach(reg):
    faas, vm = reg.resolve("lambda"), reg.resolve("c6i-large")
    reach = np.array([0.0, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(tier_plan_cost(faas, 0.2, reach[1:], 10.0), reach[1:] * tier_cost(faas, 0.2, 10 * reach[1:]))
    assert tier_plan_cost(faas, 0.2, 0.0, 10.0)[0] == 0.0  # nobody calls the function: no bill
    assert tier_plan_cost(vm, 0.05, 0.0, 10.0)[0] == pytest.approx(0.085 / 3600 / 10)  # the idle instance


def test_plan_usd_per_request_matches_plan_cost(reg):
    tiers = [reg.resolve("edge-cpu"), reg.resolve("c6i-xlarge"), reg.resolve("lambda")]
    rng = np.random.default_rng(1)
    compute = rng.uniform(0, 0.2, (20, 3))
    reach = np.column_stack([np.ones(20), rng.uniform(0.2, 1, 20), rng.uniform(0, 0.2, 20)])
    memory = rng.uniform(1, 9000, (20, 3)) * MIB
    many = plan_usd_per_request(tiers, compute, reach, 25.0, memory)
    fits = memory[:, 2] <= 10240 * MIB * tiers[2].usable_memory_fraction
    assert np.all(np.isinf(many[~fits])) and fits.any() and (~fits).any()
    for p in np.flatnonzero(fits):
        assert many[p] == pytest.approx(plan_cost(tiers, compute[p], reach[p], 25.0, memory[p]).usd_per_request)


# --------------------------------------------------------------------------- indifference point


def test_indifference_point_both_sides(reg):
    vm, faas = reg.resolve("c6i-large"), reg.resolve("lambda")
    rate = indifference_rps(vm, 0.1, faas, 0.05)
    # FaaS per call: 10 GB x 0.05 s x 1.66667e-5 + 2e-7 = 8.53335e-6;
    # one instance: 0.085 / 3600 / r = 8.53335e-6 -> r = 2.3611e-5 / 8.53335e-6 = 2.7669 req/s
    assert rate == pytest.approx(0.085 / 3600 / 8.53335e-6, rel=1e-6)
    for below in (rate * 0.99, rate * 0.5, rate * 0.01):
        assert tier_cost(faas, 0.05, below)[0] < tier_cost(vm, 0.1, below)[0]
    for above in (rate * 1.01, rate * 2, 6.9):  # up to the first instance step at 7 req/s
        assert tier_cost(vm, 0.1, above)[0] < tier_cost(faas, 0.05, above)[0]


def test_indifference_with_cold_starts_solves_the_implicit_equation(reg):
    vm = reg.resolve("c6i-large")
    faas = _with_price(reg.resolve("lambda"), keep_alive_s=2.0)  # cold starts matter near the crossing
    rate = indifference_rps(vm, 0.1, faas, 0.05)
    assert cold_start(rate, 2.0, 1.5).share > 0.001
    assert tier_cost(vm, 0.1, rate)[0] == pytest.approx(tier_cost(faas, 0.05, rate)[0], rel=1e-8)
    # cold starts make FaaS dearer, so the VM wins at a lower rate than without them
    assert rate < indifference_rps(vm, 0.1, reg.resolve("lambda"), 0.05)


def test_no_indifference_when_faas_always_cheaper(reg):
    vm, faas = reg.resolve("c6i-large"), reg.resolve("lambda")
    # VM floor: 0.085 / 3600 x 1 s / 0.7 = $3.37e-5 per request; FaaS: 10 x 0.01 x 1.67e-5 + 2e-7 = $1.87e-6
    assert indifference_rps(vm, 1.0, faas, 0.01) == math.inf
    rates = np.geomspace(1e-3, 1e4, 300)
    assert np.all(tier_cost(faas, 0.01, rates) < tier_cost(vm, 1.0, rates))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rps", [0.0, -1.0, math.nan, math.inf])
def test_bad_rates_are_user_errors(reg, rps):
    with pytest.raises(SplitcError, match="positive finite"):
        tier_cost(reg.resolve("c6i-large"), 0.1, rps)
    with pytest.raises(SplitcError, match="--rps"):
        plan_cost([reg.resolve("c6i-large")], [0.1], None, rps)


def test_unknown_price_model(reg):
    odd = dataclasses.replace(reg.resolve("c6i-large"), price={"model": "barter"})
    with pytest.raises(SplitcError, match="unknown price model 'barter'"):
        tier_cost(odd, 0.1, 1.0)


def test_faas_memory_checks(reg):
    faas = reg.resolve("lambda")  # 10240 MB configured and maximum, 80% usable = 8 GiB
    with pytest.raises(SplitcError, match="more than a function can hold") as err:
        tier_cost(faas, 0.1, 1.0, memory_bytes=9 * 2**30)
    assert "VM tier" in err.value.hint
    small = _with_price(faas, memory_mb=1024.0)  # 819 MiB usable
    with pytest.raises(SplitcError, match="memory_mb 1024") as err:
        tier_cost(small, 0.1, 1.0, memory_bytes=900 * MIB)
    assert "10240" in err.value.hint
    masked = tier_cost(small, 0.1, 1.0, memory_bytes=[100 * MIB, 900 * MIB], infeasible="inf")
    assert np.isfinite(masked[0]) and np.isinf(masked[1])


def test_indifference_needs_the_right_models(reg):
    with pytest.raises(SplitcError, match="not 'vm'"):
        indifference_rps(reg.resolve("lambda"), 0.1, reg.resolve("lambda"), 0.1)


def test_reach_outside_unit_interval(reg):
    with pytest.raises(SplitcError, match="reach"):
        plan_cost([reg.resolve("c6i-large")], [0.1], [1.5], 10.0)
