"""What verification says: "not verified" loudly (never "passed"), every accuracy verdict with its numbers
in ``splitc inspect`` and report.md, and every listed file hashed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from splitc.core.accuracy import AccuracyTarget, Verdict
from splitc.driver.verify import listed_files, verify_bundle
from splitc.errors import SplitcError
from tests.cli import run_cli
from tests.digits_model import compile_digits, trained_digits
from tests.driver.mutate import copy_bundle


def test_lossy_bundle_without_calib_is_not_verified_loudly(tmp_path, capsys):
    """--transfer-dtype float16 without --calib: the numerics are checked, the accuracy cannot be."""
    model, calib = trained_digits()
    out = tmp_path / "b"
    code, _, err = run_cli(capsys, "compile", str(model), "--input-shape", "1,1,8,8", "-t", "jetson,cloud-gpu",
                           "--split", "relu_1", "--transfer-dtype", "float16", "--emit", "none", "-q", "-o", str(out))
    assert code == 0, err
    assert "NOT VERIFIED" in err and "no --calib" in err  # a warning: -q does not hide it
    verification = json.loads((out / "manifest.json").read_text())["verification"]
    assert verification["status"] == "not verified" and verification["passed"] is False
    assert any(line.startswith("accuracy: no --calib") for line in verification["not_verified"])
    statuses = {c["name"].split(" (")[0]: c["status"] for c in verification["checks"]}
    assert statuses["partition 0"] == statuses["partition 1"] == statuses["contract"] == "passed"
    assert "seeded random inputs" in verification["inputs"]

    code, text, _ = run_cli(capsys, "verify", str(out))
    assert code == 3 and text.startswith("NOT VERIFIED")  # exit 3: not verified, distinct from failed (1)
    assert "original model: NOT VERIFIED" in text and "not measured at compile time either" in text

    code, text, _ = run_cli(capsys, "verify", str(out), "--inputs", str(calib))  # real digits with labels y
    assert code == 0 and text.startswith("PASSED: 600 sample(s)"), text
    assert "(top-1 vs labels y): held-out accuracy" in text and ": met" in text


def test_every_accuracy_verdict_and_check_in_inspect_and_report(tmp_path, capsys):
    result = compile_digits(tmp_path / "b", transfer_dtype="uint8", bottleneck="0.25")
    manifest = result.manifest
    verdicts = manifest["accuracy"]["verdicts"]
    assert len(verdicts) >= 3  # bottleneck, transfer dtype, the written bundle
    code, text, _ = run_cli(capsys, "inspect", str(tmp_path / "b"))
    report = (tmp_path / "b" / "report.md").read_text()
    assert code == 0
    for v in verdicts:
        target = AccuracyTarget(v["accuracy_target"], v["target_kind"] == "absolute")
        line = Verdict(v["step"], v["accuracy"], v["required"], v["margin"], v["margin_rule"], target,
                       v["reference_accuracy"], v["samples"]).line()
        assert " - margin " in line and "required" in line and line in text and line in report
    assert "verified: PASSED on 8 sample(s) (held-out calibration samples" in text
    for check in manifest["verification"]["checks"]:
        assert f"  {check['name']}: " in text and check["detail"] in report


def test_every_listed_file_is_hashed_and_checked(tmp_path):
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    model, calib = trained_digits()
    options = CompileOptions(targets=("jetson", "edge", "cloud-gpu"), split=("relu", "relu_1"), calib=str(calib),
                             transfer_dtype="uint8")  # emit auto: TensorRT recipe, Triton repository
    result = compile_model(str(model), options, tmp_path / "b", input_shapes=[(1, 1, 8, 8)])
    files = listed_files(result.manifest)
    kinds = {re.sub(r" \d+", "", what) for _, _, what in files}
    assert {"partition", "reference values", "triton artifact", "tensorrt artifact"} <= kinds, kinds
    assert all(digest for _, digest, _ in files)  # every listed file has a sha256
    assert verify_bundle(tmp_path / "b", result.prepared.loaded.module).passed
    for i, (name, _, what) in enumerate(files):
        if name.endswith((".pbtxt", ".npz", ".sh")):
            bundle = copy_bundle(tmp_path / "b", tmp_path / f"tampered-{i}")
            with open(bundle / name, "ab") as handle:
                handle.write(b"\0")
            with pytest.raises(SplitcError, match=f"'{bundle / name}' \\({what}\\) does not match its sha256"):
                verify_bundle(bundle, result.prepared.loaded.module)


def test_exit_heads_are_listed():
    manifest = {"partitions": [{"index": 0, "file": "t/part0.onnx", "sha256": "a"}],
                "exits": [{"index": 0, "head": {"weights": {"file": "exits/exit0.npz", "sha256": "b"}}}],
                "artifacts": [{"kind": "faas", "files": ["t/faas/handler.py"], "sha256": {"t/faas/handler.py": "c"}}],
                "verification": {"reference": {"file": "verification/reference.npz", "sha256": "d"}}}
    assert listed_files(manifest) == [("t/part0.onnx", "a", "partition 0"), ("exits/exit0.npz", "b", "exit 0 head"),
                                      ("t/faas/handler.py", "c", "faas artifact"),
                                      ("verification/reference.npz", "d", "reference values")]


def test_reference_cases_are_real_held_out_samples(tmp_path):
    result = compile_digits(tmp_path / "b", transfer_dtype="uint8")
    record = result.manifest["verification"]["reference"]
    guard = result.prepared.ctx.accuracy
    assert record["cases"] == 8 and "held-out calibration samples" in record["inputs"]
    with np.load(tmp_path / "b" / record["file"]) as data:
        stored = np.stack([data[f"{i}/x"] for i in range(record["cases"])])
    assert np.array_equal(stored.reshape(8, -1), guard.calib.inputs[0][guard.test[:8]].reshape(8, -1))


def test_verify_samples_below_one_is_a_user_error(tmp_path, capsys):
    model, _ = trained_digits()
    code, _, err = run_cli(capsys, "compile", str(model), "--input-shape", "1,1,8,8", "-t", "jetson,cloud-gpu",
                           "--verify-samples", "0", "-o", str(tmp_path / "b"))
    assert code == 2 and "--verify-samples 0 leaves verification nothing to run" in err
    assert not (tmp_path / "b").exists()
