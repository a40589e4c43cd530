"""Exit verification can fail: each exit mutation class makes compile-time verification AND ``splitc verify`` fail.

A bundle is changed the way a compiler bug would change it -- one number altered, the manifest's sha256 updated to
match where a file changed, so only a check of the numbers can catch it:

* the exit head's weights negated (in the exported ONNX partition);
* an exit threshold changed (in the manifest);
* the exit head's recorded weights changed (exits/exit<i>.npz, the reference ``splitc verify`` rebuilds);
* a check that cannot be made (the exit's node unknown to the model traced again) fails instead of passing.

Model: the digits CNN (real 8x8 digits) on jetson -> aws-lambda, cut after ``relu_1``, an exit forced at ``relu``
inside the device's work (so tier 0 runs two segments); ``--inputs`` are the calibration digits.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import splitc.driver.pipeline as pipeline
import splitc.exits.heads as heads
from splitc.core.options import CompileOptions
from splitc.driver.pipeline import compile_model
from splitc.driver.verify import verify_bundle
from splitc.errors import SplitcError
from tests.cli import run_cli
from tests.digits_model import trained_digits

OPTIONS = dict(targets=("jetson", "lambda"), split=("relu_1",), exits=("relu",), accuracy_target=0.99,
               emit=("none",))


@pytest.fixture(scope="module")
def digits():
    return trained_digits()


@pytest.fixture(scope="module")
def bundle(digits, tmp_path_factory):
    model, calib = digits
    return compile_model(str(model), CompileOptions(calib=str(calib), **OPTIONS),
                         tmp_path_factory.mktemp("exitverify") / "b", input_shapes=[(1, 1, 8, 8)]).out


def _copy(bundle, tmp_path):
    out = tmp_path / "mutant"
    shutil.copytree(bundle, out)
    return out


def _negate_head(onnx_path, weight: np.ndarray) -> None:
    """Negate the initializer holding ``weight`` (the head's last Linear; as is or transposed)."""
    model = onnx.load(str(onnx_path))
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.shape in (weight.shape, weight.T.shape) and (np.array_equal(value, weight)
                                                              or np.array_equal(value, weight.T)):
            init.CopyFrom(numpy_helper.from_array(-value, init.name))
            onnx.save(model, str(onnx_path))
            return
    raise AssertionError(f"no initializer of {onnx_path} holds the exit head's weight")


def _rehash(bundle, manifest, part_index: int) -> None:
    part = manifest["partitions"][part_index]
    part["sha256"] = hashlib.sha256((bundle / part["file"]).read_bytes()).hexdigest()


def _verify_cli(capsys, bundle, calib) -> tuple[int, str]:
    code, out, err = run_cli(capsys, "verify", str(bundle), "--inputs", str(calib))
    return code, out + err


def test_verify_passes_on_the_compiled_bundle(capsys, bundle, digits):
    manifest = json.loads((bundle / "manifest.json").read_text())
    check = manifest["verification"]["exits"]
    assert check["passed"] and check["complete"] and check["mismatches"] == 0 and check["max_score_diff"] < 1e-4
    assert all(c["taken"] and c["continued"] for c in check["coverage"])  # both sides of the threshold exercised
    code, text = _verify_cli(capsys, bundle, digits[1])
    assert code == 0 and "PASSED" in text and "0 decision(s) differ" in text, text
    report = verify_bundle(bundle, samples=2)  # random inputs (+ the compile's calibration digits if needed)
    assert report.passed and report.exits["complete"]


def test_negated_exit_head_fails_splitc_verify(capsys, bundle, digits, tmp_path):
    mutant = _copy(bundle, tmp_path)
    manifest = json.loads((mutant / "manifest.json").read_text())
    exit0 = manifest["exits"][0]
    with np.load(mutant / exit0["head"]["weights"]["file"]) as data:
        weight = data["2.weight"]
    _negate_head(mutant / manifest["partitions"][exit0["partition"]]["file"], weight)
    _rehash(mutant, manifest, exit0["partition"])  # the file changed "legitimately": only the numbers can tell
    (mutant / "manifest.json").write_text(json.dumps(manifest))
    code, text = _verify_cli(capsys, mutant, digits[1])
    assert code == 1 and "FAILED" in text and "differ from PyTorch" in text, text
    report = verify_bundle(mutant, inputs=digits[1])
    assert not report.passed and (report.exits["mismatches"] > 0 or report.exits["score_mismatches"] > 0)


def test_changed_threshold_fails_splitc_verify(capsys, bundle, digits, tmp_path):
    mutant = _copy(bundle, tmp_path)
    manifest = json.loads((mutant / "manifest.json").read_text())
    manifest["exits"][0]["threshold"] = min(0.999, manifest["exits"][0]["threshold"] + 0.05)
    (mutant / "manifest.json").write_text(json.dumps(manifest))
    code, text = _verify_cli(capsys, mutant, digits[1])
    assert code == 1 and "FAILED" in text and "manifest threshold" in text, text
    report = verify_bundle(mutant, inputs=digits[1])
    assert not report.passed and report.exits["mismatches"] > 0  # decisions between the two thresholds differ too


def test_changed_head_record_fails_splitc_verify(capsys, bundle, digits, tmp_path):
    mutant = _copy(bundle, tmp_path)
    manifest = json.loads((mutant / "manifest.json").read_text())
    weights = manifest["exits"][0]["head"]["weights"]
    path = mutant / weights["file"]
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["2.bias"] = arrays["2.bias"] + np.linspace(-2, 2, arrays["2.bias"].size, dtype=np.float32)
    np.savez(path, **arrays)
    code, text = _verify_cli(capsys, mutant, digits[1])  # sha256 not updated: the file check catches it
    assert code == 2 and "does not match its sha256" in text, text
    weights["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (mutant / "manifest.json").write_text(json.dumps(manifest))
    code, text = _verify_cli(capsys, mutant, digits[1])  # updated: the numbers catch it
    assert code == 1 and "FAILED" in text, text


def test_a_check_that_cannot_be_made_fails(capsys, bundle, digits, tmp_path):
    mutant = _copy(bundle, tmp_path)
    manifest = json.loads((mutant / "manifest.json").read_text())
    manifest["exits"][0]["node"] = "no_such_node"
    (mutant / "manifest.json").write_text(json.dumps(manifest))
    code, text = _verify_cli(capsys, mutant, digits[1])
    assert code == 1 and "exits: FAILED: not checked" in text and "no_such_node" in text, text


@pytest.mark.slow
def test_negated_exit_head_fails_compile_time_verification(digits, tmp_path, monkeypatch):
    model, calib = digits
    export = pipeline._export_all

    def export_then_negate(ctx, stage, folders):  # a compiler bug that flips the exported head's sign
        exported = export(ctx, stage, folders)
        chosen = ctx.exits.chosen[0]
        part = next(p for p in ctx.partitions if ctx.exits.tensor_names[chosen.candidate.node][0] in p.outputs)
        path = stage / exported[part.index]["file"]
        _negate_head(path, chosen.candidate.head.mlp[2].weight.detach().numpy())
        exported[part.index]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # consistent, as a bug would be
        return exported

    monkeypatch.setattr(pipeline, "_export_all", export_then_negate)
    # the partition-by-partition reference check sees the flipped head's logits before the exit decisions are compared
    with pytest.raises(SplitcError, match="verification failed: partition 0 .*'exit0_logits'"):
        compile_model(str(model), CompileOptions(calib=str(calib), **OPTIONS), tmp_path / "b",
                      input_shapes=[(1, 1, 8, 8)])
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_changed_threshold_fails_compile_time_verification(digits, tmp_path, monkeypatch):
    model, calib = digits
    written = heads.exits_manifest

    def shifted(*args, **kwargs):  # a compiler bug that writes another threshold than the calibrated one
        out = written(*args, **kwargs)
        for entry in out:
            entry["threshold"] = min(0.999, entry["threshold"] + 0.05)
        return out

    monkeypatch.setattr(heads, "exits_manifest", shifted)
    with pytest.raises(SplitcError, match=r"exit verification failed: .*manifest threshold"):
        compile_model(str(model), CompileOptions(calib=str(calib), **OPTIONS), tmp_path / "b",
                      input_shapes=[(1, 1, 8, 8)])
    assert not (tmp_path / "b").exists()
