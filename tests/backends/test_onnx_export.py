"""Export once, cut by wire names: the stitched export, adapted partitions, the checks and the fallback."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from splitc.backends import onnx_export
from splitc.backends.onnx_export import _check_piece, export_partitions
from splitc.core.options import CompileOptions
from splitc.core.pass_manager import PassManager
from splitc.core.passes.cut import append_output_transform, prepend_input_transform, refresh_examples
from splitc.driver.pipeline import default_passes, prepare
from tests.models import Residual


class WithBatchNorm(nn.Module):
    """A residual net with BatchNorms (eval mode matters) whose cuts carry one or two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        y = self.b(torch.relu(self.a(x)))
        return self.head(torch.relu(x + y).mean(dim=(2, 3)))


def _compiled(tmp_path, model: nn.Module, split: tuple[str, ...], tiers=("jetson", "edge", "cloud-gpu")):
    torch.manual_seed(0)
    model = model.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics: a BatchNorm left in training mode would show
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    prepared = prepare(str(path), CompileOptions(targets=tiers, split=split), [(1, 3, 8, 8)])
    PassManager(default_passes()).run(prepared.traced.graph_module, prepared.ctx)
    return prepared.ctx


def _check_pieces(ctx, paths) -> None:
    """Each file runs in ONNX Runtime on its recorded inputs and matches its PyTorch partition."""
    for part, path in zip(ctx.partitions, paths):
        model = onnx.load(str(path))
        assert [i.name for i in model.graph.input] == part.inputs
        assert [o.name for o in model.graph.output] == part.outputs
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: x.numpy() for n, x in zip(part.inputs, part.example_inputs)})
        with torch.no_grad():
            want = part.graph_module(*[x.clone() for x in part.example_inputs])
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


def test_one_stitched_export_is_cut_into_the_partitions(tmp_path) -> None:
    ctx = _compiled(tmp_path, WithBatchNorm(), ("relu", "b"))  # the second cut carries x and b's output
    assert len(ctx.partitions) == 3 and len(ctx.partitions[2].inputs) == 2
    paths = [tmp_path / f"part{p.index}.onnx" for p in ctx.partitions]
    report = export_partitions(ctx.partitions, paths)
    assert report.method == "stitched" and report.reason == ""
    assert set(report.seconds) == {"export", "simplify", "extract", "save"}
    assert all(r.simplified and r.exporter == "torchscript" for r in report.partitions)
    _check_pieces(ctx, paths)
    # the export must leave every module in the mode it found it (BatchNorm in eval: the verifier runs them)
    assert not any(m.training for p in ctx.partitions for m in p.graph_module.modules())


class _Halve(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 0.5).to(torch.float16)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) * 2.0


def test_partitions_adapted_after_the_cut_still_export_in_one_piece(tmp_path) -> None:
    """An encoder appended to the sender and a decoder prepended to the receiver (as bottlenecks and wire
    quantization do): the wire tensor keeps its name and now carries float16."""
    ctx = _compiled(tmp_path, Residual(), ("relu_2",), tiers=("jetson", "cloud-gpu"))
    sender, receiver = ctx.partitions
    append_output_transform(sender, "relu_2", _Halve(), "wire_encode")
    prepend_input_transform(receiver, "relu_2", _Double(), "wire_decode")
    refresh_examples(ctx)
    assert receiver.example_inputs[0].dtype == torch.float16
    paths = [tmp_path / f"part{p.index}.onnx" for p in ctx.partitions]
    report = export_partitions(ctx.partitions, paths)
    assert report.method == "stitched"
    _check_pieces(ctx, paths)
    wire = onnx.load(str(paths[0])).graph.output[0]
    assert wire.name == "relu_2" and wire.type.tensor_type.elem_type == TensorProto.FLOAT16


def test_falls_back_to_one_export_per_partition_and_says_why(tmp_path, monkeypatch, caplog) -> None:
    ctx = _compiled(tmp_path, Residual(), ("relu_1",), tiers=("jetson", "cloud-gpu"))
    paths = [tmp_path / f"part{p.index}.onnx" for p in ctx.partitions]
    monkeypatch.setattr(onnx_export, "STITCH_MAX_PARAM_BYTES", 0)
    with caplog.at_level(logging.INFO, logger="splitc"):
        report = export_partitions(ctx.partitions, paths)
    assert report.method == "per-partition" and "2 GB" in report.reason
    assert "[export] per-partition export:" in caplog.text
    _check_pieces(ctx, paths)

    monkeypatch.setattr(onnx_export, "STITCH_MAX_PARAM_BYTES", 10**12)

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator in the stitched graph")

    monkeypatch.setattr(onnx_export, "_stitched_export", broken)
    report = export_partitions(ctx.partitions, paths)
    assert report.method == "per-partition" and "unsupported operator" in report.reason
    _check_pieces(ctx, paths)


def test_a_piece_that_reads_work_of_another_partition_is_refused() -> None:
    """What the checks catch: a node reading a value computed outside the piece (work merged across a cut)."""
    relu = helper.make_node("Relu", ["hidden"], ["y"], name="relu")
    graph = helper.make_graph([relu], "piece", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    piece = helper.make_model(graph)

    class Part:
        index, inputs, outputs = 1, ["x"], ["y"]

    assert "reads hidden, computed in another partition" in _check_piece(piece, Part())
    Part.inputs = ["z"]
    assert "expected ['z'] -> ['y']" in _check_piece(piece, Part())


def test_simplifying_without_the_large_weights_gives_onnxsims_graph(tmp_path) -> None:
    """onnxsim on the weightless graph (weights put back after) = onnxsim on the whole model, node for node."""
    import io
    import warnings

    import onnxsim

    from splitc.backends.onnx_export import _weightless_simplify

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64 * 8 * 8, 10)).eval()
    x = torch.randn(1, 3, 8, 8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    assert any(np.prod(t.dims) > 1024 for t in exported.graph.initializer)  # the case the shortcut is for
    full, ok = onnxsim.simplify(exported)
    fast = _weightless_simplify(exported)
    assert ok and fast is not None
    assert [(n.op_type, list(n.input), list(n.output)) for n in fast.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in full.graph.node]
    assert [i.name for i in fast.graph.input] == ["x"] and [o.name for o in fast.graph.output] == ["y"]
    got = ort.InferenceSession(fast.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
