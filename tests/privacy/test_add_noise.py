"""add_noise: clip + Laplace noise inside the sending ONNX partition, fresh on every run, verified honestly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from splitc.driver.cli import main
from splitc.driver.manifest import validate_manifest
from splitc.errors import SplitcError
from splitc.driver.verify import verify_bundle
from splitc.privacy.add_noise import ClipLaplace, joint_norms
from tests.digits_model import CUT_4D, compile_digits, trained_digits
from tests.models import Residual

EPSILON = 100.0  # the digits cut carries 1,024 elements: b = C/100 costs ~1 point of accuracy there


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def noised(tmp_path_factory):
    """The digits CNN cut after relu_1 ([1, 16, 8, 8] on the wire) with --privacy-epsilon 100."""
    out = tmp_path_factory.mktemp("noise") / "b"
    return compile_digits(out, privacy_epsilon=EPSILON, accuracy_target=0.9)


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """The same cut with 10x the noise (epsilon 10); accuracy target lowered so it compiles."""
    return compile_digits(tmp_path_factory.mktemp("noise") / "heavy", privacy_epsilon=EPSILON / 10,
                          accuracy_target=0.2, verify=False)


def _clean_clipped(result, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's clipped tensor without noise, and before clipping, for input ``x``."""
    ctx = result.prepared.ctx
    part = ctx.partitions[ctx.noise.partition]
    module = part.graph_module.get_submodule(ctx.noise.attr)
    seen = {}
    handle = module.register_forward_hook(lambda _m, args, out: seen.update(raw=args[0], clean=out[0]))
    with module.clean(), torch.no_grad():
        part.graph_module(torch.from_numpy(x))
    handle.remove()
    return seen["clean"].numpy(), seen["raw"].numpy()


# -- the module itself ----------------------------------------------------------------------------


def test_laplace_module_scale_and_joint_clip():
    """mean |n| = b and median |n| = b ln 2 (Laplace); the clip is one L2 norm over both tensors."""
    torch.manual_seed(0)
    b = 0.3
    module = ClipLaplace(clip_norm=5.0, scale=b)
    a, c = torch.randn(4, 8, 50, 50) * 3, torch.randn(4, 100) * 3  # norms ~ 430: all clipped
    with torch.no_grad():
        noisy = module(a, c)
        with module.clean():
            clean = module(a, c)
    assert torch.allclose(joint_norms(list(clean)), torch.full((4,), 5.0), rtol=1e-5)
    ratio = clean[0] / a  # one factor for both tensors of a sample
    assert torch.allclose(ratio[:, 0, 0, 0], (clean[1] / c)[:, 0], rtol=1e-4)
    n = torch.cat([(x - y).flatten() for x, y in zip(noisy, clean)])
    assert n.numel() > 80_000
    assert abs(n.abs().mean().item() - b) < 0.02 * b
    assert abs(n.abs().median().item() - b * math.log(2)) < 0.03 * b
    assert abs(n.mean().item()) < 0.02 * b and n.abs().max().item() <= 16.7 * b  # log clamped away from 0
    small = torch.randn(2, 3) * 0.01  # inside the ball: not scaled
    with torch.no_grad(), module.clean():
        assert torch.equal(module(small)[0], small)


# -- the compiled bundle --------------------------------------------------------------------------


def test_noise_op_is_in_the_sending_onnx_and_fresh_every_run(noised, tmp_path):
    manifest = noised.manifest
    sender, receiver = (noised.out / p["file"] for p in manifest["partitions"])
    ops = {node.op_type for node in onnx.load(str(sender)).graph.node}
    assert "RandomUniformLike" in ops and "Log" in ops  # onnxsim did not constant-fold it away
    assert "RandomUniformLike" not in {node.op_type for node in onnx.load(str(receiver)).graph.node}
    x = np.load(trained_digits()[1])["x"][:1]
    session = _session(sender)
    first, second = (session.run(None, {"x": x})[0] for _ in range(2))
    assert (first != second).mean() > 0.99
    # a fresh process (new ONNX Runtime seed) draws other noise: the sequence is not fixed per bundle
    script = ("import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], "
              "providers=['CPUExecutionProvider']); np.save(sys.argv[2], s.run(None, {'x': np.load(sys.argv[3])})[0])")
    np.save(tmp_path / "x.npy", x)
    outs = []
    for k in range(2):
        subprocess.run([sys.executable, "-c", script, str(sender), str(tmp_path / f"o{k}.npy"),
                        str(tmp_path / "x.npy")], check=True, timeout=60)
        outs.append(np.load(tmp_path / f"o{k}.npy"))
    assert (outs[0] != outs[1]).mean() > 0.99 and (outs[0] != first).mean() > 0.99


def test_onnx_noise_has_the_laplace_scale_and_the_clip_holds(noised):
    setup = noised.prepared.ctx.noise
    sender = _session(noised.out / noised.manifest["partitions"][0]["file"])
    x = np.load(trained_digits()[1])["x"]
    residual = []
    for i in range(4):
        clean, raw = _clean_clipped(noised, x[i:i + 1])
        assert np.linalg.norm(clean) <= setup.clip_norm * (1 + 1e-5)
        assert np.isclose(np.linalg.norm(clean), min(np.linalg.norm(raw), setup.clip_norm), rtol=1e-5)
        residual += [sender.run(None, {"x": x[i:i + 1]})[0] - clean for _ in range(12)]
    n = np.concatenate([r.ravel() for r in residual])  # 49,152 draws
    assert abs(np.abs(n).mean() / setup.scale - 1) < 0.03
    assert abs(np.median(np.abs(n)) / (setup.scale * math.log(2)) - 1) < 0.04
    assert abs(n.mean()) < 0.03 * setup.scale


def test_manifest_records_the_noise(noised):
    manifest = noised.manifest
    validate_manifest(manifest)
    noise = manifest["transfers"][0]["noise"]
    stats = noise["calibration_norms"]
    assert noise["kind"] == "laplace" and noise["epsilon"] == EPSILON and noise["in_graph"] is True
    assert noise["clip_norm"] == pytest.approx(stats["median"]) and "median" in noise["clip_source"]
    assert stats["p10"] < noise["clip_norm"] < stats["p90"] and stats["clipped_share"] == pytest.approx(0.5, abs=0.01)
    assert noise["scale"] == pytest.approx(noise["clip_norm"] / EPSILON)
    assert noise["tensors"] == [CUT_4D] and noise["elements"] == 16 * 8 * 8 and noise["partition"] == 0
    assert noise["formal_epsilon_bound"] == pytest.approx(EPSILON * 2 * 32)  # 2 sqrt(D) epsilon, D = 1,024
    assert "RandomUniformLike" in manifest["partitions"][0]["op_types"]
    on_disk = json.loads((noised.out / "manifest.json").read_text())
    assert on_disk["transfers"][0]["noise"] == noise


def test_verification_checks_receivers_exactly_and_the_sender_statistically(noised):
    verification = noised.manifest["verification"]
    assert verification["passed"] and verification["method"] == "tier_by_tier_with_noise_statistics"
    assert verification["max_rel_error"] < 1e-3  # the receiving tier, fed the same noised tensor
    stats = verification["noise"]
    assert abs(stats["mean_abs_noise"] - stats["scale_b"]) <= stats["mean_abs_tolerance"]
    assert stats["averaged_residual_rms"] <= stats["averaged_rms_limit"] and stats["differing_share"] > 0.99
    assert stats["clean_norm_max"] <= stats["clip_norm"] * (1 + 1e-5)
    accuracy = verification["accuracy"]  # the real bundle, noise and all, on held-out digits
    assert accuracy["accuracy"] >= accuracy["required_accuracy"]
    assert accuracy["accuracy"] >= accuracy["reference_accuracy"] - 0.05


def _scale_initializers(model: onnx.ModelProto, pick, factor: float) -> int:
    """Multiply the float initializers / Constant tensors ``pick`` selects by ``factor``; returns how many."""
    from onnx import numpy_helper

    changed = 0
    tensors = list(model.graph.initializer) + [a.t for node in model.graph.node if node.op_type == "Constant"
                                               for a in node.attribute if a.name == "value"]
    for tensor in tensors:
        value = numpy_helper.to_array(tensor)
        if value.dtype == np.float32 and pick(value):
            tensor.CopyFrom(numpy_helper.from_array((value * factor).astype(np.float32), tensor.name))
            changed += 1
    return changed


@pytest.mark.parametrize("broken", ["receiver weights", "sender noise scale"])
def test_verification_fails_when_a_tier_is_broken(noised, tmp_path, broken):
    from tests.driver.mutate import copy_bundle, rehash

    bundle = copy_bundle(noised.out, tmp_path / "b")
    ctx = noised.prepared.ctx
    index = 1 if broken == "receiver weights" else 0
    path = bundle / noised.manifest["partitions"][index]["file"]
    model = onnx.load(str(path))
    b = ctx.noise.scale
    pick = (lambda v: v.size > 16) if index == 1 else (lambda v: v.size == 1 and np.isclose(abs(float(v)), b))
    assert _scale_initializers(model, pick, 1.5) >= 1
    onnx.save(model, str(path))
    rehash(bundle)  # the manifest's sha256 updated: only the numeric checks can catch it
    module = noised.prepared.loaded.module
    assert verify_bundle(noised.out, module).passed  # the intact bundle passes...
    report = verify_bundle(bundle, module)           # ...the broken one does not
    assert report.status == "failed"
    assert report.failures[0].startswith("partition 1" if index == 1 else "noise (link 0): sending tier: mean |noise|")


def test_smaller_epsilon_distorts_the_wire_more_and_fails_the_accuracy_target(noised, heavy, tmp_path):
    sender = _session(noised.out / noised.manifest["partitions"][0]["file"])
    x = np.load(trained_digits()[1])["x"][:8]
    heavy_sender = _session(heavy.out / heavy.manifest["partitions"][0]["file"])

    def distortion(session, result) -> float:
        return float(np.mean([np.linalg.norm(session.run(None, {"x": x[i:i + 1]})[0] - _clean_clipped(result, x[i:i + 1])[0])
                              for i in range(len(x))]))

    mild, strong = distortion(sender, noised), distortion(heavy_sender, heavy)
    assert strong > 8 * mild  # b is 10x larger
    with pytest.raises(SplitcError, match=r"--privacy-epsilon 1: held-out accuracy 0\.\d+ - margin 0\.\d+ = 0\.\d+ < "
                                          r"required 0\.\d+ .*raise --privacy-epsilon"):
        compile_digits(tmp_path / "too-noisy", privacy_epsilon=1.0)
    assert not (tmp_path / "too-noisy").exists()


def test_smaller_epsilon_makes_the_attacker_worse(noised, heavy):
    """H1's inversion attack on exactly what each bundle sends. Measured (300 digits, 10 epochs):
    18.4 dB at epsilon 100 vs 10.1 dB at epsilon 10; the margin asked is 3 dB."""
    privacy = pytest.importorskip("splitc.privacy.leakage")
    calib = trained_digits()[1]
    psnr = {name: privacy.attack_bundle(result.out, calib, epochs=8, max_samples=240).psnr_db
            for name, result in (("mild", noised), ("heavy", heavy))}
    assert psnr["mild"] > psnr["heavy"] + 3.0, psnr


def test_joint_clip_of_two_tensors_with_a_given_clip_three_tiers(tmp_path):
    """Residual cut inside the block: the skip and the branch cross together and share one norm."""
    torch.manual_seed(0)
    model = tmp_path / "residual.pt"
    torch.save(Residual().eval(), model)
    out = tmp_path / "b3"
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", str(model), "--input-shape", "1,3,8,8", "--target", "pi,edge,cloud-gpu", "--split",
              "a,relu_1", "--privacy-epsilon", "50", "--privacy-clip", "0.5", "--emit", "none", "-o", str(out), "-q"])
    assert exit_info.value.code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    noise = manifest["transfers"][0]["noise"]
    assert sorted(noise["tensors"]) == ["a", "relu"] and noise["clip_source"] == "--privacy-clip"
    assert noise["clip_norm"] == 0.5 and noise["scale"] == pytest.approx(0.01) and noise["elements"] == 1024
    assert "noise" not in manifest["transfers"][1]  # only the first link is perturbed
    verification = manifest["verification"]
    assert verification["noise"]["clean_norm_max"] <= 0.5 + 1e-6
    # no --calib: the numerics are checked, what the noise costs in accuracy is not: "not verified", never "passed"
    assert verification["status"] == "not verified" and not verification["passed"]
    assert {c["name"]: c["status"] for c in verification["checks"]}["accuracy"] == "not verified"
    assert all(c["status"] in ("passed", "skipped") for c in verification["checks"] if c["name"] != "accuracy")


BAD = [
    (["--privacy-epsilon", "0"], "--privacy-epsilon 0 is not a positive finite number"),
    (["--privacy-epsilon", "-2"], "--privacy-epsilon -2 is not a positive finite number"),
    (["--privacy-epsilon", "nan"], "--privacy-epsilon nan is not a positive finite number"),
    (["--privacy-epsilon", "inf"], "--privacy-epsilon inf is not a positive finite number"),
    (["--privacy-epsilon", "2", "--privacy-clip", "0"], "--privacy-clip 0 is not a positive finite number"),
    (["--privacy-clip", "1"], "--privacy-clip does nothing without --privacy-epsilon"),
    (["--privacy-epsilon", "2"], "needs calibration data to choose the clipping norm"),
    (["--privacy-epsilon", "2", "--privacy-clip", "1", "-t", "jetson"], "needs a link, but the target chain"),
    (["--privacy-epsilon", "2", "--privacy-clip", "1", "--split", "input"], "ships the raw model input 'x'"),
]


@pytest.mark.parametrize("flags,needle", BAD, ids=[n[:32] for _, n in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(flags, needle, tmp_path, capsys):
    model = tmp_path / "residual.pt"
    torch.save(Residual().eval(), model)
    target = [] if "-t" in flags else ["-t", "jetson,cloud-gpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", str(model), "--input-shape", "1,3,8,8", *target, *flags, "--emit", "none",
              "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_mnist_example_noised_deep_cut(mnist_example, tmp_path):
    """The real MNIST example: noise at the cut after layer2 keeps accuracy and passes verification.
    (epsilon 300 there gave 0.970 vs the 0.964 required minus its one-standard-error margin: rejected.)"""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    options = CompileOptions(targets=("jetson", "cloud-gpu"), split=("relu_3",),
                             calib=str(mnist_example / "calib.npz"), privacy_epsilon=1000.0, accuracy_target=0.97,
                             emit=("none",))
    result = compile_model(str(mnist_example / "mnist_cnn.pt"), options, tmp_path / "b")
    noise = result.manifest["transfers"][0]["noise"]
    assert noise["elements"] == 32 * 14 * 14 and noise["scale"] == pytest.approx(noise["clip_norm"] / 1000)
    verification = result.manifest["verification"]
    assert verification["passed"] and verification["noise"]["differing_share"] > 0.99
    accuracy = verification["accuracy"]
    assert accuracy["accuracy"] >= accuracy["required_accuracy"] and accuracy["reference_accuracy"] > 0.9
