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


def _qdq_pair(tmp_path):
    """A float ONNX model whose two convolutions share one (zero) bias initializer, and its int8 QDQ version."""
    import numpy as np
    import onnxsim
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 4)).eval()
    for conv in (model[0], model[2]):
        torch.nn.init.zeros_(conv.bias)  # identical constants: the simplifier keeps one initializer for both
    torch.onnx.export(model, (torch.zeros(1, 3, 6, 6),), str(tmp_path / "f.onnx"), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    simplified, _ = onnxsim.simplify(onnx.load(str(tmp_path / "f.onnx")))
    onnx.save(simplified, str(tmp_path / "f.onnx"))
    rows = iter([{"x": np.random.default_rng(i).standard_normal((1, 3, 6, 6)).astype(np.float32)} for i in range(16)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(rows, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return onnx.load(str(tmp_path / "f.onnx")), onnx.load(str(tmp_path / "q.onnx"))


def test_fake_quant_reference_of_shared_initializers_and_structure_changes(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from splitc.compression.quantize import (ReferenceError, check_qdq_structure, fake_quant_reference,
                                             quantization_steps, reference_session)

    float_model, shipped = _qdq_pair(tmp_path)
    sources = check_qdq_structure(shipped, float_model)
    assert len(set(sources.values())) < len(sources)  # one float bias stands behind two quantized copies
    reference = reference_session(fake_quant_reference(shipped, float_model))
    fused = ort.InferenceSession(shipped.SerializeToString(), providers=["CPUExecutionProvider"])
    steps, count = quantization_steps(shipped)
    assert count >= 4 and steps["y"] > 0
    for i in range(8):
        x = np.random.default_rng(100 + i).standard_normal((1, 3, 6, 6)).astype(np.float32)
        got, want = fused.run(None, {"x": x})[0], reference.run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 2 * steps["y"]  # integer kernels vs float Q/DQ: a step or two at most
    changed = onnx.ModelProto()
    changed.CopyFrom(shipped)
    conv = next(n for n in changed.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "pads").ints[:] = [0, 0, 0, 0]
    with pytest.raises(ReferenceError, match="other attributes than in the float export"):
        fake_quant_reference(changed, float_model)
