"""The command line end to end: real bundles, and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from splitc.driver.cli import main
from splitc.driver.manifest import validate_manifest
from splitc.driver.verify import verify_bundle
from splitc.runtime.runner import BundleRunner
from tests.cli import run_cli
from tests.models import Residual


@pytest.fixture(scope="module")
def residual_pt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "residual.pt"
    torch.save(Residual().eval(), path)
    return path


@pytest.fixture(scope="module")
def bundle3(residual_pt, tmp_path_factory) -> Path:
    """A 3-tier bundle whose cuts carry the residual skip tensor."""
    out = tmp_path_factory.mktemp("bundles") / "b3"
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", str(residual_pt), "--input-shape", "1,3,8,8", "--target", "pi,edge,cloud-gpu",
              "--split", "a,relu_1", "-o", str(out), "-q"])
    assert exit_info.value.code == 0
    return out


def test_compile_three_tiers_writes_valid_bundle(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    validate_manifest(manifest)
    assert (bundle3 / "manifest.schema.json").exists() and (bundle3 / "report.md").exists()
    assert [p["file"] for p in manifest["partitions"]] == [
        "raspberry-pi-4/part0.onnx", "edge-cpu/part1.onnx", "cloud-gpu-t4/part2.onnx"]
    assert manifest["verification"]["passed"] is True
    first = manifest["transfers"][0]
    assert {t["name"] for t in first["tensors"]} == {"relu", "a"}  # skip + branch
    assert first["bytes"] == sum(t["bytes"] for t in first["tensors"]) == 2 * 8 * 8 * 8 * 4
    assert manifest["plan"]["forced"] is True


def test_onnx_files_match_manifest(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    for part in manifest["partitions"]:
        model = onnx.load(str(bundle3 / part["file"]))
        onnx.checker.check_model(model)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert [i.name for i in model.graph.input] == [t["name"] for t in part["inputs"]]
        assert [o.name for o in model.graph.output] == [t["name"] for t in part["outputs"]]
        for value, spec in zip([*model.graph.input, *model.graph.output], [*part["inputs"], *part["outputs"]]):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == spec["shape"] and all(d > 0 for d in dims)  # static shapes
        import hashlib
        assert hashlib.sha256((bundle3 / part["file"]).read_bytes()).hexdigest() == part["sha256"]


def test_runner_sends_exactly_the_manifest_bytes(bundle3, residual_pt):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    runner = BundleRunner(bundle3)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = runner.run({"x": x})
    assert runner.wire_bytes == [t["bytes"] for t in manifest["transfers"]]
    model = torch.load(residual_pt, weights_only=False)
    np.testing.assert_allclose(out["output_0"], model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_verify_and_inspect_commands(bundle3, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "verify", str(bundle3))
    assert code == 0 and out.startswith("PASSED")
    np.savez(tmp_path / "in.npz", x=np.ones((4, 1, 3, 8, 8), np.float32))
    code, out, _ = run_cli(capsys, "verify", str(bundle3), "--inputs", str(tmp_path / "in.npz"))
    assert code == 0 and "4 sample(s)" in out
    code, out, _ = run_cli(capsys, "inspect", str(bundle3))
    assert code == 0 and "tier 1 edge-cpu" in out and "relu" in out


def test_verify_detects_tampered_partition(bundle3, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(bundle3, copy)
    with open(copy / "edge-cpu/part1.onnx", "ab") as handle:
        handle.write(b"\0")
    from splitc.errors import SplitcError
    with pytest.raises(SplitcError, match="does not match its sha256"):
        verify_bundle(copy)


def test_plan_json_lists_every_candidate_and_best_is_minimal(residual_pt, capsys):
    code, out, _ = run_cli(capsys, "plan", str(residual_pt), "--input-shape", "1,3,8,8", "--target",
                           "jetson,cloud-gpu", "--bandwidth", "10mbps", "--json")
    assert code == 0
    plan = json.loads(out)
    rows = plan["ranking"][0]
    assert len(rows) == len({r["index"] for r in rows}) == 10  # 9 compute nodes -> 10 cut positions
    best = min(r["best_latency_s"] for r in rows if r["best_latency_s"] is not None)
    assert plan["predicted"]["latency_s"] == pytest.approx(best)
    assert rows[0]["plan"] == [c["index"] for c in plan["cuts"]]


def test_plan_table_is_readable(residual_pt, capsys):
    code, out, _ = run_cli(capsys, "plan", str(residual_pt), "--input-shape", "1,3,8,8", "--target", "pi,cloud-gpu",
                           "--bandwidth", "1gbps", "--rtt-ms", "5")
    assert code == 0
    assert "link 0: raspberry-pi-4 -> cloud-gpu-t4: 1 Gbps, rtt 5 ms (flags)" in out
    assert "rank" in out and "best total ms" in out


def test_targets_command(capsys):
    code, out, _ = run_cli(capsys, "targets")
    assert code == 0 and "jetson-orin-nano" in out and "aws-lambda" in out


BAD_INPUTS = [
    (["compile", "missing.pt", "-t", "jetson,cloud-gpu"], "does not exist"),
    (["compile", "{pt}", "-t", "jetson,warp-drive"], "unknown target 'warp-drive'"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "1,5,8,8"], "fails on input"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "1,3,8,8", "--split", "nope"], "is not a node"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "1,3,8,8", "--split", "a,b"], "boundary"),
    (["compile", "{pt}", "-t", "pi,edge,cloud-gpu", "--input-shape", "1,3,8,8", "--split", "b,a"], "not in graph order"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "x"], "--input-shape"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "1,3,8,8", "--bandwidth", "fast"], "fast"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "1,3,8,8", "--bandwidth", "1mbps,2mbps"],
     "2 values for 1 link"),
    (["compile", "{bad}", "-t", "jetson,cloud-gpu"], "cannot read model file"),
    (["compile", "tests.models:DataDependent", "-t", "jetson", "--input-shape", "1,4"], "cannot trace the model"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "1,3,8,8", "-o", "{file}"], "is a file"),
    (["compile", "{pt}", "-t", "jetson,cloud-gpu", "--input-shape", "1,3,8,8", "-o", "{full}"], "not a splitc bundle"),
    (["verify", "{full}"], "not a splitc bundle"),
    (["plan", "{pt}", "-t", "jetson-nano", "--input-shape", "1,3,8,8", "--targets-file", "{tiny}"], "no placement fits"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUTS, ids=[f"{a[0]}-{n[:20]}" for a, n in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(args, needle, residual_pt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "tiny.yaml").write_text(_tiny_target())
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    subs = {"{pt}": str(residual_pt), "{bad}": "bad.pt", "{file}": "file.txt", "{full}": "full",
            "{tiny}": "tiny.yaml"}
    argv = [subs.get(a, a) for a in args]
    if argv[0] == "compile" and "-o" not in argv:
        argv += ["-o", "out"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".splitc-" in p.name]  # no staging leftovers
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def _tiny_target() -> str:
    import yaml
    from splitc.targets.target import TargetRegistry

    spec = TargetRegistry.with_builtins().resolve("jetson-nano").to_spec()
    spec["memory"] = "1 KiB"
    return yaml.safe_dump(spec)


def test_console_script_error_is_one_line(tmp_path):
    """The installed entry point, in a real process: exit code 2, one line, no traceback."""
    result = subprocess.run([sys.executable, "-m", "splitc", "compile", "nothing.pt", "-t", "jetson", "-o", "o"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model file 'nothing.pt' does not exist; check the path (or pass package.module:factory)"]


def test_recompile_replaces_existing_bundle(residual_pt, tmp_path, capsys):
    out = tmp_path / "b"
    for _ in range(2):
        code, _, err = run_cli(capsys, "compile", str(residual_pt), "--input-shape", "1,3,8,8", "-t", "jetson",
                               "-o", str(out), "--no-verify")
        assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["verification"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_in_place_op_after_cut_does_not_corrupt_wire_reference(tmp_path):
    """Verification compares each wire tensor with PyTorch's; the reference must survive in-place ops."""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    result = compile_model("tests.models:InPlace", CompileOptions(targets=("jetson", "cloud-gpu"), split=("conv",)),
                           tmp_path / "b", input_shapes=[(1, 3, 8, 8)])
    assert result.manifest["verification"]["passed"]
    assert result.manifest["transfers"][0]["tensors"][0]["name"] == "conv"


def test_verify_inputs_accept_calibration_layout(bundle3, tmp_path, capsys):
    """verify --inputs takes [S, *shape[1:]] arrays (as calib.npz does) as well as [S, 1, *shape[1:]]."""
    np.save(tmp_path / "flat.npy", np.zeros((3, 3, 8, 8), np.float32))
    code, out, _ = run_cli(capsys, "verify", str(bundle3), "--inputs", str(tmp_path / "flat.npy"))
    assert code == 0 and "3 sample(s)" in out
    np.save(tmp_path / "bad.npy", np.zeros((3, 4, 8, 8), np.float32))
    code, _, err = run_cli(capsys, "verify", str(bundle3), "--inputs", str(tmp_path / "bad.npy"))
    assert code == 2 and "expected [S, 3, 8, 8]" in err
