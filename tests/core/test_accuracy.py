"""The one accuracy rule: one range check, one formula, verdicts that print every number."""

from __future__ import annotations

import numpy as np
import pytest

from splitc.core.accuracy import AccuracyGuard, AccuracyTarget, Verdict, binomial_margin, paired_margin
from splitc.core.calibration import CalibrationData
from splitc.core.options import CompileOptions
from splitc.errors import SplitcError


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1, float("nan")])
def test_out_of_range_target_is_one_line(value):
    with pytest.raises(SplitcError, match="--accuracy-target .* is out of range"):
        AccuracyTarget.from_options(CompileOptions(targets=("jetson",), accuracy_target=value))


def test_relative_and_absolute_required_accuracy():
    assert AccuracyTarget(0.99).required(0.97) == pytest.approx(0.9603)
    assert AccuracyTarget(0.95, absolute=True).required(0.97) == 0.95
    assert AccuracyTarget.from_dict(AccuracyTarget(0.9, True).to_dict()) == AccuracyTarget(0.9, True)


def test_verdict_states_the_rule_and_all_its_numbers():
    # the example: 0.9767 looks above 0.9735, but the margin decides
    verdict = Verdict("--exits auto", 0.9767, 0.9735, 0.0045, "one standard error on 300 samples",
                      AccuracyTarget(0.99), 0.9833, 300)
    assert not verdict.met
    line = verdict.line()
    for number in ("0.9767", "0.0045", "0.9722", "0.9735", "0.9833", "300 samples"):
        assert number in line
    assert "< required" in line and line.endswith("missed")
    assert Verdict("x", 0.98, 0.9735, 0.0045, "m").met


def test_margins():
    assert paired_margin(np.array([1, 1, 0, 0]), np.array([1, 1, 1, 1])) == pytest.approx(0.25)
    assert paired_margin(np.array([1, 2]), None) == 0.0
    assert binomial_margin(0.96, 300) == pytest.approx((0.96 * 0.04 / 300) ** 0.5)


def test_guard_measures_against_labels_or_agreement():
    labels = np.array([0, 1, 2, 3, 0, 1])
    calib = CalibrationData([np.zeros((6, 1, 2), np.float32)], labels, "memory")
    guard = AccuracyGuard(AccuracyTarget(0.9), calib, np.arange(3), np.arange(3, 6), ["x"], ["out"],
                          reference_predictions=np.array([3, 0, 1]), reference_accuracy=1.0)
    assert guard.measure(np.array([3, 0, 2])) == pytest.approx(2 / 3)
    verdict = guard.judge("a knob", guard.measure(np.array([3, 0, 1])))
    assert verdict.met and guard.verdicts == [verdict]
    unlabelled = AccuracyGuard(AccuracyTarget(0.9), CalibrationData(calib.inputs, None, "memory"), np.arange(3),
                               np.arange(3, 6), ["x"], ["out"], reference_predictions=np.array([3, 0, 1]))
    assert unlabelled.measure(np.array([3, 0, 2])) == pytest.approx(2 / 3)  # agreement with the original
