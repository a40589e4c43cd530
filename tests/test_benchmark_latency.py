"""The arithmetic of the latency benchmarks (profile_accuracy.py, end_to_end.py): summaries, noise, the checks.

The benchmarks themselves are measurements run by one command each; what they compute from the
measurements is checked here on made-up numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import end_to_end, profile_accuracy


def _row(model: str, partition: int, measured: float, predicted: float, specific: float) -> dict:
    return {"model": model, "partition": partition, "measured_ms": measured,
            "predicted": {"predicted_ms": predicted, "error": predicted / measured - 1},
            "model-specific": {"predicted_ms": specific, "error": specific / measured - 1}}


def test_summary_judges_each_mode_against_its_goals() -> None:
    rows = [_row("m", i, 10.0, 10.0 * (1 + e), 10.0 * (1 + e / 4)) for i, e in enumerate([0.05, -0.08, 0.2, 0.02])]
    summary = profile_accuracy.summarise(rows, ["predicted", "model-specific"])
    assert summary["predicted"]["median_abs_error"] == pytest.approx(0.065)
    assert summary["predicted"]["worst_abs_error"] == pytest.approx(0.2)
    assert summary["predicted"]["met"]                    # median <= 10 %, worst <= 25 %
    assert summary["model-specific"]["worst_abs_error"] == pytest.approx(0.05)
    assert summary["model-specific"]["met"]               # median <= 5 %, worst <= 15 %
    rows[2]["predicted"]["error"] = 0.3
    assert not profile_accuracy.summarise(rows, ["predicted"])["predicted"]["met"]


def test_run_to_run_spread_of_the_measurements() -> None:
    first = {"rows": [_row("m", 0, 10.0, 1, 1), _row("m", 1, 20.0, 1, 1)]}
    second = {"rows": [_row("m", 0, 11.0, 1, 1), _row("m", 1, 20.0, 1, 1)]}
    spread = profile_accuracy.run_to_run([first, second])
    assert spread["worst"] == pytest.approx(1.0 / 10.5) and spread["median"] == pytest.approx(0.5 / 10.5)
    assert profile_accuracy.run_to_run([first]) is None


def test_median_noise_is_a_bootstrap_interval() -> None:
    p50, noise = end_to_end.p50_with_noise([0.01] * 30)
    assert p50 == 0.01 and noise == 0.0
    rng = np.random.default_rng(0)
    p50, noise = end_to_end.p50_with_noise(list(0.01 + 0.002 * rng.standard_normal(60)))
    assert 0.0095 < p50 < 0.0105 and 0 < noise < 0.002
