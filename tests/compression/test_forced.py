"""A compression knob the user gave that misses the accuracy target fails the compile (issue 16.2).

One line with the rule's numbers and what to relax, exit 2, nothing written; ``--bottleneck auto``
falls back and says so. The digits CNN (real 8x8 digits) with an absolute target of 1.0 makes
every lossy knob miss for certain: a knob that changes even one prediction is below it.
"""

from __future__ import annotations

import logging

import pytest

from splitc.compression.forced import accepting_target, missed
from splitc.core.accuracy import AccuracyTarget, Verdict
from splitc.errors import SplitcError
from tests.cli import run_cli
from tests.digits_model import CUT_4D, compile_digits, trained_digits

#: above what the digits CNN reaches on the held-out digits (0.994): every knob misses, and the error's suggested
#: target is what the knob really kept
STRICT = {"accuracy_target": 1.0, "absolute_accuracy": True}


def test_the_error_names_the_numbers_and_the_target_that_would_accept_it() -> None:
    verdict = Verdict("--bottleneck 0.125 at 'relu_3'", 0.9633, 0.9603, 0.0045, "one standard error",
                      AccuracyTarget(0.99), reference=0.97, samples=300)
    assert not verdict.met
    assert accepting_target(verdict) == 0.988  # (0.9633 - 0.0045) / 0.97 = 0.98845...
    error = missed(verdict, "a larger ratio (--bottleneck 0.25)")
    line = error.one_line()
    assert "held-out accuracy 0.9633 - margin 0.0045 = 0.9588 < required 0.9603" in line
    assert "nothing was written" in line and "--accuracy-target 0.988 would accept it" in line
    assert "a larger ratio (--bottleneck 0.25)" in line and "\n" not in line


@pytest.mark.parametrize("knob,needle", [
    ({"bottleneck": "0.125"}, "--bottleneck 0.125 at 'relu_1'"),
    ({"transfer_dtype": "uint8"}, "--transfer-dtype uint8"),
    ({"quantize": "int8"}, "--quantize int8 (first/last layer of each partition kept in float, ONNX Runtime)"),
])
def test_a_forced_knob_that_misses_fails_and_writes_nothing(knob, needle, tmp_path) -> None:
    out = tmp_path / "b"
    with pytest.raises(SplitcError) as info:
        compile_digits(out, **knob, **STRICT)
    line = info.value.one_line()
    assert needle in line and "< required 1.0000" in line and "nothing was written" in line and "relax:" in line
    assert "--absolute-accuracy would accept it" in line
    assert not out.exists() and not list(tmp_path.iterdir())  # no bundle, no staging folder left behind


def test_forced_prune_that_misses_fails(tmp_path) -> None:
    pytest.importorskip("torch_pruning")
    with pytest.raises(SplitcError, match=r"--prune 0.5 \(after fine-tuning\).*relax:.*--prune 0.25"):
        compile_digits(tmp_path / "b", prune=0.5, **STRICT)
    assert not (tmp_path / "b").exists()


def test_cli_exit_2_one_line(tmp_path, capsys) -> None:
    model, calib = trained_digits()
    code, out, err = run_cli(capsys, "compile", str(model), "-t", "jetson,cloud-gpu", "--split", CUT_4D,
                             "--input-shape", "1,1,8,8", "--calib", str(calib), "--bottleneck", "0.125",
                             "--accuracy-target", "1.0", "--absolute-accuracy", "--emit", "none",
                             "-o", str(tmp_path / "b"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--bottleneck 0.125" in errors[0] and not (tmp_path / "b").exists()


def test_bottleneck_auto_falls_back_and_says_so(tmp_path, caplog) -> None:
    """At the [1, 16, 4, 4] cut a relative target of 1.0 (keep every prediction) leaves no bottleneck standing."""
    with caplog.at_level(logging.WARNING, logger="splitc"):
        result = compile_digits(tmp_path / "b", split="relu_2", bottleneck="auto", accuracy_target=1.0)
    assert "--bottleneck auto" in caplog.text and "no bottleneck" in caplog.text
    compression = result.manifest["plan"]["compression"]
    assert any("no bottleneck" in note for note in compression["notes"])
    assert result.manifest["transfers"][0]["tensors"][0]["encoding"] == {"kind": "raw"}
