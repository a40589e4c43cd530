"""Deploying from the bundle alone (issue 16.8): every bundle has a README.md that says per tier what to install
and the command that runs it; following it on two machines' worth of folders (each holding only the manifest and
its own tier) serves a real request between two processes. The bundle root is readable by others."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from splitc.core.options import CompileOptions
from splitc.driver.pipeline import compile_model
from splitc.runtime.process import start_tier_process, stop_tier_process
from splitc.runtime.runner import BundleRunner


@pytest.fixture(scope="module")
def split_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("readme") / "bundle"
    compile_model("tests.models:Residual", CompileOptions(targets=("jetson", "cloud-gpu"), split=("stem",)), out,
                  input_shapes=[(1, 3, 16, 16)])
    return out


def _commands(readme: str, heading: str) -> list[str]:
    section = readme.split(heading, 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_says_per_tier_what_to_install_and_run(split_bundle) -> None:
    readme = (split_bundle / "README.md").read_text()
    device = _commands(readme, "### Tier 0: `jetson-orin-nano`")
    server = _commands(readme, "### Tier 1: `cloud-gpu-t4`")
    assert device[0] == server[0] == "pip install 'splitc[runtime]'"
    assert device[1].startswith("splitc run . --input sample.npy --remote http://TIER1-HOST:8000")
    assert server[1] == "splitc serve . --tier cloud-gpu-t4 --host 0.0.0.0 --port 8000"
    assert "Sends on link 0 to tier 1: `stem`" in readme and "`cloud-gpu-t4/triton/`" in readme
    assert "no torch" in readme


def test_bundle_root_is_readable_by_others(split_bundle) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    mode = stat.S_IMODE(split_bundle.stat().st_mode)
    assert mode == 0o777 & ~mask and mode & stat.S_IROTH and mode & stat.S_IXOTH


def test_following_the_readme_on_two_folders_serves_a_request(split_bundle, tmp_path) -> None:
    """The device folder holds manifest.json and its tier only, the server folder likewise: nothing else is needed."""
    readme = (split_bundle / "README.md").read_text()
    machines = {"device": "jetson-orin-nano", "server": "cloud-gpu-t4"}
    for machine, tier in machines.items():
        (tmp_path / machine).mkdir()
        shutil.copy(split_bundle / "manifest.json", tmp_path / machine)
        shutil.copytree(split_bundle / tier, tmp_path / machine / tier)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "device" / "sample.npy", x)
    expected = BundleRunner(split_bundle).run({"x": x})["output_0"]

    serve = _commands(readme, "### Tier 1: `cloud-gpu-t4`")[1].split()
    assert serve[:4] == ["splitc", "serve", ".", "--tier"]
    # the README's command, on 127.0.0.1 and a free port (tests share the machine)
    tier = start_tier_process(".", serve[4], port=0, cwd=tmp_path / "server")
    proc, url = tier.proc, tier.url
    try:
        run = _commands(readme, "### Tier 0: `jetson-orin-nano`")[1].replace("http://TIER1-HOST:8000", url).split()
        assert run[:2] == ["splitc", "run"]
        done = subprocess.run([sys.executable, "-m", "splitc", *run[1:], "--output", "out.npz"], cwd=tmp_path / "device",
                              capture_output=True, text=True, timeout=120)
    finally:
        stop_tier_process(proc)
    assert done.returncode == 0, done.stderr
    assert "answered by tier 1 'cloud-gpu-t4'" in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "device" / "out.npz")["output_0"], expected, rtol=1e-5, atol=1e-6)
