"""Privacy evaluation: the distance-correlation proxy, the inversion attack, ``splitc privacy``.

The MNIST tests use the session's real MNIST example (``mnist_example``: real digits, a
really trained CNN); attacks run with small budgets (few epochs, a few hundred samples)
so each test stays under ~20 s on two busy cores. The margins were chosen from
measurements at these budgets (see each test).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from splitc.core.options import CompileOptions
from splitc.privacy.leakage import (NOT_IMAGE_NOTE, PrivacyProfile, attack_cut, distance_correlation,
                                     distance_correlation_sq, profile_privacy, rank_disagreements,
                                     shallowest_cut, squared_distances)
from splitc.errors import SplitcError
from splitc.core.passes.candidates import CandidatesPass
from splitc.privacy.privacy_profile import PrivacyProfilePass
from splitc.core.passes.profile import ProfilePass
from splitc.driver.validate import validate_options
from tests.cli import run_cli
from tests.conftest import make_context

# ---------------------------------------------------------------- distance correlation on known distributions


def _reference_dcor_sq(x: np.ndarray, y: np.ndarray, bias_corrected: bool) -> float:
    """Székely's formulas written out element by element (O(n^2) loops), independent of the vectorised code."""
    n = len(x)
    a = [[float(np.linalg.norm(x[i] - x[j])) for j in range(n)] for i in range(n)]
    b = [[float(np.linalg.norm(y[i] - y[j])) for j in range(n)] for i in range(n)]

    def centre(d):
        rows = [sum(r) for r in d]
        total = sum(rows)
        out = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if bias_corrected:
                    out[i][j] = 0.0 if i == j else \
                        d[i][j] - rows[i] / (n - 2) - rows[j] / (n - 2) + total / ((n - 1) * (n - 2))
                else:
                    out[i][j] = d[i][j] - rows[i] / n - rows[j] / n + total / n ** 2
        return out

    A, B = centre(a), centre(b)
    norm = n * (n - 3) if bias_corrected else n * n
    dot = lambda P, Q: sum(P[i][j] * Q[i][j] for i in range(n) for j in range(n)) / norm  # noqa: E731
    return dot(A, B) / math.sqrt(dot(A, A) * dot(B, B))


@pytest.mark.parametrize("bias_corrected", [True, False])
def test_dcor_matches_the_elementwise_reference(bias_corrected):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    y = np.concatenate([x ** 2, rng.normal(size=(30, 2))], 1)  # dependent, not linearly
    want = _reference_dcor_sq(x, y, bias_corrected)
    got = distance_correlation_sq(squared_distances(x), squared_distances(y), bias_corrected)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_dcor_known_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert distance_correlation(x, x) == pytest.approx(1.0, abs=1e-9)
    assert distance_correlation(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0, abs=1e-9)  # similarity transform
    independent = distance_correlation(x, rng.normal(size=(200, 8)))
    assert independent < 0.12, independent
    # the classic V-statistic is biased upwards in high dimension; the default estimator is not
    wide_a, wide_b = rng.normal(size=(100, 2000)), rng.normal(size=(100, 2000))
    assert distance_correlation(wide_a, wide_b, bias_corrected=False) > 0.8
    assert distance_correlation(wide_a, wide_b) < 0.15
    noisy = distance_correlation(x, x + rng.normal(scale=1.0, size=x.shape))
    assert independent < noisy < 1.0
    assert distance_correlation(x, np.ones((200, 3))) == 0.0  # a constant carries nothing


def test_leakage_is_needed_only_when_privacy_is_weighted_or_constrained():
    from splitc.planning.plan import PlanSettings

    base = dict(targets=("jetson", "cloud-gpu"))

    def needs(**kw) -> bool:
        return "leakage" in PlanSettings.from_options(CompileOptions(**base, **kw)).needs

    assert not needs()
    assert needs(objective="privacy")
    assert needs(max_dcor=0.5)
    assert needs(objective="weighted", weights=("latency=1", "privacy=0.5"))
    assert not needs(objective="weighted", weights=("latency=1", "privacy=0"))


def test_rank_disagreements_reports_only_real_swaps():
    labels = ["a", "b", "c"]
    assert rank_disagreements(labels, [0.9, 0.8, 0.5], [25.0, 20.0, 12.0]) == []
    swapped = rank_disagreements(labels, [0.9, 0.8, 0.5], [25.0, 12.0, 20.0])
    assert len(swapped) == 1 and "b" in swapped[0] and "c" in swapped[0]
    assert rank_disagreements(labels, [0.9, 0.8, 0.5], [25.0, 20.0, 20.2]) == []  # within decoder noise


# ---------------------------------------------------------------- the pass, on a tiny model


class _Mlp(nn.Module):
    """Not an image model: 20 features in, 4 classes out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _analysed(model, shape, **options):
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(model.eval())
    ctx = make_context([shape], **options)
    for settings in validate_options(ctx.options, compile=False):  # as the driver does before any pass
        ctx.set_settings(settings)
    ProfilePass().run(gm, ctx)
    CandidatesPass().run(gm, ctx)
    return gm, ctx


def test_pass_is_a_noop_unless_privacy_is_requested():
    gm, ctx = _analysed(_Mlp(), (1, 20))
    result = PrivacyProfilePass().run(gm, ctx)
    assert "skipped" in result.summary and ctx.privacy is None


def test_pass_without_calibration_is_a_user_error():
    gm, ctx = _analysed(_Mlp(), (1, 20), objective="privacy")
    with pytest.raises(SplitcError, match="privacy needs calibration data") as info:
        PrivacyProfilePass().run(gm, ctx)
    assert "--calib" in info.value.one_line()


def test_pass_profiles_every_cut_and_batched_equals_one_at_a_time():
    from splitc.core.calibration import CalibrationData

    gm, ctx = _analysed(_Mlp(), (1, 20), max_dcor=0.9)
    x = np.random.default_rng(0).normal(size=(96, 20)).astype(np.float32)
    ctx.calibration = CalibrationData([x], None, "synthetic")
    PrivacyProfilePass().run(gm, ctx)
    profile = ctx.privacy
    assert isinstance(profile, PrivacyProfile) and profile.samples == 96
    assert profile.dcor.shape == (len(ctx.candidates.cuts),)
    assert profile.dcor[0] == 1.0 and np.all((profile.dcor >= 0) & (profile.dcor <= 1))
    assert "batched" in profile.method
    one = profile_privacy(gm, ctx.candidates, x, batch=1)
    assert "one sample at a time" in one.method
    np.testing.assert_allclose(one.dcor, profile.dcor, atol=1e-6)
    assert json.loads(json.dumps(profile.to_dict()))["dcor"][0] == 1.0


def test_non_image_input_reports_mse_psnr_with_a_note():
    gm, ctx = _analysed(_Mlp(), (1, 20))
    x = np.random.default_rng(0).uniform(size=(160, 20)).astype(np.float32)
    result = attack_cut(gm, ctx.candidates, 1, x, epochs=20)
    assert result.ssim is None and result.note == NOT_IMAGE_NOTE
    assert result.grid_png is None
    assert 0 < result.mse < np.var(x)  # fc1 is a wide linear map: the attacker beats guessing the mean
    assert result.psnr_db == pytest.approx(10 * math.log10(result.data_range ** 2 / result.mse))
    assert result.samples == 32 and result.train_samples == 128  # disjoint 80/20 split


# ---------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def mnist_graph(mnist_example):
    """The trained MNIST CNN, traced and analysed up to the candidates, and its calibration data."""
    from splitc.core.pass_manager import PassManager
    from splitc.driver.pipeline import default_passes, prepare

    options = CompileOptions(targets=("jetson", "cloud-gpu"), calib=str(mnist_example / "calib.npz"))
    prepared = prepare(str(mnist_example / "mnist_cnn.pt"), options)
    passes = []
    for p in default_passes():
        passes.append(p)
        if isinstance(p, CandidatesPass):
            break
    gm = PassManager(passes).run(prepared.traced.graph_module, prepared.ctx)
    return gm, prepared.ctx.candidates, prepared.ctx.calibration


def test_proxy_falls_with_depth_on_mnist(mnist_graph):
    gm, candidates, calib = mnist_graph
    profile = profile_privacy(gm, candidates, calib.inputs, samples=128)
    dcor = profile.dcor
    last = len(candidates.nodes)
    assert dcor[0] == 1.0
    # measured: ~0.99 after the stem, ~0.89 after layer2, ~0.67 at the logits
    assert dcor[shallowest_cut(candidates)] > 0.95
    assert dcor[last] < dcor[shallowest_cut(candidates)] - 0.15
    assert any("count-sketched" in n for n in profile.notes)  # 16x28x28 activations exceed the sketch size


def test_attacker_is_worse_at_a_deeper_cut_and_the_proxy_agrees(mnist_graph, tmp_path):
    gm, candidates, calib = mnist_graph
    shallow, deep = shallowest_cut(candidates), len(candidates.nodes)  # after the stem conv / the logits
    profile = profile_privacy(gm, candidates, calib.inputs, samples=128)
    results = {k: attack_cut(gm, candidates, k, calib.inputs, epochs=6, max_samples=400, png=tmp_path / f"{k}.png")
               for k in (shallow, deep)}
    # measured at this budget: ~21-27 dB after the stem conv, ~12 dB from the logits (blurred class means)
    gap = results[shallow].psnr_db - results[deep].psnr_db
    assert gap >= 3.0, {k: r.to_dict() for k, r in results.items()}
    assert results[shallow].ssim > results[deep].ssim
    for r in results.values():
        assert r.samples == 80 and r.train_samples == 320
        assert (tmp_path / f"{r.label.split()[1]}.png").exists()
    mismatches = rank_disagreements([r.label for r in results.values()], [profile.dcor[k] for k in results],
                                    [r.psnr_db for r in results.values()])
    assert not mismatches, mismatches  # shallowest vs deepest reversed would mean the proxy is useless


def test_bundle_attack_sees_exactly_what_the_bundle_sends(mnist_graph, mnist_example, tmp_path):
    """A uint8 wire costs the attacker almost nothing; what it attacks is the decoded wire of the real bundle."""
    from splitc.driver.pipeline import compile_model
    from splitc.privacy.leakage import attack_bundle

    gm, candidates, calib = mnist_graph
    options = CompileOptions(targets=("jetson", "cloud-gpu"), split=("relu_3",), transfer_dtype="uint8",
                             calib=str(mnist_example / "calib.npz"))
    bundle = compile_model(str(mnist_example / "mnist_cnn.pt"), options, tmp_path / "b").out
    on_wire = attack_bundle(bundle, mnist_example / "calib.npz", epochs=4, max_samples=300, png=tmp_path / "w.png")
    in_graph = attack_cut(gm, candidates, candidates.index_of("relu_3"), calib.inputs, epochs=4, max_samples=300)
    assert on_wire.samples == in_graph.samples == 60
    assert abs(on_wire.psnr_db - in_graph.psnr_db) < 1.5, (on_wire.to_dict(), in_graph.to_dict())
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_privacy_on_mnist_writes_the_report(mnist_example, tmp_path, capsys):
    report = tmp_path / "report"
    code, out, err = run_cli(capsys, "privacy", str(mnist_example / "mnist_cnn.pt"), "--target", "jetson,cloud-gpu",
                              "--calib", str(mnist_example / "calib.npz"), "--top", "1", "--epochs", "3",
                              "--samples", "64", "--max-samples", "200", "--report", str(report))
    assert code == 0, err
    assert "dcor" in out and "PSNR" in out and "reference: shallowest" in out
    assert "proxy vs attack" in out
    assert "[privacy] attack" in err  # progress lines on the long steps
    payload = json.loads((report / "privacy.json").read_text())
    assert (report / "privacy.md").read_text().startswith("# splitc privacy report")
    assert 1 <= len(payload["attacks"]) <= 2
    for attack in payload["attacks"]:
        assert attack["ssim"] is not None and attack["psnr_db"] > 0
        assert (report / f"attack_cut{attack['index']}_{attack['after']}.png").exists()


def test_cli_privacy_without_calib_is_one_line_exit_2(mnist_example, capsys):
    code, out, err = run_cli(capsys, "privacy", str(mnist_example / "mnist_cnn.pt"), "--target", "jetson,cloud-gpu")
    assert code == 2
    assert err.startswith("error: splitc privacy needs calibration data") and "--calib" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
