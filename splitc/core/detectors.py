"""Partly traceable models: a torchvision detector as a traceable body and a post-processing tail.

A torchvision detector's ``forward`` takes a list of images and its post-processing (score
thresholds, top-k, NMS) produces data-dependent shapes: ``torch.fx.symbolic_trace`` fails on
the list, ``torch.export`` on the data-dependent sizes, and the untraceable code is in the
detector's own ``forward``, so no submodule could be made a leaf generically. The family
adapter splits it instead:

* **body** (:class:`DetectorBody`): ``images [B, 3, H, W]`` -> the raw head outputs (SSD,
  RetinaNet, FCOS: class logits and box regression per anchor; Faster/Mask R-CNN: the
  backbone/FPN feature maps). Static for a static input size, traced with ``torch.export`` and
  cut like any model.
* **tail** (:class:`DetectorTail`): raw outputs -> ``boxes, scores, labels`` per image. The
  anchors and image sizes it needs are constants of the static input size, computed once here.
  It stays one leaf node (``call_module tail``) of the traced graph, so it is never cut and runs
  on the last tier; the TorchScript ONNX exporter traces it whole, through torchvision's
  ONNX-aware code paths (TopK, NonMaxSuppression).

The tail's outputs have data-dependent sizes and are marked :data:`DYNAMIC_SHAPE`; the
candidates analysis makes every cut they would cross illegal. Detections are compared as
matched sets (:func:`compare_detections`): near-tied scores may swap rank between two
runtimes without any detection being wrong.

Example:
    >>> from torchvision.models.detection import ssdlite320_mobilenet_v3_large   # doctest: +SKIP
    >>> split = split_detector(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval(),
    ...                        (1, 3, 320, 320))                                  # doctest: +SKIP
    >>> [n for n in trace_split_detector(split, torch.rand(1, 3, 320, 320)).meta["splitc.output_names"]]  # doctest: +SKIP
    ['boxes', 'scores', 'labels']
"""

from __future__ import annotations

import copy
import logging
import operator
import re
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

from splitc.core.tracing import describe_trace_failure, quiet_torch, strip_export_bookkeeping
from splitc.errors import SplitcError

__all__ = ["DYNAMIC_SHAPE", "OUTPUT_NAMES", "DETECTION_FIELDS", "is_torchvision_detector", "detector_input_shape",
           "DetectorBody", "DetectorTail", "SplitDetector", "split_detector", "trace_split_detector",
           "compare_detections", "detection_groups", "check_detections", "explain_runtime_failure"]

log = logging.getLogger("splitc")

#: node.meta key written here: the node's value has a data-dependent shape (a detector's detections);
#: no cut may ship it (read by the candidates analysis).
DYNAMIC_SHAPE = "splitc.dynamic_shape"
#: GraphModule.meta key (also written by the loader): the model's own names of its flat outputs.
OUTPUT_NAMES = "splitc.output_names"
#: the outputs per image, in order
DETECTION_FIELDS = ("boxes", "scores", "labels")


def _detection_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(one-stage, two-stage) torchvision detector classes; empty without torchvision's detection package."""
    try:
        from torchvision.models.detection.fcos import FCOS
        from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
        from torchvision.models.detection.retinanet import RetinaNet
        from torchvision.models.detection.ssd import SSD
    except ImportError:
        return (), ()
    return (SSD, RetinaNet, FCOS), (GeneralizedRCNN,)


def is_torchvision_detector(module: nn.Module) -> bool:
    """An SSD / SSDlite / RetinaNet / FCOS / Faster-, Mask-, Keypoint R-CNN from torchvision."""
    one, two = _detection_classes()
    return bool(one) and isinstance(module, (*one, *two))


def detector_input_shape(module: nn.Module) -> tuple[int, ...]:
    """``(1, 3, H, W)``: the size the detector's own transform resizes to (``fixed_size``, else ``min_size``)."""
    transform = module.transform
    if getattr(transform, "fixed_size", None):
        h, w = transform.fixed_size
    else:
        h = w = int(transform.min_size[-1])
    return (1, 3, int(h), int(w))


class DetectorBody(nn.Module):
    """``images [B, 3, H, W]`` -> the raw head outputs as a tuple (see the module docstring)."""

    def __init__(self, model: nn.Module, two_stage: bool, padded_hw: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.two_stage = two_stage
        self.padded_hw = padded_hw

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the detector's transform with its batching written functionally: torchvision copies each image into a
        # slice of a zero batch (in place, through a view), which export records as copy_ on a view and the
        # TorchScript ONNX exporter then drops (the partition would lose its input)
        transform = self.model.transform
        h, w = self.padded_hw
        batch = []
        for image in images.unbind(0):
            image, _ = transform.resize(transform.normalize(image), None)
            batch.append(torch.nn.functional.pad(image, (0, w - image.shape[-1], 0, h - image.shape[-2])))
        features = self.model.backbone(torch.stack(batch))
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        if self.two_stage:
            return tuple(features.values())
        head = self.model.head(list(features.values()))
        return tuple(head[k] for k in sorted(head))


class DetectorTail(nn.Module):
    """Raw head outputs -> ``(boxes, scores, labels)`` per image (flat), for one static input size."""

    def __init__(self, model: nn.Module, two_stage: bool, head_keys: list[str], feature_keys: list[str],
                 image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]],
                 padded_shape: tuple[int, ...], anchors: list[torch.Tensor] | None,
                 anchors_per_level: list[int] | None) -> None:
        super().__init__()
        self.model = model
        self.two_stage = two_stage
        self.head_keys = head_keys
        self.feature_keys = feature_keys
        self.image_sizes = image_sizes
        self.original_sizes = original_sizes
        self.padded_shape = padded_shape
        self.anchors_per_level = anchors_per_level
        for i, anchor in enumerate(anchors or []):
            self.register_buffer(f"anchors_{i}", anchor)
        self.num_images = len(image_sizes)

    def forward(self, *raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torchvision.models.detection.image_list import ImageList

        model = self.model
        if self.two_stage:
            features = OrderedDict(zip(self.feature_keys, raw))
            # the RPN reads only the padded batch's shape from the image tensor
            images = ImageList(raw[0].new_zeros(self.padded_shape), self.image_sizes)
            proposals, _ = model.rpn(images, features)
            detections, _ = model.roi_heads(features, proposals, self.image_sizes)
        else:
            head = dict(zip(self.head_keys, raw))
            anchors = [getattr(self, f"anchors_{i}") for i in range(self.num_images)]
            if self.anchors_per_level is not None:  # RetinaNet / FCOS: outputs and anchors split per FPN level
                head = {k: list(v.split(self.anchors_per_level, dim=1)) for k, v in head.items()}
                anchors = [list(a.split(self.anchors_per_level)) for a in anchors]
            detections = model.postprocess_detections(head, anchors, self.image_sizes)
        detections = model.transform.postprocess(detections, self.image_sizes, self.original_sizes)
        return tuple(d[k] for d in detections for k in DETECTION_FIELDS)


class SplitDetector(nn.Module):
    """``forward(images) = tail(*body(images))``: the detector's eval output, flattened to
    ``boxes, scores, labels`` per image. ``state_dict`` is the wrapped detector's own (fingerprints)."""

    def __init__(self, model: nn.Module, body: DetectorBody, tail: DetectorTail, note: str = "") -> None:
        super().__init__()
        self.model = model
        self.body = body
        self.tail = tail
        self.note = note

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.tail(*self.body(images))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # the user's detector, not the wrappers
        return self.model.state_dict(*args, **kwargs)


def split_detector(model: nn.Module, shape: tuple[int, ...]) -> SplitDetector:
    """Split a torchvision detector (eval mode) for images of the static ``shape`` ``[B, 3, H, W]``.

    Runs the detector once on a seeded random image to record the constants the tail needs
    (anchors, sizes, per-level anchor counts) and checks that body + tail reproduce the detector
    exactly.

    Raises:
        SplitcError: training mode, a wrong shape, or body + tail differ from the detector.
    """
    one_stage, two_stage_classes = _detection_classes()
    two_stage = isinstance(model, two_stage_classes)
    if model.training:
        raise SplitcError(f"the {type(model).__name__} detector is in training mode", "call model.eval() before saving")
    if len(shape) != 4 or shape[1] != 3:
        raise SplitcError(f"a torchvision detector takes images [B, 3, H, W], not {list(shape)}",
                          f"pass e.g. --input-shape {','.join(map(str, detector_input_shape(model)))}")
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image_list, _ = model.transform(list(images.unbind(0)))
        features = model.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        feature_list = list(features.values())
        anchors = per_level = None
        head_keys: list[str] = []
        if not two_stage:
            head = model.head(feature_list)
            head_keys = sorted(head)
            anchors = [a.detach().clone() for a in model.anchor_generator(image_list, feature_list)]
            if not isinstance(model, one_stage[0]):  # RetinaNet, FCOS (not SSD): outputs split per FPN level
                hw = [f.size(2) * f.size(3) for f in feature_list]
                per_anchor = head["cls_logits"].size(1) // sum(hw)
                per_level = [n * per_anchor for n in hw]
    body = DetectorBody(model, two_stage, tuple(int(v) for v in image_list.tensors.shape[-2:]))
    tail = DetectorTail(_postprocess_shell(model, two_stage), two_stage, head_keys, list(features.keys()),
                        [tuple(int(v) for v in s) for s in image_list.image_sizes],
                        [tuple(int(v) for v in img.shape[-2:]) for img in images], tuple(image_list.tensors.shape),
                        anchors, per_level)
    what = "RPN, ROI heads, NMS" if two_stage else "box decoding, top-k, NMS"
    note = (f"torchvision {type(model).__name__}: backbone and head traced with torch.export and cut; "
            f"post-processing ({what}) kept whole on the last tier (leaf 'tail')")
    split = SplitDetector(model, body, tail, note).eval()
    with torch.no_grad():
        want = [d[k] for d in model(list(images.unbind(0))) for k in DETECTION_FIELDS]
        got = split(images)
    if len(want) != len(got) or any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(want, got)):
        raise SplitcError(f"{type(model).__name__}: splitting it into backbone+head and post-processing changed its "
                          "output", "wrap the model so forward() returns the raw head outputs")
    log.info("[load] %s", note)
    return split


def _postprocess_shell(model: nn.Module, two_stage: bool) -> nn.Module:
    """A shallow copy of the detector holding only what post-processing reads (settings, box coder,
    transform; and the RPN and ROI heads of a two-stage detector), so the tail's weights are its own."""
    shell = copy.copy(model)
    keep = ("transform", "rpn", "roi_heads") if two_stage else ("transform",)
    shell._modules = OrderedDict((k, v) for k, v in model._modules.items() if k in keep)
    shell._parameters = OrderedDict()
    shell._buffers = OrderedDict()
    return shell


def trace_split_detector(split: SplitDetector, example: torch.Tensor) -> torch.fx.GraphModule:
    """The body's ``torch.export`` graph with ``call_module tail`` appended as a leaf.

    The tail's outputs are named ``boxes, scores, labels`` (``boxes_1, ...`` for more images),
    marked :data:`DYNAMIC_SHAPE`, and listed in ``gm.meta[OUTPUT_NAMES]``.

    Raises:
        SplitcError: the body itself cannot be exported.
    """
    try:
        with quiet_torch():
            body_gm = torch.export.export(split.body, (example,), strict=False).module()
    except Exception as exc:
        raise SplitcError(f"cannot trace the detector's backbone and head: {describe_trace_failure(exc)}",
                          "wrap the model so forward() returns the raw head outputs") from None
    strip_export_bookkeeping(body_gm)
    graph = torch.fx.Graph()
    raw = graph.graph_copy(body_gm.graph, {})
    raw = list(raw) if isinstance(raw, (tuple, list)) else [raw]
    tail = graph.call_module("tail", tuple(raw))
    outputs = []
    for i in range(len(DETECTION_FIELDS) * split.tail.num_images):
        image, field = divmod(i, len(DETECTION_FIELDS))
        name = DETECTION_FIELDS[field] + (f"_{image}" if image else "")
        node = graph.create_node("call_function", operator.getitem, (tail, i), name=name)
        node.meta[DYNAMIC_SHAPE] = True  # the number of detections depends on the image
        outputs.append(node)
    graph.output(tuple(outputs))
    root: dict[str, Any] = {"tail": split.tail}
    for node in graph.nodes:
        if node.op == "get_attr":
            root[node.target] = torch.fx.Interpreter(body_gm).fetch_attr(node.target)
        elif node.op == "call_module" and node.target != "tail":
            root[node.target] = body_gm.get_submodule(node.target)
    gm = torch.fx.GraphModule(root, graph).eval()
    gm.meta[OUTPUT_NAMES] = [n.name for n in outputs]
    return gm


# --------------------------------------------------------------------------- verification


def detection_groups(manifest: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The ``(boxes, scores, labels)`` output names per image of a detection bundle (empty for other models)."""
    call = manifest["model"]["source"].get("call") or {}
    if call.get("adapter") != "torchvision_detection":
        return []
    names = [o["name"] for o in manifest["model"]["outputs"]]
    return [tuple(names[i:i + 3]) for i in range(0, len(names) - 2, 3)]  # type: ignore[misc]


def compare_detections(got: Sequence[np.ndarray], want: Sequence[np.ndarray], rtol: float, atol: float
                       ) -> tuple[float, float, bool]:
    """Compare one image's detections ``(boxes [K, 4], scores [K], labels [K])`` as matched sets.

    Detections are a ranking: a last-bit difference between two near-equal scores swaps their
    order (and can swap which one makes the top-k or the score threshold), so a position-by-
    position comparison fails on correct bundles. Each detection of ``got`` is matched to an
    unused one of ``want`` with the same label, box within ``atol + rtol * image scale`` and
    score within ``atol + rtol``. Passes when every detection on both sides is matched, except
    ones whose score is within that score tolerance of the lowest score kept (the boundary where
    the kept set itself may differ).

    Returns:
        ``(max abs box error over matched pairs, that error relative to the box scale, passed)``;
        the errors are ``inf`` when it fails.
    """
    (gb, gs, gl), (wb, ws, wl) = [np.asarray(a) for a in got], [np.asarray(a) for a in want]
    scale = float(np.abs(wb).max()) if wb.size else 1.0
    box_tol, score_tol = atol + rtol * scale, atol + rtol
    used = np.zeros(len(ws), dtype=bool)
    worst, unmatched = 0.0, []
    for i in np.argsort(-gs, kind="stable"):
        if len(wb) == 0:
            unmatched.append(i)
            continue
        diff = np.abs(wb - gb[i]).max(axis=1)
        ok = (~used) & (wl == gl[i]) & (diff <= box_tol) & (np.abs(ws - gs[i]) <= score_tol)
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(diff[ok])])
            used[j] = True
            worst = max(worst, float(diff[j]))
        else:
            unmatched.append(i)
    floor = min(float(gs.min()) if gs.size else np.inf, float(ws.min()) if ws.size else np.inf)
    passed = all(gs[i] <= floor + score_tol for i in unmatched) and \
        all(ws[j] <= floor + score_tol for j in np.flatnonzero(~used))
    if not passed:
        return float("inf"), float("inf"), False
    return worst, worst / max(scale, 1e-12), True


def check_detections(manifest: dict[str, Any], got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float,
                     atol: float, on_reference_inputs: Callable[[], dict[str, np.ndarray]] | None = None
                     ) -> tuple[set[str], list[tuple[str, float, float, bool]]]:
    """Verification of a detection bundle's outputs (the verify hook; other models: nothing to do).

    Each image's ``(boxes, scores, labels)`` is compared as a matched set
    (:func:`compare_detections`). For a two-stage detector, float differences upstream (1e-3
    relative between ONNX Runtime and PyTorch on a backbone) change which RPN proposals survive
    top-k and NMS, so the end-to-end sets may differ although every partition is right; then, if
    ``on_reference_inputs`` is given (the last partition's outputs when it is fed PyTorch's own
    values at its inputs), that is what is compared, and a warning says so.

    Args:
        manifest: the bundle's manifest.
        got, want: ONNX Runtime's and PyTorch's outputs, by output name.
        rtol, atol: tolerances (see :func:`compare_detections`).
        on_reference_inputs: optional, see above.

    Returns:
        ``(the output names handled here, one (label, max abs error, relative error, passed) per image)``.
    """
    groups = detection_groups(manifest)
    results = []
    for group in groups:
        err, rel, ok = compare_detections([got[n] for n in group], [want[n] for n in group], rtol, atol)
        label = f"detections ({', '.join(group)})"
        if not ok and on_reference_inputs is not None:
            last = on_reference_inputs()
            err, rel, ok = compare_detections([last[n] for n in group], [want[n] for n in group], rtol, atol)
            log.warning("verify: detections differ end to end (float differences upstream change which proposals "
                        "survive); the post-processing partition %s them on PyTorch's own inputs",
                        "matches" if ok else "does not match")
            label += " on PyTorch's inputs to the last partition"
        results.append((label, err, rel, ok))
    return {n for g in groups for n in g}, results


_EMPTY_RESHAPE = re.compile(r"Reshape node\. Name:'([^']*)'.*Input shape:\{0,")


def explain_runtime_failure(manifest: dict[str, Any], exc: BaseException) -> SplitcError | None:
    """One line for ONNX Runtime's failure on a detection bundle when an image yields no region proposals.

    torchvision's two-stage ONNX graph reshapes the per-proposal box predictions with ``-1``
    (``[0, 4 * classes] -> [0, -1]``), which ONNX Runtime refuses when there are no proposals:
    a limitation of torchvision's export (its whole-model export fails the same way), not of the
    cut. Returns None for any other failure.
    """
    found = _EMPTY_RESHAPE.search(str(exc))
    if not detection_groups(manifest) or found is None:
        return None
    return SplitcError(f"ONNX Runtime cannot run the detector's post-processing on an image that yields no region "
                       f"proposals (node '{found.group(1)}' reshapes an empty [0, N] tensor with -1; a known limit of "
                       "torchvision's ONNX export of two-stage detectors)",
                       "verify on real images (--inputs, --calib), where the RPN keeps proposals; in serving, read "
                       "this error as 'no detections'")
