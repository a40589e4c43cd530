"""Trained defences (``--privacy-defence``) and the strong attacker they are measured with.

Fast tests use the digits CNN (tests/digits_model.py: real 8x8 digits, trained in seconds) cut after its
first conv block (an 8x8x8 float wire); a defence trains there in ~1-6 s. Measured at these settings
(seed 0, quick attacker budget, attacker trained on what the real bundle sends in ONNX Runtime):
undefended 26.7 dB, dcor 3 22.3 dB (dcor 0.99 -> 0.68), adversarial 0.1 15.9 dB, at 98.3 % vs 99.4 %
held-out accuracy; the assertions keep wide margins below those gaps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from splitc.core.options import CompileOptions
from splitc.errors import SplitcError
from splitc.privacy.attacker import BUDGETS, train_attacker
from splitc.privacy.defence import LADDER, DefenceSettings, distance_correlation_sq_torch
from splitc.privacy.leakage import attack_bundle, distance_correlation_sq, squared_distances
from tests.cli import run_cli
from tests.digits_model import trained_digits

CUT = "relu"  # after conv1 + bn1: [1, 8, 8, 8]


def _compile(out: Path, **options):
    from splitc.driver.pipeline import compile_model

    model, calib = trained_digits()
    opts = CompileOptions(targets=("jetson", "cloud-gpu"), split=(CUT,), calib=str(calib), **options)
    return compile_model(str(model), opts, out)


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize("bias_corrected", [True, False])
def test_torch_dcor_matches_the_numpy_estimator(bias_corrected):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    z = np.tanh(x[:, :5] @ rng.normal(size=(5, 7))) + 0.3 * rng.normal(size=(40, 7))
    ours = float(distance_correlation_sq_torch(torch.tensor(x), torch.tensor(z), bias_corrected, eps=0.0))
    reference = distance_correlation_sq(squared_distances(x), squared_distances(z), bias_corrected)
    assert ours == pytest.approx(reference, abs=1e-5)
    z_t = torch.tensor(z, requires_grad=True)
    distance_correlation_sq_torch(torch.tensor(x), z_t).backward()
    assert torch.isfinite(z_t.grad).all() and z_t.grad.abs().sum() > 0  # usable as a loss


def test_hybrid_attacker_recovers_a_linear_wire_that_a_plain_decoder_does_not():
    """A wire that is a 3x3 linear map of the image: the closed-form part gets it almost exactly."""
    from sklearn.datasets import load_digits

    x = (load_digits().images[:600] / 16.0).astype(np.float32)[:, None]
    conv = torch.nn.Conv2d(1, 6, 3, padding=1)
    torch.manual_seed(0)
    with torch.no_grad():
        z = conv(torch.from_numpy(x)).numpy()
    hybrid = train_attacker([z[:500]], x[:500], family="hybrid", epochs=1, width=16)
    conv_only = train_attacker([z[:500]], x[:500], family="conv", epochs=3, width=16)
    psnr = {a.family: 10 * math.log10(1 / float(np.mean((a.reconstruct([z[500:]]) - x[500:]) ** 2)))
            for a in (hybrid, conv_only)}
    assert psnr["hybrid"] > 35 and psnr["hybrid"] > psnr["conv"] + 10, psnr


# ---------------------------------------------------------------- settings and flags


def test_settings_are_checked_once_with_one_line_errors():
    base = dict(targets=("jetson", "cloud-gpu"), calib="calib.npz")
    assert DefenceSettings.from_options(CompileOptions(**base)) is None
    assert DefenceSettings.from_options(CompileOptions(privacy_defence="none", **base)) is None
    auto = DefenceSettings.from_options(CompileOptions(privacy_defence="auto", **base))
    assert (auto.method, auto.requested, auto.strengths) == ("adversarial", "auto", LADDER["adversarial"])
    forced = DefenceSettings.from_options(CompileOptions(privacy_defence="dcor", privacy_strength=3, **base))
    assert forced.strengths == (3.0,)
    bad = [
        (dict(privacy_strength=0.1), "--privacy-strength does nothing without --privacy-defence"),
        (dict(privacy_defence="auto", privacy_strength=0.1), "picks the strength itself"),
        (dict(privacy_defence="dcor", privacy_strength=-1.0), "not a positive finite number"),
        (dict(privacy_defence="dcor", privacy_strength=float("nan")), "not a positive finite number"),
        (dict(privacy_defence="magic"), "is not one of"),
    ]
    for extra, message in bad:
        with pytest.raises(SplitcError, match=message):
            DefenceSettings.from_options(CompileOptions(**base, **extra))
    with pytest.raises(SplitcError, match="needs a link"):
        DefenceSettings.from_options(CompileOptions(targets=("jetson",), calib="c.npz", privacy_defence="auto"))
    with pytest.raises(SplitcError, match="needs calibration data"):
        DefenceSettings.from_options(CompileOptions(targets=("jetson", "cloud-gpu"), privacy_defence="auto"))


@pytest.mark.parametrize("args, message", [
    (("--privacy-strength", "0.1"), "error: --privacy-strength does nothing without --privacy-defence"),
    (("--privacy-defence", "auto", "--privacy-strength", "0.1"), "error: --privacy-defence auto picks the strength"),
    (("--privacy-defence", "dcor", "--privacy-strength", "0"), "error: --privacy-strength 0 is not a positive"),
])
def test_cli_flag_errors_are_one_line_exit_2_before_any_work(args, message, tmp_path, capsys):
    model, calib = trained_digits()
    code, out, err = run_cli(capsys, "compile", str(model), "--target", "jetson,cloud-gpu", "--calib", str(calib),
                             "-o", str(tmp_path / "b"), *args)
    assert code == 2 and err.startswith(message), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_cli_rejects_an_unknown_defence(tmp_path, capsys):
    model, calib = trained_digits()
    code, out, err = run_cli(capsys, "compile", str(model), "--target", "jetson,cloud-gpu", "--calib", str(calib),
                             "-o", str(tmp_path / "b"), "--privacy-defence", "shredder")
    assert code == 2 and "'shredder' is not one of" in err


# ---------------------------------------------------------------- the defence in a compile


def test_defence_lowers_dcor_and_the_attack_of_the_real_bundle(tmp_path):
    _, calib = trained_digits()
    plain = _compile(tmp_path / "none")
    defended = {m: _compile(tmp_path / m, privacy_defence=m, privacy_strength=s, accuracy_target=0.95)
                for m, s in (("dcor", 3.0), ("adversarial", 0.1))}
    psnr = {"none": attack_bundle(plain.out, calib, budget=BUDGETS["quick"]).psnr_db}
    for method, result in defended.items():
        record = result.manifest["transfers"][0]["defence"]
        assert record["method"] == method and record["requested"] == method
        assert record["held_out_accuracy"] >= 0.95 * 0.99
        psnr[method] = attack_bundle(result.out, calib, budget=BUDGETS["quick"]).psnr_db
    assert defended["dcor"].manifest["transfers"][0]["defence"]["dcor_after"] < \
        defended["dcor"].manifest["transfers"][0]["defence"]["dcor_before"] - 0.1
    # measured 26.7 / 22.3 / 15.9 dB
    assert psnr["dcor"] < psnr["none"] - 2.0, psnr
    assert psnr["adversarial"] < psnr["none"] - 5.0, psnr
    assert "defence: adversarial strength 0.1" in (defended["adversarial"].out / "report.md").read_text()


def test_forced_strength_that_misses_fails_with_the_verdict_and_writes_nothing(tmp_path, capsys):
    model, calib = trained_digits()
    code, out, err = run_cli(capsys, "compile", str(model), "--target", "jetson,cloud-gpu", "--calib", str(calib),
                             "--split", CUT, "-o", str(tmp_path / "b"), "-q",
                             "--privacy-defence", "dcor", "--privacy-strength", "1000")  # measured: 11 % accuracy
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # + the guard's logged verdict
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: the defence misses the accuracy target: --privacy-defence dcor "
                               "--privacy-strength 1000: held-out accuracy")
    assert "required" in lines[0] and "missed" in lines[0]
    assert not (tmp_path / "b").exists()


def test_auto_keeps_the_strongest_passing_strength_and_records_it(tmp_path, capsys):
    model, calib = trained_digits()
    out = tmp_path / "b"
    code, stdout, err = run_cli(capsys, "compile", str(model), "--target", "jetson,cloud-gpu", "--calib", str(calib),
                                "--split", CUT, "-o", str(out), "--privacy-defence", "auto",
                                "--accuracy-target", "0.97")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["transfers"][0]["defence"]
    assert record["requested"] == "auto" and record["method"] == "adversarial"
    tried = record["tried"]
    assert [t["strength"] for t in tried] == list(LADDER["adversarial"][:len(tried)])  # strongest first
    assert tried[-1]["met"] and not any(t["met"] for t in tried[:-1]) and record["strength"] == tried[-1]["strength"]
    assert record["trained_on"]["source"] == str(calib) and record["trained_on"]["samples"] > 0
    verdicts = [v["step"] for v in manifest["accuracy"]["verdicts"]]
    assert any(v.startswith("--privacy-defence adversarial") for v in verdicts)
    assert manifest["verification"]["passed"]
    assert "defence: adversarial" in stdout


def test_defence_is_reproducible(tmp_path):
    a = _compile(tmp_path / "a", privacy_defence="dcor", privacy_strength=3.0, accuracy_target=0.95)
    b = _compile(tmp_path / "b", privacy_defence="dcor", privacy_strength=3.0, accuracy_target=0.95)
    assert [p["sha256"] for p in a.manifest["partitions"]] == [p["sha256"] for p in b.manifest["partitions"]]


def test_noise_and_defence_apply_in_order(tmp_path):
    """The defended sender is what gets clipped and noised: both records sit on the transfer."""
    result = _compile(tmp_path / "b", privacy_defence="dcor", privacy_strength=3.0, privacy_epsilon=1000.0,
                      accuracy_target=0.9)
    transfer = result.manifest["transfers"][0]
    assert transfer["defence"]["method"] == "dcor" and transfer["noise"]["epsilon"] == 1000.0
    steps = [v["step"] for v in result.manifest["accuracy"]["verdicts"]]
    assert steps.index(next(s for s in steps if s.startswith("--privacy-defence"))) < \
        steps.index(next(s for s in steps if s.startswith("--privacy-epsilon")))


@pytest.mark.slow
def test_mnist_stem_defence_beats_the_undefended_stem_against_a_fresh_attacker(mnist_example, tmp_path):
    """The issue's done-means command on the MNIST example (~8 minutes on two busy cores). Measured (attacker trained on
    calib.npz, scored on test.npz, default budget): undefended 46.4 dB, auto (picked 0.03) 42.4 dB, 97.3 -> 96.9 %."""
    calib = mnist_example / "calib.npz"
    # 0.98: the test is about privacy; at 0.99 the weakest strength sits on the accuracy guard's margin (measured
    # 97.00 % - 0.47 pt < 96.69 % required of a 97.67 % original)
    base = dict(targets=("jetson", "cloud-gpu"), split=("stem_2",), calib=str(calib), accuracy_target=0.98)
    from splitc.driver.pipeline import compile_model

    plain = compile_model(str(mnist_example / "mnist_cnn.pt"), CompileOptions(**base), tmp_path / "none")
    defended = compile_model(str(mnist_example / "mnist_cnn.pt"), CompileOptions(privacy_defence="auto", **base),
                             tmp_path / "auto")
    test = mnist_example / "test.npz"
    none_psnr = attack_bundle(plain.out, test).psnr_db
    auto_psnr = attack_bundle(defended.out, test).psnr_db
    assert auto_psnr < none_psnr - 2.0, (none_psnr, auto_psnr)
    assert defended.manifest["transfers"][0]["defence"]["requested"] == "auto"


def test_planner_sees_the_defended_proxy_at_a_trained_cut(tmp_path, caplog):
    """--max-dcor on a forced shallow cut: undefended it leaks (warning), defended the proxy is measured lower and
    the plan's privacy figure is the defended one; the defence trained for the proxy is the one shipped."""
    plain = _compile(tmp_path / "a", max_dcor=0.9)
    assert plain.manifest["plan"]["privacy"]["dcor"] > 0.95  # measured 0.983
    caplog.clear()
    defended = _compile(tmp_path / "b", max_dcor=0.9, privacy_defence="dcor", privacy_strength=10.0,
                        accuracy_target=0.9)
    record = defended.manifest["transfers"][0]["defence"]
    assert defended.manifest["plan"]["privacy"]["dcor"] == pytest.approx(record["dcor_after"])  # measured 0.611
    assert record["dcor_after"] < 0.9 < record["dcor_before"]
    assert not any("leaks distance correlation" in r.getMessage() for r in caplog.records)
    profile = defended.prepared.ctx.privacy.to_dict()
    cut = str(defended.manifest["plan"]["cuts"][0]["index"])
    assert profile["defended"][cut]["undefended"] > 0.95 and profile["defended"][cut]["strength"] == 10.0
    assert len(record["tried"]) == 1  # trained once, for the proxy, and reused by 'defend'
