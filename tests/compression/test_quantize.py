"""quantize: int8 QDQ / fp16 partitions, calibrated on real inputs, accuracy-checked."""

from __future__ import annotations

import onnx
import pytest

from tests.digits_model import compile_digits


@pytest.mark.parametrize("mode,op", [("int8", "QuantizeLinear"), ("fp16", "Cast")])
def test_quantized_partitions_keep_accuracy(tmp_path, mode, op):
    result = compile_digits(tmp_path / "b", quantize=mode, transfer_dtype="uint8")
    manifest = result.manifest
    for part in manifest["partitions"]:
        model = onnx.load(tmp_path / "b" / part["file"])
        ops = {n.op_type for n in model.graph.node}
        assert op in ops and set(part["op_types"]) == ops
    # the wire contract is unchanged by partition quantization
    tensor = manifest["transfers"][0]["tensors"][0]
    assert tensor["dtype"] == "uint8"
    acc = manifest["verification"]["accuracy"]
    assert manifest["verification"]["passed"] and acc["accuracy"] >= acc["required_accuracy"]
    compression = manifest["plan"]["compression"]
    assert compression["quantize"] == mode
    assert any(k.startswith("quantize_") for k in compression["accuracy_after"]) or compression["notes"]
