"""A device runs its tier without torch (issue 16.8): ``pip install 'splitc[runtime]'`` pulls only ONNX Runtime,
numpy and the command line, and a bundle runs in an environment that has nothing else.

The declared dependencies are checked by resolving ``splitc[runtime]`` through the installed packages'
metadata. The slow test builds a clean virtual environment (no pip, no system site-packages) that holds only
the runtime's distributions (linked from this environment: the tests run offline, so nothing is downloaded)
and the splitc sources, then runs a bundle compiled here with ``splitc run`` in it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
COMPILER_ONLY = {"torch", "torchvision", "onnx", "onnxsim", "onnxscript", "scipy", "matplotlib", "pyyaml", "tqdm"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _runtime_closure(extras: tuple[str, ...] = ("runtime",)) -> set[str]:
    """Every distribution ``splitc[extras]`` needs, resolved through the installed metadata."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _norm(req.name)
        if name == "splitc":  # a self-reference: splitc[runtime] inside an extra
            for extra in req.extras:
                todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
            continue
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(req.name) or []:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def test_runtime_extra_pulls_no_compiler() -> None:
    closure = _runtime_closure()
    assert {"numpy", "onnxruntime", "click", "jsonschema"} <= closure
    assert not closure & COMPILER_ONLY, closure & COMPILER_ONLY
    assert {"torch", "torchvision"} <= _runtime_closure(("compiler",))  # the compiler extra has them


def _link_distribution(name: str, site: Path) -> None:
    """Symlink one installed distribution's top-level files and its metadata into ``site``."""
    dist = metadata.distribution(name)
    for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
        source = Path(str(dist.locate_file(top)))
        if source.exists() and not (site / top).exists() and top != "__pycache__":
            (site / top).symlink_to(source)


@pytest.mark.slow
def test_a_bundle_runs_where_only_the_runtime_is_installed(tmp_path) -> None:
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model
    from splitc.runtime.runner import BundleRunner

    bundle = tmp_path / "bundle"
    compile_model("tests.models:Residual", CompileOptions(targets=("jetson", "cloud-gpu"), split=("stem",),
                                                            emit=("none",)), bundle, input_shapes=[(1, 3, 16, 16)])
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = BundleRunner(bundle).run({"x": x})["output_0"]

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name in _runtime_closure():
        _link_distribution(name, site)
    (site / "splitc-src.pth").write_text(f"{ROOT}\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=300)

    probe = run("-c", "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
                      "('torch', 'torchvision', 'onnx', 'scipy', 'numpy', 'onnxruntime', 'splitc')}))")
    found = json.loads(probe.stdout)
    assert found == {"torch": False, "torchvision": False, "onnx": False, "scipy": False, "numpy": True,
                     "onnxruntime": True, "splitc": True}, probe.stderr
    cli = "import sys; from splitc.driver.cli import main; sys.argv[0] = 'splitc'; main()"
    ran = run("-c", cli, "run", str(bundle), "--input", "x.npy", "--output", "out.npz")
    assert ran.returncode == 0, ran.stderr
    assert "answered by tier 1" in ran.stdout
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["output_0"], expected, rtol=1e-5, atol=1e-6)
    in_python = run("-c", "import numpy as np, sys; from splitc.runtime.runner import BundleRunner; "
                          f"print(BundleRunner({str(bundle)!r}).run({{'x': np.load('x.npy')}})['output_0'].argmax()); "
                          "print('torch' in sys.modules)")
    assert in_python.stdout.split() == [str(int(expected.argmax())), "False"], in_python.stderr
    compiling = run("-c", cli, "compile", "tests.models:Residual", "-t", "jetson", "-o", "never")
    assert compiling.returncode == 2 and "pip install 'splitc[compiler]'" in compiling.stderr
    assert len(compiling.stderr.strip().splitlines()) == 1 and not (tmp_path / "never").exists()
