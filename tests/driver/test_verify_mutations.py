"""Fault injection: a check is only as good as the faults it has been shown to catch.

Each mutation class changes a bundle the way a compiler bug would (one number, one name, one
file) and, for ``splitc verify``, updates every sha256 in the manifest so that only a numeric or
contract check can catch it. Each must make ``splitc verify`` fail, and compile-time
verification fail where the fault can be injected into a compile (by wrapping the exporter or
the quantizer). Real bundles of the digits CNN (real 8x8 digits, cut after ``relu_1``:
[1, 16, 8, 8] on the wire), real ONNX Runtime sessions.

The exit mutation classes (a head's weights, a threshold) are the exits' tests (tests/exits).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

import splitc.driver.pipeline as pipeline
from splitc.driver.verify import verify_bundle
from splitc.errors import SplitcError
from tests.digits_model import compile_digits
from tests.driver.mutate import copy_bundle, edit_partition, initializers, rehash, scale_constant, scale_initializer


# -- the mutations: each edits one partition's ONNX model in place -----------------------------------


def _conv_weight(model: onnx.ModelProto, decoder: bool) -> str:
    """The weight of the last backbone Conv (decoder=False) or of the bottleneck decoder's 1x1 Conv."""
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers(model)]
    if decoder:
        convs = [n for n in convs if "splitc_dec" in n.name and "conv2" in n.name]
    else:
        convs = [n for n in convs if "splitc_" not in n.name]
    assert convs, [n.name for n in model.graph.node if n.op_type == "Conv"]
    return convs[-1].input[1]


def receiver_conv_x15(model: onnx.ModelProto) -> None:
    scale_initializer(model, _conv_weight(model, decoder=False), 1.5)


def decoder_weight_x15(model: onnx.ModelProto) -> None:
    scale_initializer(model, _conv_weight(model, decoder=True), 1.5)


def divisor_x2(model: onnx.ModelProto) -> None:
    """The sender's uint8 wire quantization: q = round(x / scale) + zero point; scale doubled."""
    div = next(n for n in model.graph.node if n.op_type == "Div" and "splitc_q_" in n.name)
    scale_initializer(model, div.input[1], 2.0)


def gemm_weight_scale_x15(model: onnx.ModelProto) -> None:
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    dequantize = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == gemm.input[1])
    scale_initializer(model, dequantize.input[1], 1.5)


def rename_wire_tensor(model: onnx.ModelProto) -> None:
    """The sender's output 'relu_1' is called something else (as a renaming bug in an exporter would)."""
    old, new = model.graph.output[0].name, model.graph.output[0].name + "_renamed"
    for node in model.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
    model.graph.output[0].name = new


def noise_scale(b: float, factor: float) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        assert scale_constant(model, lambda _n, v: v.size == 1 and np.isclose(abs(float(v)), b, rtol=1e-5), factor)
    return edit


def swap_partitions(files: list[Path]) -> None:
    """Partition 0's file holds partition 1 and the other way round."""
    a, b = files[:2]
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.unlink(), b.unlink()
    a.write_bytes(data_b), b.write_bytes(data_a)


# -- bundles ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory):
    """Float partitions, a bottleneck (ratio 0.25) and a uint8 wire."""
    return compile_digits(tmp_path_factory.mktemp("mut") / "float", bottleneck="0.25", transfer_dtype="uint8")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """int8 QDQ partitions and a uint8 wire."""
    result = compile_digits(tmp_path_factory.mktemp("mut") / "int8", quantize="int8", transfer_dtype="uint8",
                            accuracy_target=0.95)
    assert result.manifest["plan"]["compression"]["quantized"] == "int8"
    return result


@pytest.fixture(scope="module")
def noised_bundle(tmp_path_factory):
    """Clip + Laplace noise at the cut (epsilon 100, clip C = the median norm)."""
    return compile_digits(tmp_path_factory.mktemp("mut") / "noise", privacy_epsilon=100.0, accuracy_target=0.9)


def _verify_mutated(result, tmp_path: Path, index: int | None, edit) -> "object":
    """``splitc verify`` of a mutated copy whose manifest hashes were all updated."""
    intact = verify_bundle(result.out, result.prepared.loaded.module)
    assert intact.passed, intact.headline()  # the unmutated bundle passes: the failure below is the mutation's
    bundle = copy_bundle(result.out, tmp_path / "mutated")
    if index is None:
        edit([bundle / p["file"] for p in json.loads((bundle / "manifest.json").read_text())["partitions"]])
    else:
        edit_partition(bundle, index, edit)
    rehash(bundle)
    report = verify_bundle(bundle, result.prepared.loaded.module)
    assert report.status == "failed", report.headline()
    return report


def _compile_with(monkeypatch, tmp_path: Path, index: int | None, edit, after_quantize: bool = False, **options):
    """Compile with ``edit`` applied to partition ``index`` right after its export (or after quantization)."""
    if after_quantize:
        real = pipeline.quantize_partitions

        def quantize(ctx, gm, stage, exported):
            real(ctx, gm, stage, exported)
            if index is None:
                edit([stage / record["file"] for record in exported])
            else:
                _edit_file(stage / exported[index]["file"], edit)
            from splitc.core.loader import sha256_file

            for record in exported:  # the mutated files are what the manifest hashes
                record["sha256"] = sha256_file(stage / record["file"])

        monkeypatch.setattr(pipeline, "quantize_partitions", quantize)
    else:
        real_export = pipeline.export_partitions

        def export(partitions, paths, **kwargs):
            result = real_export(partitions, paths, **kwargs)
            for part, path in zip(partitions, paths):
                if part.index == index:
                    _edit_file(Path(path), edit)
            return result

        monkeypatch.setattr(pipeline, "export_partitions", export)
    out = tmp_path / "compiled"
    with pytest.raises(SplitcError, match="verification failed") as failure:
        compile_digits(out, **options)
    assert not out.exists()  # nothing half-written
    return str(failure.value)


def _edit_file(path: Path, edit) -> None:
    model = onnx.load(str(path))
    edit(model)
    path.unlink()
    onnx.save(model, str(path))


# -- one test per mutation class -------------------------------------------------------------------


def test_receiver_conv_weight_x15(float_bundle, tmp_path, monkeypatch):
    report = _verify_mutated(float_bundle, tmp_path, 1, receiver_conv_x15)
    assert report.failures[0].startswith("partition 1")
    message = _compile_with(monkeypatch, tmp_path, 1, receiver_conv_x15, bottleneck="0.25", transfer_dtype="uint8")
    assert "partition 1" in message


def test_sender_uint8_divisor_x2(float_bundle, tmp_path, monkeypatch):
    report = _verify_mutated(float_bundle, tmp_path, 0, divisor_x2)
    assert report.failures[0].startswith("partition 0") and "'relu_1'" in report.failures[0]
    message = _compile_with(monkeypatch, tmp_path, 0, divisor_x2, bottleneck="0.25", transfer_dtype="uint8")
    assert "partition 0" in message


def test_int8_gemm_weight_scale_x15(int8_bundle, tmp_path, monkeypatch):
    """The fault that used to pass: judged by top-1 agreement (and rtol 1 at compile time), it looked fine."""
    report = _verify_mutated(int8_bundle, tmp_path, 1, gemm_weight_scale_x15)
    assert report.failures[0].startswith("partition 1") and "fake-quantized int8 reference" in report.failures[0]
    message = _compile_with(monkeypatch, tmp_path, 1, gemm_weight_scale_x15, after_quantize=True, quantize="int8",
                            transfer_dtype="uint8", accuracy_target=0.95)
    assert "partition 1" in message


@pytest.mark.parametrize("which", ["scale b x1.5", "clip C x0.5"])
def test_noise_parameters_changed(noised_bundle, tmp_path, monkeypatch, which):
    noise = noised_bundle.manifest["transfers"][0]["noise"]
    edit = noise_scale(noise["scale"], 1.5) if which.startswith("scale") else noise_scale(noise["clip_norm"], 0.5)
    report = _verify_mutated(noised_bundle, tmp_path, 0, edit)
    assert report.failures[0].startswith("noise (link 0): sending tier")
    message = _compile_with(monkeypatch, tmp_path, 0, edit, privacy_epsilon=100.0, accuracy_target=0.9)
    assert "noise (link 0): sending tier" in message


def test_swapped_partitions(float_bundle, tmp_path, monkeypatch):
    report = _verify_mutated(float_bundle, tmp_path, None, swap_partitions)
    assert report.failures[0].startswith("contract: partition 0")
    message = _compile_with(monkeypatch, tmp_path, None, swap_partitions, after_quantize=True, bottleneck="0.25",
                            transfer_dtype="uint8")
    assert "contract" in message


def test_bottleneck_decoder_weight_changed(float_bundle, tmp_path, monkeypatch):
    report = _verify_mutated(float_bundle, tmp_path, 1, decoder_weight_x15)
    assert report.failures[0].startswith("partition 1")
    message = _compile_with(monkeypatch, tmp_path, 1, decoder_weight_x15, bottleneck="0.25", transfer_dtype="uint8")
    assert "partition 1" in message


def test_transfer_tensor_renamed(float_bundle, tmp_path, monkeypatch):
    report = _verify_mutated(float_bundle, tmp_path, 0, rename_wire_tensor)
    assert report.failures[0].startswith("contract: partition 0") and "relu_1_renamed" in report.failures[0]
    message = _compile_with(monkeypatch, tmp_path, 0, rename_wire_tensor, bottleneck="0.25", transfer_dtype="uint8")
    assert "contract" in message
