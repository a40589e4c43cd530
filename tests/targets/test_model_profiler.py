"""``splitc profile --model``: this model's nodes measured by ONNX Runtime's profiler, mapped back to graph nodes.

Real ONNX Runtime sessions and profiles; no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from splitc.core.context import CompileContext
from splitc.core.loader import InputSpec, trace_model
from splitc.core.options import CompileOptions
from splitc.core.passes.profile import ProfilePass
from splitc.targets.model_profiler import _charge, _Kernel, kernel_attribution, measure_model, scoped_module
from splitc.targets.target import TargetRegistry
from tests.cli import run_cli
from tests.models import Residual


def _profiled(module, shape):
    spec = [InputSpec("x", shape)]
    x = [torch.randn(*shape)]
    gm = trace_model(module.eval(), spec).graph_module
    ProfilePass().run(gm, CompileContext(CompileOptions(targets=()), [], spec, x))
    return gm, x


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    return _profiled(Residual(), (1, 3, 16, 16))


def test_scoped_module_computes_the_same_and_names_every_onnx_node_after_its_graph_node(residual) -> None:
    gm, x = residual
    scoped = scoped_module(gm)
    torch.testing.assert_close(scoped(*x), gm(*x))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(scoped, tuple(x), buffer, input_names=["x"], opset_version=17, dynamo=False)
    names = {n.name for n in gm.graph.nodes}
    scoped_nodes = [n.name for n in onnx.load_from_string(buffer.getvalue()).graph.node if n.name.startswith("/")]
    assert scoped_nodes and all(name[1:].split("/")[0] in names for name in scoped_nodes)


def test_kernel_attribution_follows_the_graph_ort_ran(residual) -> None:
    """A fused kernel named after its output computes everything back to what it reads; reorders go to a neighbour."""
    gm, _ = residual
    kernels = [
        _Kernel("ReorderInput", "ReorderInput", ["x"], ["reorder_0"]),
        _Kernel("/relu/Relu_output_0_nchwc", "Conv", ["reorder_0", "w0"], ["/relu/Relu_output_0_nchwc"]),   # stem+relu
        _Kernel("/relu_1/Relu_output_0_nchwc", "Conv", ["/relu/Relu_output_0_nchwc"], ["/relu_1/Relu_output_0_nchwc"]),
        _Kernel("/relu_2/Relu_output_0_nchwc", "Conv", ["/relu_1/Relu_output_0_nchwc", "/relu/Relu_output_0_nchwc"],
                ["/relu_2/Relu_output_0_nchwc"]),                                                           # b + add + relu
        _Kernel("ReorderOutput", "ReorderOutput", ["/relu_2/Relu_output_0_nchwc"], ["/relu_2/Relu_output_0"]),
        _Kernel("/mean/ReduceMean", "ReduceMean", ["/relu_2/Relu_output_0"], ["/mean/ReduceMean_output_0"]),
        _Kernel("/head/Gemm", "Gemm", ["/mean/ReduceMean_output_0"], ["out"]),
    ]
    members = kernel_attribution(gm, kernels)
    assert sorted(members["/relu/Relu_output_0_nchwc"]) == ["relu", "stem"]
    assert sorted(members["/relu_1/Relu_output_0_nchwc"]) == ["a", "relu_1"]
    assert sorted(members["/relu_2/Relu_output_0_nchwc"]) == ["add", "b", "relu_2"]
    assert members["ReorderInput"] == [] and members["ReorderOutput"] == []
    charged = _charge(kernels, members)
    assert charged["ReorderInput"] == "/relu/Relu_output_0_nchwc"     # into the blocked layout: the conv that needs it
    assert charged["ReorderOutput"] == "/relu_2/Relu_output_0_nchwc"  # out of it: the kernel that produced it
    claimed = [m for ms in members.values() for m in ms]
    assert len(claimed) == len(set(claimed))  # every node in at most one kernel


def test_measure_model_times_every_node_and_sums_to_the_measured_run(residual) -> None:
    gm, x = residual
    target = TargetRegistry.with_builtins().resolve("edge-cpu")
    profile = measure_model(gm, x, ["x"], target, threads=1, model="residual", input_shapes=[(1, 3, 16, 16)],
                            quick=True)
    compute = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    assert set(profile.nodes) == {n.name for n in compute}
    seconds = np.array([profile.nodes[n.name].seconds for n in compute])
    assert (seconds >= 0).all() and seconds.sum() > 0
    assert seconds.sum() == pytest.approx(profile.measured_s - target.run_overhead_s, rel=1e-6)
    convs = [n.name for n in compute if n.meta["splitc.op_class"] == "conv"]
    assert all(profile.nodes[c].seconds > 0 for c in convs)  # every convolution ran in some kernel
    assert profile.nodes["stem"].op == "conv2d" and profile.nodes["stem"].out_bytes == 8 * 16 * 16 * 4


def test_profile_model_cli_then_plan_says_the_figures_are_measured(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = tmp_path / "residual.pt"
    torch.save(Residual().eval(), model)
    out = tmp_path / "box.yaml"
    code, _, err = run_cli(capsys, "profile", "--name", "box", "-o", str(out), "--quick", "--threads", "1",
                           "--model", str(model), "--input-shape", "1,3,16,16")
    assert code == 0, err
    target = TargetRegistry.with_builtins([out]).resolve("box")
    assert target.model_profile is not None and target.model_profile.input_shapes == ((1, 3, 16, 16),)
    assert "--model" in target.model_profile.command
    code, stdout, err = run_cli(capsys, "plan", str(model), "--input-shape", "1,3,16,16", "--target", "box,cloud-gpu",
                                "--targets-file", str(out), "--split", "relu_2")
    assert code == 0, err
    line = next(line for line in stdout.splitlines() if line.startswith("figures: "))
    assert "box compute measured for" in line and "cloud-gpu-t4 compute predicted by the cost model" in line
    measured, total = (int(v) for v in line.split("measured for ")[1].split(" nodes")[0].split(" of "))
    assert measured == total > 0
    # another model of other shapes: nothing matches, everything predicted
    code, stdout, err = run_cli(capsys, "plan", str(model), "--input-shape", "1,3,32,32", "--target", "box,cloud-gpu",
                                "--targets-file", str(out), "--split", "relu_2")
    assert code == 0, err
    assert "box compute predicted by the cost model" in stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.pt"], "does not exist"),
    (["--input-shape", "1,3,8,8"], "give --model MODEL too"),
])
def test_bad_model_flags_fail_in_one_line_before_timing(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "x.yaml"
    code, _, err = run_cli(capsys, "profile", "--name", "box", "-o", str(out), "--quick", *args)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert "[profile] microbenchmarks" not in err and not out.exists()
