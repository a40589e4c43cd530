"""`splitc plan` / `compile` with cost, weights, SLO, Pareto front, bandwidth variants and training (issue 6).

A small ResNet-18 (64x64 input: real conv trade-offs, fast to profile) on a Raspberry Pi
in front of a c6i VM: the cloud is much faster, the device is free.
"""

from __future__ import annotations

import json

import pytest

from splitc.driver.manifest import validate_manifest
from splitc.runtime.runner import load_manifest, select_variant
from splitc.planning.pricing import plan_cost
from splitc.targets.target import TargetRegistry
from tests.cli import run_cli

MODEL = ["torchvision.models:resnet18", "--input-shape", "1,3,64,64"]
TIERS = ["-t", "pi,c6i-large", "--rtt-ms", "5"]
CHAIN = [*TIERS, "--bandwidth", "200mbps"]


def plan_json(capsys, *extra: str, chain=CHAIN) -> dict:
    code, out, err = run_cli(capsys, "plan", *MODEL, *chain, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_cost_objective_trades_latency_for_money(capsys):
    fast = plan_json(capsys)
    cheap = plan_json(capsys, "--objective", "cost")
    assert fast["cost"]["usd_per_request"] > 0  # the latency optimum uses the VM
    assert cheap["cost"]["usd_per_request"] == 0  # the free device runs everything
    assert cheap["predicted"]["latency_s"] > fast["predicted"]["latency_s"]
    # both are on the Pareto front, which is sorted by latency and has falling cost
    front = fast["pareto"]
    assert [p["predicted"]["latency_s"] for p in front] == sorted(p["predicted"]["latency_s"] for p in front)
    costs = [p["cost"]["usd_per_request"] for p in front]
    assert costs == sorted(costs, reverse=True) and len(front) >= 2
    # a weighted objective lands on the front, between the two extremes
    mixed = plan_json(capsys, "--weights", "latency=1,cost=1")
    cuts = [[c["index"] for c in p["cuts"]] for p in front]
    assert [c["index"] for c in mixed["cuts"]] in cuts
    assert fast["predicted"]["latency_s"] <= mixed["predicted"]["latency_s"] <= cheap["predicted"]["latency_s"]


def test_plan_cost_matches_the_price_model_tier_by_tier(capsys):
    result = plan_json(capsys, "--rps", "3")
    tiers = TargetRegistry.with_builtins().resolve_chain(["pi", "c6i-large"])
    pred = result["predicted"]
    expected = plan_cost(tiers, pred["compute_s"], None, 3.0, pred["memory_bytes"])
    assert result["cost"]["usd_per_request"] == pytest.approx(expected.usd_per_request, rel=1e-9)
    # one c6i.large ($0.085/h) serving 3 requests/s: 0.085 / 3600 / 3 dollars per request
    assert expected.usd_per_request == pytest.approx(0.085 / 3600 / 3, rel=1e-9)
    assert result["objective_settings"]["indifference"][0]["vm"] == "c6i-large"


def test_slo_and_the_report_folder(capsys, tmp_path):
    fast = plan_json(capsys)
    slo = fast["predicted"]["p50_s"] * 1e3 * 1.01
    within = plan_json(capsys, "--objective", "cost", "--slo-ms", f"{slo:.6f}")
    assert within["predicted"]["p50_s"] * 1e3 <= slo
    code, _, err = run_cli(capsys, "plan", *MODEL, *CHAIN, "--slo-ms", "0.001", "-q")
    assert code == 2 and err.count("\n") == 1 and "best reachable predicted p50" in err
    code, out, err = run_cli(capsys, "plan", *MODEL, *CHAIN, "--report", str(tmp_path / "rep"), "-q")
    assert code == 0, err
    assert "Pareto front" in out and "cost:" in out
    for name in ("plan.md", "plan.json", "pareto.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert (tmp_path / "rep" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bandwidth_variants_agree_with_plans_at_fixed_bandwidths(capsys):
    result = plan_json(capsys, "--bandwidth-range", "1mbps:1gbps")
    variants = result["variants"]
    assert len(variants) >= 2
    assert variants[0]["range_bps"][0] == pytest.approx(1e6) and variants[-1]["range_bps"][1] == pytest.approx(1e9)
    for a, b in zip(variants, variants[1:]):  # contiguous ranges, a different plan on each side of a switch
        assert a["range_bps"][1] == pytest.approx(b["range_bps"][0])
        assert a["plan"]["cuts"] != b["plan"]["cuts"]
    for v in variants:  # an independent plan at the variant's bandwidth chooses the same cuts
        bw = v["plan"]["evaluated_at_bps"]
        fixed = plan_json(capsys, "--bandwidth", f"{bw:.9g}bps", chain=TIERS)
        assert [c["index"] for c in fixed["cuts"]] == [c["index"] for c in v["plan"]["cuts"]]


def test_training_workload_triples_compute_and_doubles_the_wire(capsys):
    split = ["--split", "layer1_0_relu_1"]
    inference = plan_json(capsys, *split)
    training = plan_json(capsys, *split, "--workload", "training")
    for a, b in zip(inference["predicted"]["compute_s"], training["predicted"]["compute_s"]):
        assert b == pytest.approx(3 * a)
    sent = inference["cuts"][0]["bytes"]
    assert inference["predicted"]["transfer_s"][0] == pytest.approx(0.005 + 8 * sent / 200e6)
    assert training["predicted"]["transfer_s"][0] == pytest.approx(0.005 + 2 * 8 * sent / 200e6)
    assert training["objective_settings"]["workload"] == "training"


@pytest.mark.parametrize("args, message", [
    (["--rps", "0"], "--rps must be a positive request rate"),
    (["--rps", "nan"], "--rps must be a positive request rate"),
    (["--weights", "speed=1"], "known name"),
    (["--weights", "latency=-2"], ">= 0"),
    (["--objective", "cost", "--weights", "latency=1"], "--weights was given with --objective cost"),
    (["--slo-ms", "-5"], "--slo-ms must be a positive"),
    (["--max-dcor", "1.5"], "--max-dcor must be in [0, 1]"),
    (["--bandwidth-range", "10mbps"], "is not LOW:HIGH"),
    (["--bandwidth-range", "10mbps:1mbps"], "0 < LOW < HIGH"),
    (["--workload", "training", "--exits", "auto"], "no early exits"),
    (["--slo-quantile", "p90", "--slo-ms", "100"], "--slo-quantile must be one of p50, p99, got 'p90'"),
])
def test_bad_planner_flags_give_one_line(capsys, args, message):
    code, out, err = run_cli(capsys, "plan", *MODEL, *CHAIN, *args, "-q")
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and message in err, err


def test_compile_refuses_training_workload(tmp_path):
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model
    from splitc.errors import SplitcError

    with pytest.raises(SplitcError, match="plan the split-learning step"):
        compile_model("tests.models:Residual", CompileOptions(targets=("pi", "edge"), workload="training"),
                      tmp_path / "b", input_shapes=[(1, 3, 8, 8)])
    assert not (tmp_path / "b").exists()


def test_compile_emits_one_verified_bundle_per_bandwidth_variant(capsys, tmp_path):
    out = tmp_path / "bundle"
    code, _, err = run_cli(capsys, "compile", *MODEL, *CHAIN, "--bandwidth-range", "1mbps:1gbps", "-o", str(out), "-q")
    assert code == 0, err
    manifest = load_manifest(out)
    variants = manifest["plan"]["variants"]
    assert len(variants) >= 2 and all(v.get("bundle") for v in variants)
    assert sum(v["bundle"] == "." for v in variants) == 1  # the main bundle is one of them
    for v in variants:
        folder = (out / v["bundle"]).resolve()
        sub = load_manifest(folder)
        validate_manifest(sub)
        assert sub["verification"]["passed"]
        assert [c["index"] for c in sub["plan"]["cuts"]] == [c["index"] for c in v["plan"]["cuts"]]
        low, high = v["range_bps"]
        assert select_variant(out, (low * high) ** 0.5) == folder
    assert select_variant(out, 1.0) == (out / variants[0]["bundle"]).resolve()  # below the range: nearest end
