"""quantize_transfer: the wire really carries float16 / uint8, the manifest says how, accuracy holds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from splitc.errors import SplitcError
from splitc.compression.quantize_transfer import DequantizeU8, QuantizeU8, affine_params
from splitc.runtime.encoding import decode, dequantize_affine_uint8, encode, quantize_affine_uint8
from splitc.runtime.runner import BundleRunner
from tests.digits_model import CUT_4D, compile_digits


def test_graph_quantization_matches_the_runtime_codec():
    """The ops put in the ONNX graphs and the manifest's formula give the same uint8 values."""
    values = torch.randn(200, 3, 4, 4) * 3 + 1
    for axis in (None, 1):
        scale, zero = affine_params(values, axis)
        shape = [1, -1, 1, 1] if axis == 1 else []
        q = QuantizeU8(scale.reshape(shape), zero.reshape(shape))(values)
        spec = {"name": "t", "shape": list(values.shape), "dtype": "uint8",
                "encoding": {"kind": "affine_uint8", "axis": axis,
                             "scale": scale.tolist() if axis is not None else float(scale),
                             "zero_point": [int(z) for z in zero] if axis is not None else int(zero)}}
        assert np.array_equal(q.numpy(), quantize_affine_uint8(values.numpy(), spec))
        back = DequantizeU8(scale.reshape(shape), zero.reshape(shape))(q).numpy()
        assert np.allclose(back, dequantize_affine_uint8(q.numpy(), spec))
        step = scale.max().item()
        assert np.abs(back - values.numpy()).max() <= step / 2 + 1e-5  # calibrated range: no clipping


def test_codec_round_trips():
    x = np.linspace(-1, 3, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    spec = {"name": "t", "shape": [1, 2, 3, 4], "dtype": "uint8",
            "encoding": {"kind": "affine_uint8", "scale": 4 / 255, "zero_point": 64, "axis": None, "in_graph": False}}
    payload = encode(x, spec)
    assert len(payload) == 24
    assert np.abs(decode(payload, spec) - x).max() <= 2 / 255 + 1e-6
    spec16 = {"name": "t", "shape": [1, 2, 3, 4], "dtype": "float16", "encoding": {"kind": "float16"}}
    assert len(encode(x, spec16)) == 48 and decode(encode(x, spec16), spec16).dtype == np.float32
    spec_in_graph = dict(spec, encoding=dict(spec["encoding"], in_graph=True))
    wire = quantize_affine_uint8(x, spec)
    assert encode(wire, spec_in_graph) == wire.tobytes()  # already encoded by the sending graph: sent as is
    assert decode(encode(wire, spec_in_graph), spec_in_graph).dtype == np.uint8


@pytest.mark.parametrize("dtype,itemsize", [("float16", 2), ("uint8", 1)])
def test_compile_puts_the_small_dtype_on_the_wire(tmp_path, dtype, itemsize):
    result = compile_digits(tmp_path / "b", transfer_dtype=dtype)
    manifest = result.manifest
    tensor = manifest["transfers"][0]["tensors"][0]
    assert tensor["name"] == CUT_4D and tensor["dtype"] == dtype and tensor["shape"] == [1, 16, 8, 8]
    assert tensor["bytes"] == 16 * 8 * 8 * itemsize == manifest["transfers"][0]["bytes"]
    assert tensor["encoding"]["kind"] == ("float16" if dtype == "float16" else "affine_uint8")
    assert tensor["encoding"]["in_graph"] is True
    # the ONNX graphs really have the small dtype at the boundary
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    sender = onnx.load(tmp_path / "b" / manifest["partitions"][0]["file"]).graph
    receiver = onnx.load(tmp_path / "b" / manifest["partitions"][1]["file"]).graph
    assert sender.output[0].type.tensor_type.elem_type == elem
    assert receiver.input[0].type.tensor_type.elem_type == elem
    runner = BundleRunner(tmp_path / "b")
    runner.run({"x": np.zeros((1, 1, 8, 8), np.float32)})
    assert runner.wire_bytes == [16 * 8 * 8 * itemsize]
    verification = manifest["verification"]
    assert verification["passed"]
    acc = verification["accuracy"]
    assert acc["accuracy"] >= acc["required_accuracy"] and acc["reference_accuracy"] > 0.9
    assert manifest["plan"]["compression"]["transfer_dtype"] == dtype


def test_uint8_needs_calibration_data():
    from splitc.compression.settings import CompressionSettings
    from splitc.core.options import CompileOptions

    with pytest.raises(SplitcError, match="needs calibration data"):
        CompressionSettings.from_options(CompileOptions(targets=("jetson",), transfer_dtype="uint8"))
    with pytest.raises(SplitcError, match="--transfer-dtype 'int4' is not supported"):
        CompressionSettings.from_options(CompileOptions(targets=("jetson",), transfer_dtype="int4"))
