"""insert_exits / train_exits: exit heads are real graph nodes, their outputs leave the partition holding them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from splitc.driver.cli import main
from splitc.core.options import CompileOptions
from splitc.exits.heads import ExitHead, check_classifier, pick_candidates, position_reach
from splitc.driver.pipeline import compile_model
from splitc.driver.verify import verify_bundle
from splitc.errors import SplitcError
from splitc.core.passes.candidates import compute_candidates
from splitc.exits.insert_exits import EXIT_META, insert_exit_nodes
from splitc.core.passes.profile import ProfilePass
from splitc.runtime.runner import BundleRunner
from tests.conftest import make_context
from tests.models import Chain, MultiOutput


def _profiled(module, shape=(1, 3, 8, 8)):
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(module.eval())
    ctx = make_context([shape])
    ProfilePass().run(gm, ctx)
    return gm, ctx


def test_inserted_heads_are_nodes_after_their_feature_and_leave_the_output_alone() -> None:
    gm, ctx = _profiled(Chain())
    x = ctx.example_inputs[0]
    before = gm(x.clone())
    head = ExitHead((1, 8, 8, 8), classes=10)
    names = insert_exit_nodes(gm, [("relu", head, 1234)])
    assert names == {"relu": ("exit0_logits", "exit0_confidence")}
    order = [n.name for n in gm.graph.nodes]
    assert order[order.index("relu") + 1: order.index("relu") + 3] == ["exit0_logits", "exit0_confidence"]
    nodes = {n.name: n for n in gm.graph.nodes}
    assert nodes["exit0_logits"].target == "splitc_exit0" and isinstance(gm.splitc_exit0, ExitHead)
    assert nodes["exit0_logits"].meta[EXIT_META] == 0 and nodes["exit0_logits"].meta["splitc.flops"] == 1234
    assert list(nodes["exit0_logits"].meta["tensor_meta"].shape) == [1, 10]
    assert list(nodes["exit0_confidence"].meta["tensor_meta"].shape) == [1]
    torch.testing.assert_close(gm(x.clone()), before)  # nothing in the model reads the exits
    # exit nodes are never live across a cut: the crossing sets are the backbone's
    crossing = {c.after: c.crossing for c in compute_candidates(gm).cuts}
    assert crossing["exit0_confidence"] == crossing["relu"] == ("relu",)


def test_head_pools_to_a_grid_that_divides_the_map() -> None:
    assert ExitHead((1, 16, 28, 28), 10).grid == 4
    assert ExitHead((1, 32, 14, 14), 10).grid == 2
    assert ExitHead((1, 64, 7, 7), 10).grid == 1
    assert ExitHead((1, 5, 6), 3).grid == 0  # tokens: mean over the sequence
    scores = ExitHead((1, 16, 28, 28), 10)(torch.rand(3, 16, 28, 28))
    assert scores.shape == (3, 10)


def test_auto_candidates_are_single_tensor_cuts_spread_over_flops() -> None:
    gm, ctx = _profiled(Chain())
    candidates = compute_candidates(gm)
    picked = pick_candidates(gm, candidates, ("auto",))
    assert picked and all(candidates.cuts[p + 1].crossing == (name,) for name, p, _ in picked)
    assert [p for _, p, _ in picked] == sorted(p for _, p, _ in picked)
    assert all(0 < f < 0.9 for _, _, f in picked)
    with pytest.raises(SplitcError, match="did you mean"):
        pick_candidates(gm, candidates, ("relux",))


def test_non_classifier_is_refused() -> None:
    gm, _ = _profiled(MultiOutput())
    with pytest.raises(SplitcError, match=r"needs a classifier .* returns sigmoid \[1, 4, 8, 8\], fc \[1, 4\]"):
        check_classifier(gm)


def test_position_reach() -> None:
    assert position_reach(4, [0, 2], [0.5, 0.25]).tolist() == [1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """Random images without labels: the reference is agreement with the model itself."""
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).random((200, 3, 8, 8), dtype=np.float32))
    return path


def test_compile_with_exits_end_to_end(calib, tmp_path) -> None:
    # input shape from the calibration data; an exit forced at the forced cut: it ends tier 0's only partition
    options = CompileOptions(targets=("jetson", "cloud-gpu"), split=("relu",), exits=("relu",), calib=str(calib),
                             accuracy_target=0.9)
    result = compile_model("tests.models:chain", options, tmp_path / "b")
    manifest = result.manifest
    assert manifest["model"]["inputs"][0]["shape"] == [1, 3, 8, 8]
    assert manifest["exit_calibration"]["reference"] == "agreement"
    assert [e["node"] for e in manifest["exits"]] == ["relu"]
    exit0 = manifest["exits"][0]
    part0 = manifest["partitions"][0]
    assert [o["name"] for o in part0["outputs"]] == ["relu", "exit0_logits", "exit0_confidence"]
    assert [t["name"] for t in manifest["transfers"][0]["tensors"]] == ["relu"]  # exits never go on the wire
    assert exit0["answers"] == {"output_0": "exit0_logits"} and 0 <= exit0["threshold"] <= 1
    assert manifest["verification"]["exits"]["passed"]
    runner = BundleRunner(result.out)
    x = np.load(calib)["x"][:20]
    for i in range(len(x)):
        held = runner.run_partition(0, {"x": x[i:i + 1]})
        out = runner.run({"x": x[i:i + 1]})
        if float(held["exit0_confidence"][0]) >= exit0["threshold"]:
            np.testing.assert_allclose(out["output_0"], held["exit0_logits"], rtol=1e-6)
            assert runner.wire_bytes == []  # answered on the device: nothing sent
        else:
            assert runner.wire_bytes and runner.wire_bytes[0] > 0
    # 'splitc verify' alone rebuilds the PyTorch exits from exits/exit0.npz and compares decisions
    assert exit0["head"]["weights"]["file"] == "exits/exit0.npz"
    report = verify_bundle(result.out, inputs=None, samples=4)
    assert report.passed and report.exits["checked"] and report.exits["mismatches"] == 0
    assert report.to_dict()["exit_semantics"]["samples"] >= 4  # + calibration inputs until every exit is exercised
    assert report.exits["complete"]
    assert [t["partitions"] for t in manifest["tiers"]] == [[0], [1]]  # an exit at the cut: no extra segment


@pytest.mark.parametrize("args, message", [
    (["--exits", "auto"], "--exits needs calibration data"),
    (["--exits", "relux", "--calib", "CALIB"], "--exits node 'relux' is not a node"),
    (["--exits", "auto", "--calib", "CALIB", "--accuracy-target", "1.5"], "--accuracy-target 1.5 is out of range"),
])
def test_bad_exit_flags_are_one_line(capsys, calib, tmp_path, args, message) -> None:
    argv = ["compile", "tests.models:chain", "-t", "jetson,cloud-gpu", "-q", "-o", str(tmp_path / "b"),
            *[str(calib) if a == "CALIB" else a for a in args]]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_non_classifier_cli(capsys, calib, tmp_path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compile", "tests.models:MultiOutput", "-t", "jetson,cloud-gpu", "--exits", "auto", "--calib", str(calib),
              "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "needs a classifier" in err
