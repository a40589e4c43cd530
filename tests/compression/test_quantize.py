"""quantize: int8 QDQ / fp16 partitions, calibrated on real inputs, accuracy-checked, verified against their reference."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto

from tests.digits_model import compile_digits

_COMPUTE = ("Conv", "Gemm", "MatMul")


def _weight_dtypes(model: onnx.ModelProto) -> list[str]:
    """Per compute layer, how its weight is stored: 'int8' (behind a DequantizeLinear), 'float16' or 'float32'."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in (n for n in model.graph.node if n.op_type in _COMPUTE):
        weight = node.input[1]
        source = producer.get(weight)
        while source is not None and source.op_type == "Cast":  # fp16 weights are cast up before a float32 op
            weight, source = source.input[0], producer.get(source.input[0])
        if source is not None and source.op_type == "DequantizeLinear":
            weight = source.input[0]
        tensor = inits.get(weight)
        out.append({TensorProto.INT8: "int8", TensorProto.FLOAT16: "float16",
                    TensorProto.FLOAT: "float32"}.get(tensor.data_type, "other") if tensor is not None else "computed")
    return out


@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_quantized_partitions_keep_accuracy(tmp_path, mode):
    result = compile_digits(tmp_path / "b", quantize=mode, transfer_dtype="uint8")
    manifest = result.manifest
    compression = manifest["plan"]["compression"]
    assert compression["quantize"] == mode and compression["quantized"] == mode  # kept, not fallen back to float32
    for part in manifest["partitions"]:
        model = onnx.load(tmp_path / "b" / part["file"])
        assert set(part["op_types"]) == {n.op_type for n in model.graph.node}
        weights = _weight_dtypes(model)
        # the partition itself is quantized, not merely the wire (whose Cast/uint8 exists either way)
        assert ("int8" if mode == "int8" else "float16") in weights, weights
        if mode == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= set(part["op_types"])
        # the graph's inputs/outputs keep the manifest's dtypes (the wire contract is unchanged)
        io = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
        assert TensorProto.FLOAT16 not in io
    tensor = manifest["transfers"][0]["tensors"][0]
    assert tensor["dtype"] == "uint8"
    acc = manifest["verification"]["accuracy"]
    assert manifest["verification"]["passed"] and acc["accuracy"] >= acc["required_accuracy"]
    checks = {c["name"].split(" (")[0]: c for c in manifest["verification"]["checks"]}
    reference = "fake-quantized int8 reference" if mode == "int8" else "float16 tolerance"
    assert all(reference in checks[f"partition {i}"]["detail"] for i in range(len(manifest["partitions"])))
    assert all(checks[f"float export of partition {i}"]["status"] == "passed" for i in range(len(manifest["partitions"])))
