"""Fixtures of the serving tests: real bundles (MNIST with exits and a uint8 transfer, a torchvision model
with bandwidth variants) and real tritonservers that leave no process or shared-memory file behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from splitc.errors import SplitcError


@pytest.fixture(scope="session")
def triton_install():
    """The tritonserver of the installed nvidia-pytriton wheel; skips only where it cannot be used."""
    from splitc.runtime.triton_server import find_triton

    try:
        return find_triton()
    except SplitcError as exc:
        pytest.skip(f"no usable tritonserver here: {exc}")


@pytest.fixture(scope="session")
def mnist_exits_bundle(mnist_example, tmp_path_factory) -> Path:
    """The MNIST example on pi -> edge -> c6i-large, split after stem_2 and add_1, exits auto, uint8 transfers:
    an exit on the device, an exit on the edge server tier, and two server tiers.

    Compiled with verify=False (--no-verify): with --exits auto --transfer-dtype uint8, compile-time exit
    verification fails on ~1 of 200 held-out samples (ONNX Runtime vs PyTorch at a threshold), a bug being
    fixed in the exits area. Serving is compared with the in-process runner of the same bundle, which that
    does not affect.
    """
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    out = tmp_path_factory.mktemp("mnist-exits") / "bundle"
    options = CompileOptions(targets=("pi", "edge", "c6i-large"), split=("stem_2", "add_1"), exits=("auto",),
                             calib=str(mnist_example / "calib.npz"), accuracy_target=0.99, transfer_dtype="uint8",
                             verify=False)
    compile_model(str(mnist_example / "mnist_cnn.pt"), options, out)
    return out


@pytest.fixture(scope="session")
def mnist_digits(mnist_example) -> list[dict[str, np.ndarray]]:
    """Unseen test digits, one request each."""
    x = np.load(mnist_example / "test.npz")["x"].astype(np.float32)
    return [{"x": x[i].reshape(1, 1, 28, 28)} for i in range(len(x))]


@pytest.fixture(scope="session")
def resnet_variants_bundle(tmp_path_factory) -> Path:
    """torchvision ResNet-18 (random weights, 128x128) on pi -> edge with float16 transfers, compiled at 60 Mbit/s
    with --bandwidth-range 100kbps:1gbps: three variants (everything on the Pi below ~30 Mbit/s, cut after maxpool,
    raw input above ~111 Mbit/s), the bundle itself being the maxpool one."""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    out = tmp_path_factory.mktemp("resnet-variants") / "bundle"
    options = CompileOptions(targets=("pi", "edge"), transfer_dtype="float16", bandwidths=("60mbps",),
                             bandwidth_range="100kbps:1gbps", verify=False)
    compile_model("torchvision.models:resnet18", options, out, input_shapes=[(1, 3, 128, 128)])
    return out


def shm_files() -> set[str]:
    """splitc's Triton shared-memory files now in /dev/shm."""
    return {p.name for p in Path("/dev/shm").glob("splitc*")} if os.path.isdir("/dev/shm") else set()


def tritonserver_pids() -> set[int]:
    """Processes running a tritonserver binary or a python-backend stub."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"tritonserver" in cmd.split(b"\0")[0] or b"triton_python_backend_stub" in cmd:
            pids.add(int(proc.name))
    return pids


@pytest.fixture
def no_leftovers():
    """Fails the test if it leaves a tritonserver, a stub or a shared-memory file behind."""
    shm_before, pids_before = shm_files(), tritonserver_pids()
    yield
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (tritonserver_pids() - pids_before or shm_files() - shm_before):
        time.sleep(0.2)
    assert not tritonserver_pids() - pids_before, "a tritonserver or stub process was left running"
    assert not shm_files() - shm_before, f"shared-memory files left: {sorted(shm_files() - shm_before)}"
