"""A tier cut into segments around its early exit: the manifest lists them, the runner runs them in order with the
exit rule after each (``tier_step`` keeps its contract), a 1.0 manifest still runs, servers honour it, and every
segment is a plain static graph TensorRT's ONNX parser takes.

The bundle: the digits CNN (trained on real 8x8 digits) on jetson -> aws-lambda, cut after ``relu_1``, with an exit
forced at ``relu`` -- inside the device's work, so the device runs ``conv1 .. exit0`` and then ``conv2 .. relu_1``.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from splitc.backends.tensorrt import check_ops
from splitc.core.options import CompileOptions
from splitc.driver.manifest import validate_manifest
from splitc.driver.pipeline import compile_model
from splitc.runtime.client import SplitClient
from splitc.runtime.runner import BundleRunner, tier_partitions
from splitc.runtime.server import start_server
from tests.digits_model import trained_digits


@pytest.fixture(scope="module")
def digits():
    model, calib = trained_digits()
    data = np.load(calib)
    return model, calib, data["x"].astype(np.float32), data["y"]


@pytest.fixture(scope="module")
def bundle(digits, tmp_path_factory):
    model, calib, _, _ = digits
    options = CompileOptions(targets=("jetson", "lambda"), split=("relu_1",), exits=("relu",), calib=str(calib),
                             accuracy_target=0.99)
    return compile_model(str(model), options, tmp_path_factory.mktemp("segments") / "b",
                         input_shapes=[(1, 1, 8, 8)]).out


def _manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _with_thresholds(bundle, tmp_path, values: list[float]):
    """A copy of the bundle whose exits use ``values`` as thresholds (what the runtime reads)."""
    copy_ = tmp_path / "copy"
    shutil.copytree(bundle, copy_)
    manifest = _manifest(copy_)
    for exit_, value in zip(manifest["exits"], values):
        exit_["threshold"] = value
    (copy_ / "manifest.json").write_text(json.dumps(manifest))
    return copy_


def test_manifest_lists_the_segments_of_a_tier(bundle):
    manifest = _manifest(bundle)
    validate_manifest(manifest)
    assert manifest["schema_version"] == "1.1"
    assert [t["partitions"] for t in manifest["tiers"]] == [[0, 1], [2]]
    assert [t["partition"] for t in manifest["tiers"]] == [0, 2]  # the first, for 1.0 readers
    assert [(p["tier_index"], p["segment"]) for p in manifest["partitions"]] == [(0, 0), (0, 1), (1, 0)]
    (exit0,) = manifest["exits"]
    assert exit0["node"] == "relu" and exit0["partition"] == 0 and exit0["tier_index"] == 0
    part0, part1 = manifest["partitions"][:2]
    assert part0["nodes"]["last"] == exit0["outputs"]["confidence"]
    assert {o["name"] for o in part0["outputs"]} == {"relu", exit0["outputs"]["logits"], exit0["outputs"]["confidence"]}
    assert [i["name"] for i in part1["inputs"]] == ["relu"]  # in-process between segments: no encoding
    assert [t["tensors"][0]["name"] for t in manifest["transfers"]] == ["relu_1"]
    tier_total = manifest["plan"]["predicted"]["compute_s"][0]
    assert part0["predicted_compute_s"] + part1["predicted_compute_s"] == pytest.approx(tier_total)


def test_runner_runs_segments_in_order_and_stops_at_the_exit(bundle, digits):
    model, _, x, _ = digits
    module = torch.load(model, weights_only=False).eval()
    runner = BundleRunner(bundle)
    exit0 = runner.manifest["exits"][0]
    exited = 0
    for i in range(60):
        sample = {"x": x[i:i + 1]}
        trace = runner.run_traced(sample)
        conf = float(runner.run_partition(0, sample)[exit0["outputs"]["confidence"]][0])
        if conf >= exit0["threshold"]:
            exited += 1
            assert trace.exit == 0 and [t.partitions for t in trace.tiers] == [[0]]  # nothing more ran, nothing sent
            np.testing.assert_array_equal(trace.outputs["output_0"],
                                          runner.run_partition(0, sample)[exit0["outputs"]["logits"]])
        else:
            assert trace.exit is None and [t.partitions for t in trace.tiers] == [[0, 1], [2]]
            with torch.no_grad():
                want = module(torch.from_numpy(x[i:i + 1])).numpy()
            np.testing.assert_allclose(trace.outputs["output_0"], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(runner.run(sample)["output_0"], trace.outputs["output_0"])
    assert 0 < exited < 60  # both sides of the threshold on real digits


def test_threshold_rule_is_greater_or_equal(bundle, tmp_path, digits):
    _, _, x, _ = digits
    always = BundleRunner(_with_thresholds(bundle, tmp_path / "a", [0.0]))  # confidence >= 0: every request leaves
    never = BundleRunner(_with_thresholds(bundle, tmp_path / "b", [1.5]))
    for i in range(5):
        assert always.run_traced({"x": x[i:i + 1]}).exit == 0
        trace = never.run_traced({"x": x[i:i + 1]})
        assert trace.exit is None and [t.partitions for t in trace.tiers] == [[0, 1], [2]]


def test_tier_step_keeps_its_contract(bundle, tmp_path, digits):
    _, _, x, _ = digits
    for value, exits in ((0.0, True), (1.5, False)):
        runner = BundleRunner(_with_thresholds(bundle, tmp_path / str(value), [value]))
        held, answer, payloads = runner.tier_step(0, {"x": x[:1]})
        assert {"x", "relu"} <= set(held)
        if exits:
            assert payloads is None and set(answer) == {"output_0"} and answer["output_0"].shape == (1, 10)
        else:
            assert answer is None and set(payloads) == {"relu_1"} and len(payloads["relu_1"]) == 16 * 8 * 8 * 4


def test_a_1_0_manifest_without_partitions_lists_still_runs(bundle, digits):
    _, _, x, _ = digits
    runner = BundleRunner(bundle)
    old = copy.deepcopy(runner.manifest)
    for tier in old["tiers"]:
        del tier["partitions"]
    assert tier_partitions(old) == {0: [0, 1], 1: [2]}
    legacy = BundleRunner(bundle)
    legacy.manifest = old
    legacy._partitions_of_tier = tier_partitions(old)
    for i in range(10):
        np.testing.assert_array_equal(legacy.run({"x": x[i:i + 1]})["output_0"], runner.run({"x": x[i:i + 1]})["output_0"])


def test_every_segment_is_a_static_graph_tensorrts_parser_takes(bundle):
    for part in _manifest(bundle)["partitions"]:
        model = onnx.load(str(bundle / part["file"]))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"If", "Loop", "Scan"}, part["file"]
        assert check_ops(bundle / part["file"])["unsupported"] == [], part["file"]
        for value in [*model.graph.input, *model.graph.output]:
            assert all(d.HasField("dim_value") and d.dim_value > 0 for d in value.type.tensor_type.shape.dim)


def test_servers_and_clients_honour_the_segments(bundle, tmp_path, digits):
    """A tier-0 server (KServe v2 over real HTTP and gRPC, what `splitc serve` runs) and a client that runs tier 0
    itself against the tier-1 server: both answer exactly like the in-process runner, exits inside tier 0 included."""
    _, _, x, _ = digits
    runner = BundleRunner(bundle)
    first = start_server(bundle, 0, port=0)
    last = start_server(bundle, 1, port=0)
    try:
        with SplitClient(bundle, remote=first.grpc_url) as through_server, \
                SplitClient(bundle, remote=last.url) as client_side:
            assert through_server.remote_tier == 0 and client_side.remote_tier == 1
            exited = 0
            for i in range(12):
                sample = {"x": x[i:i + 1]}
                want = runner.run_traced(sample)
                exited += want.exit is not None
                for client in (through_server, client_side):
                    got = client.infer(sample)
                    np.testing.assert_array_equal(got.outputs["output_0"], want.outputs["output_0"])
                    assert got.answered_by == (0 if want.exit is not None else 1)
                    assert got.exit == (want.exit if want.exit is not None else -1)
    finally:
        for server in (first, last):
            server.stop()
