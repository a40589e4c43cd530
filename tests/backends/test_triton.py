"""Triton model repositories: every config.pbtxt parses with Triton's own ModelConfig protobuf and
states exactly the ONNX file's input/output names, dims and dtypes."""

from __future__ import annotations

import json

import onnx
import pytest

from splitc.backends.triton import TRITON_DTYPES, config_pbtxt

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is needed to parse config.pbtxt (pip install "
                                              "'tritonclient[grpc]')")
text_format = pytest.importorskip("google.protobuf.text_format")

_ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                   onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
                   onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT8: "TYPE_INT8",
                   onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.DOUBLE: "TYPE_FP64"}


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _io(values, initializers):
    return {v.name: ([d.dim_value for d in v.type.tensor_type.shape.dim], _ONNX_TO_TRITON[v.type.tensor_type.elem_type])
            for v in values if v.name not in initializers}


def test_every_config_matches_its_onnx_model(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    records = [a for a in manifest["artifacts"] if a["kind"] == "triton"]
    assert [manifest["tiers"][r["tier_index"]]["target"]["kind"] for r in records] == ["edge"]  # only server tiers
    configs = sorted(bundle3.glob("*/triton/*/config.pbtxt"))
    assert configs and all(str(c.relative_to(bundle3)) in records[0]["files"] for c in configs)
    for path in configs:
        config = _parse(path)
        graph = onnx.load(str(path.parent / "1" / "model.onnx")).graph
        inits = {i.name for i in graph.initializer}
        assert config.name == path.parent.name and config.backend == "onnxruntime" and config.max_batch_size == 0
        for blocks, values in ((config.input, graph.input), (config.output, graph.output)):
            got = {b.name: (list(b.dims), model_config_pb2.DataType.Name(b.data_type)) for b in blocks}
            assert got == _io(values, inits)
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU  # edge-cpu: onnxruntime
        part = next(p for p in manifest["partitions"] if f"splitc_part{p['index']}" == path.parent.name)
        assert (path.parent / "1" / "model.onnx").read_bytes() == (bundle3 / part["file"]).read_bytes()
    assert "Client logic" in (bundle3 / "edge-cpu" / "triton" / "README.md").read_text()


def test_gpu_config_uses_the_tensorrt_accelerator_and_parses():
    inputs = [{"name": "relu", "dtype": "float16", "shape": [1, 8, 4, 4]}, {"name": "ids", "dtype": "int64", "shape": [1, 7]}]
    outputs = [{"name": "head", "dtype": "float32", "shape": [1, 5]}, {"name": "flag", "dtype": "bool", "shape": []}]
    config = text_format.Parse(config_pbtxt("m", inputs, outputs, gpu=True), model_config_pb2.ModelConfig())
    assert [model_config_pb2.DataType.Name(i.data_type) for i in config.input] == ["TYPE_FP16", "TYPE_INT64"]
    assert list(config.output[1].dims) == [1] and list(config.output[1].reshape.shape) == []  # scalar output
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP32"


def test_every_manifest_dtype_has_a_triton_type():
    from splitc.driver.manifest import manifest_schema

    assert set(manifest_schema()["$defs"]["dtype"]["enum"]) == set(TRITON_DTYPES)
    assert all(t in model_config_pb2.DataType.keys() for t in TRITON_DTYPES.values())
