"""TensorRT recipes: trtexec command and builder script, precision flags, and every ONNX op of the
tensorrt-tier partitions on TensorRT's ONNX-parser support list. Engines need TensorRT (skipped here)."""

from __future__ import annotations

import ast
import json

import onnx
import pytest

from splitc.backends.tensorrt import (check_ops, partition_precision, supported_ops, tensorrt_available,
                                     trtexec_command)


def test_support_list_names_its_source():
    data = supported_ops()
    assert "onnx-tensorrt" in data["source"] and "commit" in data["source"]
    assert {"Conv", "Relu", "Gemm", "Add", "ReduceMean"} <= set(data["supported"])
    assert not set(data["supported"]) & set(data["unsupported"])


def test_every_op_of_the_tensorrt_partitions_is_supported(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    trt_tiers = [t["index"] for t in manifest["tiers"] if t["target"]["backend"] == "tensorrt"]
    parts = [p for p in manifest["partitions"] if p["tier_index"] in trt_tiers]
    assert parts
    for part in parts:
        model = onnx.load(str(bundle3 / part["file"]))
        ops = {n.op_type for n in model.graph.node}
        assert ops <= set(supported_ops()["supported"]), ops - set(supported_ops()["supported"])
        assert check_ops(bundle3 / part["file"])["unsupported"] == []
        for value in list(model.graph.input) + list(model.graph.output):  # static shapes only
            assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim)


def test_recipe_files(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    record = next(a for a in manifest["artifacts"] if a["kind"] == "tensorrt")
    folder = bundle3 / record["path"]
    script = (folder / "part0.trtexec.sh").read_text()
    assert "trtexec --onnx=../part0.onnx --saveEngine=part0.plan" in script and "--shapes=x:1x3x8x8" in script
    assert "--fp16" not in script and "--int8" not in script  # fp32 partition: no reduced precision
    builder = (folder / "build_engine.py").read_text()
    ast.parse(builder)
    assert "OnnxParser" in builder and "PARTITIONS = {'part0.onnx': 'fp32'}" in builder
    assert record["engine_built"] is tensorrt_available()
    assert "Every op is on TensorRT's ONNX-parser support list" in (folder / "README.md").read_text()


def test_precision_flags_follow_the_partition(tmp_path):
    from onnx import TensorProto, helper

    def save(name, nodes, elem=TensorProto.FLOAT):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [1, 4])],
                                  [helper.make_tensor_value_info("y", elem, [1, 4])],
                                  [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                                   helper.make_tensor("z", TensorProto.INT8, [], [0])])
        path = tmp_path / name
        onnx.save(helper.make_model(graph), str(path))
        return path

    qdq = save("q.onnx", [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                          helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])])
    half = save("h.onnx", [helper.make_node("Relu", ["x"], ["y"])], TensorProto.FLOAT16)
    odd = save("o.onnx", [helper.make_node("NonZero", ["x"], ["y"])])
    assert partition_precision(qdq, ["fp32", "fp16", "int8"]) == "int8"
    assert partition_precision(qdq, ["fp32"]) == "fp32"
    assert partition_precision(half, ["fp32", "fp16"]) == "fp16"
    part = {"file": "t/part3.onnx", "inputs": [{"name": "x", "shape": [1, 4]}]}
    assert trtexec_command(part, "int8", ["fp32", "fp16", "int8"])[3:5] == ["--int8", "--fp16"]
    assert "--fp16" in trtexec_command(part, "fp16", ["fp16"])
    assert check_ops(odd)["unsupported"] == ["NonZero"]


@pytest.mark.skipif(not tensorrt_available(),
                    reason="TensorRT is not installable on this machine (its PyPI packages download the libraries "
                           "from NVIDIA's index at install time: the README's Install section)")
def test_engine_builds_in_process(bundle3):  # pragma: no cover - needs TensorRT and a GPU
    assert list((bundle3 / "jetson-orin-nano" / "tensorrt").glob("*.plan"))
