"""The torchvision detector adapter and the comparison of detections as matched sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitc.core.detectors import (DYNAMIC_SHAPE, compare_detections, detection_groups, explain_runtime_failure,
                                   split_detector, trace_split_detector)
from splitc.errors import SplitcError
from tests.hf_zoo import tiny_fasterrcnn, tiny_ssd

BOXES = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], np.float32)
SCORES = np.array([0.9, 0.5, 0.2], np.float32)
LABELS = np.array([1, 2, 1], np.int64)


def test_detections_match_as_sets_whatever_their_order():
    order = [2, 0, 1]
    err, rel, ok = compare_detections((BOXES[order] + 1e-4, SCORES[order], LABELS[order]), (BOXES, SCORES, LABELS),
                                      1e-3, 1e-4)
    assert ok and err == pytest.approx(1e-4, rel=1e-2) and rel == pytest.approx(err / 20)


@pytest.mark.parametrize("change", ["label", "box", "missing"])
def test_a_wrong_or_missing_detection_fails(change):
    boxes, scores, labels = BOXES.copy(), SCORES.copy(), LABELS.copy()
    if change == "label":
        labels[0] = 3
    elif change == "box":
        boxes[1, 2] += 1.0
    else:
        boxes, scores, labels = boxes[1:], scores[1:], labels[1:]
    assert compare_detections((boxes, scores, labels), (BOXES, SCORES, LABELS), 1e-3, 1e-4) == (
        float("inf"), float("inf"), False)


def test_a_detection_at_the_score_floor_may_differ():
    """The lowest kept score is where two runtimes may keep different sets (top-k, score threshold)."""
    got = (BOXES[:2], SCORES[:2], LABELS[:2])
    want = (np.concatenate([BOXES[:2], [[7, 7, 9, 9]]]), np.array([0.9, 0.5, 0.5], np.float32), np.array([1, 2, 3]))
    assert compare_detections(got, want, 1e-3, 1e-4)[2]


def test_detection_groups_and_the_empty_proposal_failure():
    manifest = {"model": {"source": {"call": {"inputs": ["images"], "kwargs": {},
                                              "adapter": "torchvision_detection"}},
                          "outputs": [{"name": n} for n in ("boxes", "scores", "labels")]}}
    assert detection_groups(manifest) == [("boxes", "scores", "labels")]
    ort = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. "
                       "Name:'/tail/roi_heads/Reshape' Status Message: ... Input shape:{0,20}, requested shape:{0,-1}")
    error = explain_runtime_failure(manifest, ort)
    assert isinstance(error, SplitcError) and "no region proposals" in error.one_line()
    assert "/tail/roi_heads/Reshape" in error.one_line() and "\n" not in error.one_line()
    assert explain_runtime_failure(manifest, RuntimeError("other")) is None
    assert explain_runtime_failure({"model": {"source": {}, "outputs": []}}, ort) is None


@pytest.mark.parametrize("factory", [tiny_ssd, tiny_fasterrcnn])
def test_split_detector_reproduces_the_detector_and_traces_with_a_leaf_tail(factory):
    torch.manual_seed(0)
    model = factory()
    split = split_detector(model, (1, 3, 64, 64))  # checks body + tail == the detector, exactly
    gm = trace_split_detector(split, torch.rand(1, 3, 64, 64))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"][-1] == "tail"
    outputs = [n for n in gm.graph.nodes if n.name in ("boxes", "scores", "labels")]
    assert len(outputs) == 3 and all(n.meta[DYNAMIC_SHAPE] for n in outputs)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = model(list(image))[0]
        got = gm(image)
    for value, key in zip(got, ("boxes", "scores", "labels")):
        torch.testing.assert_close(value, want[key])


def test_split_detector_refuses_training_mode_and_a_wrong_shape():
    with pytest.raises(SplitcError, match="training mode"):
        split_detector(tiny_ssd().train(), (1, 3, 64, 64))
    with pytest.raises(SplitcError, match=r"takes images \[B, 3, H, W\].*--input-shape 1,3,64,64"):
        split_detector(tiny_ssd(), (1, 64, 64))
