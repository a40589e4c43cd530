"""LockstepBatcher: requests handed over together keep their own step and exit decision; only the ONNX
Runtime calls are shared, stacked on axis 0, and a batch shrinks as its requests exit (E3's problem)."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from splitc.runtime.batching import BatchRunError, LockstepBatcher


def _session(nodes, inputs, outputs, initializers=()) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def segments():
    """Segment A: h = x @ W, conf = max(softmax(h)); segment B: out = relu(h) @ V. Batch axis symbolic."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [6, 4], rng.standard_normal((6, 4)).astype(np.float32).ravel())
    v = helper.make_tensor("V", TensorProto.FLOAT, [4, 3], rng.standard_normal((4, 3)).astype(np.float32).ravel())
    a = _session([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["p"], axis=1),
                  helper.make_node("ReduceMax", ["p"], ["conf"], axes=[1], keepdims=0)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
                 [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 4]),
                  helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["batch"])], [w])
    b = _session([helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "V"], ["out"])],
                 [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 4])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])], [v])
    return {0: a, 1: b}


def _step(sessions, threshold):
    """A two-segment tier step with the exit rule between the segments (the shape of BundleRunner.tier_step)."""
    def step(x):
        h, conf = sessions[0].run(["h", "conf"], {"x": x})
        if float(np.max(conf)) >= threshold:
            return "exit", h
        return "final", sessions[1].run(["out"], {"h": h})[0]
    return step


def test_batched_answers_equal_one_by_one_and_the_batch_shrinks(segments):
    rng = np.random.default_rng(1)
    requests = [rng.standard_normal((1, 6)).astype(np.float32) * 3 for _ in range(7)]
    alone = [_step(segments, 0.8)(x) for x in requests]
    exits = sum(kind == "exit" for kind, _ in alone)
    assert 0 < exits < len(requests)  # the data mix both answers
    batcher = LockstepBatcher(batchable={0, 1})
    step = _step(batcher.wrap(segments), 0.8)
    together = batcher.map(step, requests)
    for (kind, value), (kind1, value1) in zip(together, alone):
        assert kind == kind1
        np.testing.assert_array_equal(value, value1)
    runs = batcher.stats.partition_runs
    assert runs[0] == {7: 1}  # one run of segment A on all seven requests
    assert runs[1] == {len(requests) - exits: 1}  # segment B runs on those that did not exit
    assert batcher.stats.calls == 1 and batcher.stats.requests == 7
    batcher.close()


def test_static_partitions_run_once_per_request_in_the_same_round(segments):
    batcher = LockstepBatcher(batchable={1})  # segment A not batchable
    step = _step(batcher.wrap(segments), 2.0)  # never exits
    rng = np.random.default_rng(2)
    requests = [rng.standard_normal((1, 6)).astype(np.float32) for _ in range(4)]
    results = batcher.map(step, requests)
    assert all(kind == "final" for kind, _ in results)
    assert batcher.stats.partition_runs == {0: {1: 4}, 1: {4: 1}}
    single = batcher.map(step, requests[:1])  # one request: straight through, still counted
    np.testing.assert_array_equal(single[0][1], results[0][1])
    assert batcher.stats.partition_runs[0] == {1: 5}
    batcher.close()


def test_a_failed_group_fails_its_requests_only(segments):
    class Fussy:
        def __init__(self, inner):
            self.inner = inner

        def run(self, names, feeds):
            if next(iter(feeds.values())).shape[0] > 1:
                raise RuntimeError("no stacked rows today")
            return self.inner.run(names, feeds)

    batcher = LockstepBatcher(batchable={0, 1})
    step = _step(batcher.wrap({0: segments[0], 1: Fussy(segments[1])}), 2.0)
    rng = np.random.default_rng(3)
    results = batcher.map(step, [rng.standard_normal((1, 6)).astype(np.float32) for _ in range(3)])
    assert all(isinstance(r, BatchRunError) and "no stacked rows today" in str(r) for r in results)
    bad_input = batcher.map(step, [np.zeros((1, 6), np.float32), np.zeros((1, 5), np.float32)])
    assert isinstance(bad_input[0], Exception) and isinstance(bad_input[1], Exception)  # shapes differ: no stack
    ok = batcher.map(step, [np.zeros((1, 6), np.float32)])  # the batcher keeps working
    assert ok[0][0] == "final"
    batcher.close()


def test_concurrent_maps_do_not_mix_their_rounds(segments):
    batcher = LockstepBatcher(batchable={0, 1})
    step = _step(batcher.wrap(segments), 0.8)
    rng = np.random.default_rng(4)
    groups = [[rng.standard_normal((1, 6)).astype(np.float32) * 3 for _ in range(3)] for _ in range(4)]
    expected = [[_step(segments, 0.8)(x) for x in g] for g in groups]
    got = [None] * len(groups)

    def run(i):
        got[i] = batcher.map(step, groups[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for g, e in zip(got, expected):
        for (kind, value), (kind1, value1) in zip(g, e):
            assert kind == kind1
            np.testing.assert_array_equal(value, value1)
    batcher.close()
