"""The cost model's kernels, layout conversions, per-run cost and measured nodes, on tiny traced models.

Graph structure and arithmetic only: nothing here is timed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from splitc.core.context import CompileContext
from splitc.core.loader import InputSpec, trace_model
from splitc.core.options import CompileOptions
from splitc.core.passes.profile import IN_BYTES, OUT_BYTES, PARAM_BYTES, ProfilePass
from splitc.errors import SplitcError
from splitc.targets.cost_model import (boundary_times, fusion_role, kernel_roles, measured_mask, node_times,
                                       subgraph_time)
from splitc.targets.target import MeasuredNode, ModelProfile, Target, TargetRegistry, load_targets_file, \
    write_targets_file


class Block(nn.Module):
    """conv -> BN -> relu -> conv -> (+ skip) -> relu -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 1, bias=False)
        self.fc = nn.Linear(16 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.conv2(y) + y)
        return self.fc(torch.flatten(z, 1))


def profiled(module: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    spec = [InputSpec("x", shape)]
    x = [torch.randn(*shape)]
    gm = trace_model(module.eval(), spec).graph_module
    ProfilePass().run(gm, CompileContext(CompileOptions(targets=()), [], spec, x))
    return gm


@pytest.fixture(scope="module")
def block() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    return profiled(Block(), (1, 16, 8, 8))


@pytest.fixture(scope="module")
def base() -> Target:
    return dataclasses.replace(TargetRegistry.with_builtins().resolve("edge-cpu"), fused_op_classes=frozenset(),
                               op_overhead_s=5e-6, memory_bandwidth=10e9)


def compute(gm):
    return [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]


def by_name(gm):
    return {n.name: n for n in gm.graph.nodes}


def test_roles_split_elementwise_into_act_and_binary(block) -> None:
    nodes = by_name(block)
    assert fusion_role(nodes["relu"]) == "act" and fusion_role(nodes["add"]) == "binary"
    assert fusion_role(nodes["conv1"]) == "conv" and fusion_role(nodes["fc"]) == "matmul"


def test_kernels_follow_the_declared_patterns_through_a_folded_batchnorm(block, base) -> None:
    target = dataclasses.replace(base, fused_patterns=(("conv", "act"), ("conv", "binary"), ("conv", "binary", "act")))
    roles = kernel_roles(compute(block), target)
    assert roles["bn1"] == ("conv",)              # folded: invisible, the conv's kernel goes on
    assert roles["relu"] == ("conv", "act")       # conv + BN + ReLU is one kernel
    assert roles["add"] == ("conv", "binary")     # conv2's output has one user: the add joins its kernel
    assert roles["relu_1"] == ("conv", "binary", "act")
    assert roles["fc"] == ("matmul",)
    # without patterns every node is its own kernel
    assert all(len(r) <= 1 for r in kernel_roles(compute(block), base).values())  # views: no kernel


def test_a_producer_with_two_users_ends_its_kernel(block, base) -> None:
    """relu (y) is read by conv2 and by the add: nothing after it may join its kernel."""
    target = dataclasses.replace(base, fused_patterns=(("act", "binary"),))
    roles = kernel_roles(compute(block), target)
    assert roles["add"] == ("binary",)  # act+binary is declared, but its act producer (relu) has two users


def test_a_fused_node_pays_only_its_flops(block, base) -> None:
    nodes = compute(block)
    fused = dataclasses.replace(base, fused_patterns=(("conv", "act"),))
    plain_t, fused_t = node_times(nodes, base), node_times(nodes, fused)
    i = [n.name for n in nodes].index("relu")
    relu = nodes[i]
    moved = relu.meta[IN_BYTES] + relu.meta[OUT_BYTES] + relu.meta[PARAM_BYTES]
    assert plain_t[i] == pytest.approx(max(relu.meta["splitc.flops"] / (base.peak_flops["fp32"]
                                                                        * base.efficiency["elementwise"]),
                                           moved / base.memory_bandwidth) + base.op_overhead_s)
    assert fused_t[i] == pytest.approx(relu.meta["splitc.flops"] / (base.peak_flops["fp32"] * base.efficiency["elementwise"]))
    others = [j for j in range(len(nodes)) if j != i]
    assert np.allclose(plain_t[others], fused_t[others])


def test_layout_conversions_at_the_edges_of_a_convolution_run(block, base) -> None:
    """Into the blocked layout before conv1 (reads the input), out of it before fc (reads a view of relu_1)."""
    nodes = compute(block)
    target = dataclasses.replace(base, layout_conversion=2.0)
    extra = node_times(nodes, target) - node_times(nodes, base)
    names = [n.name for n in nodes]
    per_byte = 2.0 / base.memory_bandwidth
    x_bytes = 16 * 8 * 8 * 4
    assert extra[names.index("conv1")] == pytest.approx(per_byte * x_bytes)
    assert extra[names.index("fc")] == pytest.approx(per_byte * x_bytes)  # flatten is a view: fc converts relu_1
    assert extra[names.index("conv2")] == 0 and extra[names.index("add")] == 0 and extra[names.index("flatten")] == 0


def test_a_stem_convolution_on_three_channels_reads_the_plain_layout(base) -> None:
    gm = profiled(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()), (1, 3, 16, 16))
    target = dataclasses.replace(base, layout_conversion=1.0)
    assert np.allclose(node_times(compute(gm), target), node_times(compute(gm), base))
    # the graph's output is still in the blocked layout: converted once at the end of the run
    out_bytes = 16 * 16 * 16 * 4
    assert subgraph_time(gm, target) == pytest.approx(subgraph_time(gm, base) + out_bytes / base.memory_bandwidth)


def test_boundary_times_charge_the_session_run_and_the_conversions_at_a_cut(block, base) -> None:
    nodes = compute(block)
    names = [n.name for n in nodes]
    target = dataclasses.replace(base, layout_conversion=1.0, run_overhead_s=40e-6)
    cut = names.index("conv2")  # cut before conv2: relu's output crosses (in the blocked layout, read by conv2)
    crossing = [("x",) if c == 0 else (names[c - 1],) for c in range(len(nodes))] + [("fc",)]
    crossing[cut] = ("relu",)
    entry, exit_ = boundary_times(nodes, crossing, target)
    size = 16 * 8 * 8 * 4 / base.memory_bandwidth
    assert entry[0] == pytest.approx(40e-6)                  # the model input is plain: only the run
    assert entry[cut] == pytest.approx(40e-6 + size)         # the receiver converts it back for conv2
    assert exit_[cut] == pytest.approx(size)                 # the sender converts it out before shipping
    assert exit_[len(nodes)] == 0                            # fc's output is plain
    plain_entry, plain_exit = boundary_times(nodes, crossing, dataclasses.replace(base, run_overhead_s=40e-6))
    assert np.allclose(plain_entry, 40e-6) and not plain_exit.any()


def test_measured_nodes_replace_predictions_only_where_name_op_and_bytes_match(block, base) -> None:
    nodes = compute(block)
    conv1, relu = by_name(block)["conv1"], by_name(block)["relu"]
    table = {"conv1": MeasuredNode(1.25e-3, "conv2d", int(conv1.meta[OUT_BYTES])),
             "relu": MeasuredNode(9e-3, "relu", int(relu.meta[OUT_BYTES]) + 4),   # another shape: ignored
             "fc": MeasuredNode(7e-3, "gelu", 16)}                                 # another op: ignored
    target = dataclasses.replace(base, model_profile=ModelProfile("block.pt", ((1, 16, 8, 8),), "cmd", 2e-3, table))
    times, predicted = node_times(nodes, target), node_times(nodes, base)
    mask = measured_mask(nodes, target)
    names = [n.name for n in nodes]
    assert mask.tolist() == [name == "conv1" for name in names]
    assert times[names.index("conv1")] == 1.25e-3
    assert np.allclose(times[~mask], predicted[~mask])


def test_new_target_keys_round_trip_through_yaml(tmp_path, base) -> None:
    target = dataclasses.replace(
        base, name="box", aliases=(), run_overhead_s=3.5e-5, fused_patterns=(("conv", "act"), ("binary", "norm")),
        layout_conversion=1.25,
        model_profile=ModelProfile("m.pt", ((1, 3, 8, 8),), "splitc profile --model m.pt", 1e-3,
                                   {"conv1": MeasuredNode(2e-4, "conv2d", 2048)}))
    path = tmp_path / "box.yaml"
    write_targets_file([target], path)
    back = load_targets_file(path)[0]
    assert (back.run_overhead_s, back.fused_patterns, back.layout_conversion) == \
        (3.5e-5, (("conv", "act"), ("binary", "norm")), 1.25)
    assert back.model_profile.nodes == {"conv1": MeasuredNode(2e-4, "conv2d", 2048)}
    assert back.model_profile.input_shapes == ((1, 3, 8, 8),) and back.model_profile.measured_s == 1e-3
    assert back.to_dict()["model_profile"]["nodes"] == 1  # the manifest echoes the count, not the table


@pytest.mark.parametrize("patch, message", [
    ({"fused_patterns": ["conv"]}, "needs two or more roles"),
    ({"fused_patterns": ["conv+relu"]}, "unknown fusion role(s) 'relu'"),
    ({"layout_conversion": -1}, "layout_conversion"),
    ({"model_profile": {"model": "m", "input_shapes": [[1, 3]], "measured_s": 1e-3, "nodes": {"a": [1e-4, "relu"]}}},
     "expected [seconds, op name, output bytes]"),
])
def test_bad_new_keys_are_one_line_errors(tmp_path, patch, message) -> None:
    spec = TargetRegistry.with_builtins().resolve("edge-cpu").to_spec()
    spec.update(name="bad", aliases=[], **patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SplitcError) as info:
        load_targets_file(path)
    assert message in info.value.message
