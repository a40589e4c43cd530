"""insert_bottleneck: a trained encoder/decoder shrinks the wire tensor and keeps accuracy."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from splitc.compression.settings import CompressionSettings, code_shape, coder_flops
from splitc.core.options import CompileOptions
from splitc.errors import SplitcError
from splitc.compression.insert_bottleneck import BottleneckDecoder, BottleneckEncoder
from splitc.runtime.runner import BundleRunner
from tests.digits_model import CUT_2D, compile_digits


@pytest.mark.parametrize("stride", [1, 2])
def test_encoder_decoder_shapes(stride):
    x = torch.rand(2, 16, 7, 7)
    code = code_shape([2, 16, 7, 7], 0.25, stride)
    enc, dec = BottleneckEncoder(16, code[1], stride), BottleneckDecoder(code[1], 16, (7, 7), stride, True)
    z = enc(x)
    assert list(z.shape) == code == [2, 4, 7 // stride + (7 % stride), 7 // stride + (7 % stride)]
    assert dec(z).shape == x.shape and float(dec(z).min().detach()) >= 0


@pytest.mark.parametrize("shape,ratio,stride", [([1, 32, 14, 14], 0.125, 1), ([1, 32, 14, 14], 0.25, 2),
                                                ([1, 64, 7, 7], 0.5, 1), ([2, 16, 9, 9], 0.25, 2)])
def test_coder_flops_match_flop_counter_on_the_real_modules(shape, ratio, stride):
    """The planner's price of a bottleneck is what PyTorch's FlopCounterMode counts on the encoder and decoder."""
    from torch.utils.flop_counter import FlopCounterMode

    code = code_shape(shape, ratio, stride)
    encoder = BottleneckEncoder(shape[1], code[1], stride)
    decoder = BottleneckDecoder(code[1], shape[1], tuple(shape[2:]), stride, non_negative=True)
    counted = []
    for module, x in ((encoder, torch.zeros(shape)), (decoder, torch.zeros(code))):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(x)
        counted.append(counter.get_total_flops())
    assert coder_flops(shape, code) == tuple(counted)
    n, c, h, w = shape
    assert counted[0] == 2 * n * code[1] * code[2] * code[3] * c * 9  # the encoder's 3x3 convolution, never 1x1


def test_bottleneck_plus_uint8_on_real_digits(tmp_path):
    result = compile_digits(tmp_path / "b", bottleneck="0.25", transfer_dtype="uint8")
    manifest = result.manifest
    tensor = manifest["transfers"][0]["tensors"][0]
    assert tensor["shape"] == [1, 4, 8, 8] and tensor["dtype"] == "uint8" and tensor["bytes"] == 256  # 16x fewer
    enc = tensor["encoding"]
    assert enc["kind"] == "affine_uint8"
    assert enc["bottleneck"]["channel_ratio"] == 0.25 and enc["bottleneck"]["decoded_shape"] == [1, 16, 8, 8]
    assert enc["bottleneck"]["encoder_flops"] > 0 and enc["bottleneck"]["decoder_flops"] > 0
    acc = manifest["verification"]["accuracy"]
    assert manifest["verification"]["passed"] and acc["accuracy"] >= acc["required_accuracy"]
    runner = BundleRunner(tmp_path / "b")
    runner.run({"x": np.zeros((1, 1, 8, 8), np.float32)})
    assert runner.wire_bytes == [256]


def test_non_4d_cut_falls_back_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="splitc"):
        result = compile_digits(tmp_path / "b", split=CUT_2D, bottleneck="0.5")
    assert "cannot take a bottleneck" in caplog.text and "not a 4-D float tensor" in caplog.text
    tensor = result.manifest["transfers"][0]["tensors"][0]
    assert tensor["encoding"] == {"kind": "raw"} and tensor["shape"] == [1, 256]


@pytest.mark.parametrize("value,message", [("1.5", "out of range"), ("0", None), ("-0.1", "out of range"),
                                           ("half", "neither 'auto' nor a number")])
def test_bad_ratios(value, message):
    options = CompileOptions(targets=("jetson",), bottleneck=value, calib="c.npz")
    if message is None:
        assert CompressionSettings.from_options(options).bottleneck is None  # 0 = off
        return
    with pytest.raises(SplitcError, match=message):
        CompressionSettings.from_options(options)


def test_bad_prune():
    with pytest.raises(SplitcError, match="--prune 1.2 is out of range"):
        CompressionSettings.from_options(CompileOptions(targets=("jetson",), prune=1.2, calib="c.npz"))
    with pytest.raises(SplitcError, match="needs calibration data"):
        CompressionSettings.from_options(CompileOptions(targets=("jetson",), bottleneck="auto"))


def test_bottleneck_is_judged_on_the_code_as_the_wire_rounds_it():
    """--transfer-dtype after the bottleneck: its accuracy is measured on the uint8/float16-rounded code."""
    from splitc.compression.insert_bottleneck import _as_on_the_wire

    gen = torch.Generator().manual_seed(0)
    train = torch.randn(64, 4, 7, 7, generator=gen)
    code = torch.randn(8, 4, 7, 7, generator=gen)
    assert torch.equal(_as_on_the_wire(code, lambda: train, "float32"), code)
    assert torch.equal(_as_on_the_wire(code, lambda: train, "float16"), code.half().float())
    rounded = _as_on_the_wire(code, lambda: train, "uint8")
    step = float((train.max() - train.min()) / 255)  # per-tensor range of the training codes (or finer per channel)
    assert not torch.equal(rounded, code)
    lo, hi = train.amin(dim=(0, 2, 3), keepdim=True), train.amax(dim=(0, 2, 3), keepdim=True)
    inside = (code >= lo) & (code <= hi)  # outside a channel's training range the code clips, as on the wire
    assert float((rounded - code)[inside].abs().max()) <= step / 2 + 1e-6  # rounding, not a different encoding
    assert len(torch.unique(rounded)) <= 4 * 256
