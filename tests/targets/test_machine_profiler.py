"""``splitc profile``: a real (quick) profile of this machine, the fit, and bad input.

No assertion depends on how fast this machine is (CI machines are busy): the
timings are real, the checks are on validity, on the file loading back and
planning, and on the fit recovering known figures from cost-model timings.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from splitc.driver.cli import main
from splitc.errors import SplitcError
from splitc.core.op_classes import OP_CLASSES
from splitc.targets.machine_profiler import (Measurement, ProfileConfig, _traced, check_output_path, fit,
                                     machine_memory_bytes, microbenchmarks)
from splitc.targets.cost_model import subgraph_time
from splitc.targets.target import TargetRegistry
from tests.cli import run_cli
from tests.models import Residual


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    """One quick profile of this machine through the CLI (real ONNX Runtime timings)."""
    out = tmp_path_factory.mktemp("profile") / "my-box.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--name", "my-box", "-o", str(out), "--quick", "--threads", "1",
              "--measurements", str(out.with_suffix(".json"))])
    assert exit_info.value.code == 0
    return out


def test_quick_profile_writes_a_target_that_loads_and_resolves(profiled: Path) -> None:
    target = TargetRegistry.with_builtins([profiled]).resolve("MY-BOX")
    assert target.origin == str(profiled)
    assert (target.kind, target.backend, target.precisions) == ("edge", "onnxruntime", ("fp32",))
    assert target.price == {"model": "free"}
    assert target.memory_bytes == machine_memory_bytes()
    assert target.sources[0].startswith("measured by splitc profile on ")
    assert "splitc profile --name my-box" in target.notes and "op_overhead" in target.notes


def test_fitted_figures_are_finite_positive_and_efficiencies_in_unit_interval(profiled: Path) -> None:
    target = TargetRegistry.with_builtins([profiled]).resolve("my-box")
    for value in (target.peak_flops["fp32"], target.memory_bandwidth, target.op_overhead_s):
        assert math.isfinite(value) and value > 0
    assert set(target.efficiency) == set(OP_CLASSES) | {"conv_depthwise"}  # depthwise convs are measured apart
    assert all(0 < e <= 1 for e in target.efficiency.values())
    assert target.fused_op_classes == frozenset()  # fusion is declared per pattern now
    assert all(2 <= len(p) <= 3 for p in target.fused_patterns) and target.layout_conversion >= 0
    assert target.run_overhead_s > 0
    record = yaml.safe_load(profiled.with_suffix(".json").read_text())  # JSON is YAML
    assert {m["role"] for m in record["measurements"]} >= {"overhead", "bandwidth", "conv", "conv_depthwise", "matmul", "fusion",
                                                          "layout"}
    assert all(m["seconds"] > 0 and m["runs"] >= 3 for m in record["measurements"])


def test_profiled_target_plans_a_model(profiled: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = tmp_path / "residual.pt"
    torch.save(Residual().eval(), model)
    code, out, err = run_cli(capsys, "plan", str(model), "--input-shape", "1,3,8,8", "--target", "my-box,cloud-gpu",
                             "--targets-file", str(profiled))
    assert code == 0, err
    assert "my-box" in out and "chosen plan" in out


@pytest.mark.parametrize("backend, kernels", [("onnxruntime", False), ("onnxruntime", True), ("torch", False)])
def test_fit_recovers_the_figures_that_generated_the_timings(profiled: Path, backend: str, kernels: bool) -> None:
    """Timings computed by the cost model from a known target are fitted back: figures, fusions, layout conversions.

    ``kernels``: the generating target fuses conv+act, conv+binary(+act) and matmul+act and converts layouts
    (factor 1.5): the fit must find exactly those patterns and that factor from the timings alone; without
    them it must declare none (torch: the bandwidth comes from the slope over copy sizes).
    """
    truth = TargetRegistry.with_builtins([profiled]).resolve("my-box")
    patterns = (("conv", "act"), ("conv", "binary"), ("conv", "binary", "act"), ("matmul", "act")) if kernels else ()
    truth = dataclasses.replace(
        truth, backend=backend, peak_flops={"fp32": 80e9}, memory_bandwidth=25e9, op_overhead_s=3e-6,
        fused_op_classes=frozenset(), run_overhead_s=20e-6, fused_patterns=patterns,
        layout_conversion=1.5 if kernels else 0.0,
        efficiency={**truth.efficiency, "conv": 0.5, "conv_depthwise": 0.1, "matmul": 0.8, "attention": 1.0,
                    "norm": 0.05, "pool": 0.02, "elementwise": 1.0, "reduction": 0.03})
    measurements = []
    for bench in microbenchmarks(quick=False, device="cuda" if backend == "torch" else "cpu"):
        if bench.role == "dram":
            continue
        module, shapes = bench.build()
        gm, _ = _traced(module, shapes)
        nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
        seconds = subgraph_time(gm, truth)
        flops = sum(n.meta["splitc.flops"] for n in nodes)
        moved = sum(n.meta["splitc.in_bytes"] + n.meta["splitc.out_bytes"] + n.meta["splitc.param_bytes"] for n in nodes)
        measurements.append(Measurement(bench.name, bench.role, seconds, 5, 0.0, flops, moved, len(nodes), 0,
                                        bench.param, graph_nodes=nodes))
    fitted, target = fit(measurements, truth)
    assert fitted.run_overhead_s == pytest.approx(20e-6, rel=1e-3)
    assert target.run_overhead_s == fitted.run_overhead_s
    assert target.op_overhead_s == pytest.approx(3e-6, rel=0.05)  # the chains' memory time is taken off
    assert target.memory_bandwidth == pytest.approx(25e9, rel=0.05)
    # peak = best achieved rate: the fastest compute benchmark at efficiency 1 (attention here) reaches it
    assert target.peak_flops["fp32"] <= 80e9 * 1.01
    for op_class in ("conv", "matmul"):  # compute-bound classes: ratio to the attention class is preserved
        ratio = target.efficiency[op_class] / target.efficiency["attention"]
        assert ratio == pytest.approx(truth.efficiency[op_class], rel=0.1)
    assert set(target.fused_patterns) == set(patterns), fitted.fusion_evidence
    assert target.layout_conversion == pytest.approx(truth.layout_conversion, abs=0.15), fitted.layout_evidence
    errors = [abs(m.predicted / m.seconds - 1) for m in measurements if m.role != "overhead"]
    assert max(errors) < 0.1


def _node_seconds(node, target) -> float:
    from splitc.targets.cost_model import node_time

    return node_time(node, target)


@pytest.mark.parametrize("args, message", [
    (["--threads", "-1"], "--threads must be 0"),
    (["--name", "Bad Name"], "is not a valid target name"),
    (["--kind", "phone"], "is not a tier kind"),
    (["--watts", "30"], "--watts and --usd-per-kwh go together"),
    (["--uplink-bandwidth", "fast"], "invalid bandwidth"),
    (["--usable-memory-fraction", "1.5"], "must be in (0, 1]"),
])
def test_bad_flags_fail_in_one_line_before_measuring(args, message, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.yaml"
    base = {"--name": "box", "-o": str(out)}
    flags = [x for k, v in base.items() if k not in args for x in (k, v)]
    code, stdout, err = run_cli(capsys, "profile", *flags, *args)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert "[profile]" not in err and not out.exists()


def test_non_integer_threads_is_a_usage_error(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "profile", "--name", "box", "-o", str(tmp_path / "x.yaml"), "--threads", "two")
    assert code == 2 and "Traceback" not in err


def test_existing_output_needs_force(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.yaml"
    out.write_text("keep me")
    code, _, err = run_cli(capsys, "profile", "--name", "box", "-o", str(out))
    assert code == 2 and "already exists; pass --force" in err
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("where", ["missing-folder/x.yaml", "a-folder"])
def test_unwritable_output_fails_in_one_line(where: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-folder").mkdir()
    code, _, err = run_cli(capsys, "profile", "--name", "box", "-o", str(tmp_path / where), "--force")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_check_output_path_refuses_a_read_only_file_system() -> None:
    with pytest.raises(SplitcError, match="cannot write"):
        check_output_path("/proc/splitc-profile.yaml", force=True)


def test_config_rejects_zero_watts() -> None:
    with pytest.raises(SplitcError, match="--watts must be a positive number"):
        ProfileConfig(name="box", watts=0.0, usd_per_kwh=0.2).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
def test_device_cuda_without_a_gpu_fails_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu.yaml"
    code, _, err = run_cli(capsys, "profile", "--name", "gpu", "-o", str(out), "--device", "cuda")
    assert code == 2
    assert err.startswith("error: no CUDA device: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "[profile]" not in err and not out.exists()


def test_unknown_device_is_refused(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "profile", "--name", "box", "-o", str(tmp_path / "x.yaml"), "--device", "tpu")
    assert code == 2 and "--device 'tpu' is not known" in err and "cpu, cuda" in err


def test_torch_is_a_backend_and_cuda_benchmarks_differ_only_in_peak_and_copy_sizes() -> None:
    from splitc.targets.target import BACKENDS

    assert "torch" in BACKENDS
    cpu, cuda = microbenchmarks(quick=False), microbenchmarks(quick=False, device="cuda")
    same = lambda bs: [b.name for b in bs if b.role not in ("peak", "bandwidth")]  # noqa: E731
    assert same(cpu) == same(cuda)
    assert [b.name for b in cuda if b.role == "peak"] == ["gemm 4096^3"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_cuda_profile_writes_a_torch_target(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu.yaml"
    code, _, err = run_cli(capsys, "profile", "--name", "gpu", "-o", str(out), "--device", "cuda", "--quick",
                           "--kind", "cloud-vm")
    assert code == 0, err
    target = TargetRegistry.with_builtins([out]).resolve("gpu")
    assert (target.backend, target.precisions, target.kind) == ("torch", ("fp32",), "cloud-vm")
    assert target.memory_bytes == torch.cuda.get_device_properties(0).total_memory
    assert torch.cuda.get_device_name() in target.description and "fp16/bf16/int8 not measured" in target.notes
    for value in (target.peak_flops["fp32"], target.memory_bandwidth, target.op_overhead_s):
        assert math.isfinite(value) and value > 0
    assert all(0 < e <= 1 for e in target.efficiency.values())


def test_torch_eager_path_times_and_fits_on_this_cpu() -> None:
    """The --device cuda measuring and fitting code, run in eager torch on the CPU (no GPU here).

    Real timings of the traced GraphModules; only the synchronisation is absent on the CPU.
    """
    from splitc.targets.machine_profiler import _fit_bandwidth_slope, _measure_torch, time_torch

    seconds, runs, spread = time_torch(torch.nn.ReLU(), [torch.randn(64, 64)], min_runs=5, min_seconds=0.01)
    assert seconds > 0 and runs >= 5 and spread >= 0
    benches = [b for b in microbenchmarks(quick=True) if b.role in ("overhead", "bandwidth", "peak", "conv", "matmul")]
    measurements = [_measure_torch(b, quick=True, device="cpu") for b in benches]
    assert all(m.seconds > 0 and m.runs >= 10 and m.onnx_nodes == 0 and m.graph_nodes for m in measurements)
    assert {m.name: m.flops for m in measurements}["gemm 512^3"] == 2 * 512**3  # counted by the profile pass
    base = TargetRegistry.with_builtins().resolve("edge-cpu")
    fitted, target = fit(measurements, dataclasses.replace(base, backend="torch"))
    slope_bandwidth = _fit_bandwidth_slope([m for m in measurements if m.role == "bandwidth"], fitted.run_overhead_s)
    median_bandwidth = float(np.median([m.bytes_moved / max(m.seconds - fitted.run_overhead_s, 0.1 * m.seconds)
                                        for m in measurements if m.role == "bandwidth"]))
    assert target.memory_bandwidth == pytest.approx(slope_bandwidth or median_bandwidth)
    for value in (target.peak_flops["fp32"], target.memory_bandwidth, target.op_overhead_s):
        assert math.isfinite(value) and value > 0
    assert all(0 < e <= 1 for e in target.efficiency.values())
