"""``quantize``: post-training quantization of the exported partitions (``--quantize int8|fp16``).

Unlike the graph passes this one edits ONNX files, right after export: what it
produces *is* the deployable artifact, so it works where that artifact lives.

* ``int8``: ``onnxruntime.quantization.quantize_static`` in QDQ format
  (QuantizeLinear/DequantizeLinear pairs around each quantized op) -- the format ONNX
  Runtime runs as INT8 and TensorRT consumes as explicit INT8. Activations and
  weights are signed int8 and symmetric, weights per channel, because TensorRT's
  explicit quantization accepts only that (an asymmetric uint8 QDQ model runs in ONNX
  Runtime but not in TensorRT). Weights are per tensor: with onnxruntime 1.32's per-channel
  option the MNIST example's first partition moved its output by 14 uint8 steps on average
  (per tensor: 3), root cause not found. Activation ranges are calibrated on the partition's
  *real* inputs: the training split of ``--calib`` run through the (compressed)
  partitions before it.
  Why onnxruntime.quantization and not Intel Neural Compressor: INC's ONNX backend is
  the separate ``onnx-neural-compressor`` 1.0 package, which is stale here (it pins
  numpy < 2, which the rest of the stack does not allow), and INC 3.x's PyTorch path
  produces torch models, not ONNX; ORT's quantizer ships with the runtime we already
  depend on, installs nowhere extra, and emits the QDQ ONNX both backends take.
* ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` (also part of
  onnxruntime) with the graph inputs/outputs kept as they are, so the wire contract
  does not change.

Accuracy: the whole chain runs in ONNX Runtime on the held-out split. If it misses
``--accuracy-target``, the first and the last compute layer (conv / matmul / gemm) of
every partition -- the usual sensitive ones -- are kept in float and it tries again;
if it still misses, the compile fails with the numbers and what to relax
(:mod:`splitc.compression.forced`): the mode is a request, not a hint.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from splitc.compression.forced import missed
from splitc.compression.settings import CompressionSettings, state_of
from splitc.core.samples import run_chain

__all__ = ["quantize_partitions", "CALIBRATION_SAMPLES"]

log = logging.getLogger("splitc")

#: Samples of the training split used to calibrate activation ranges.
CALIBRATION_SAMPLES = 128
_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantize_partitions(ctx, gm, stage: Path, exported: list[dict]) -> None:
    """Quantize every exported partition in place (files under ``stage``); updates ``exported``.

    Args:
        ctx: the compile context (partitions, compression state).
        gm: the profiled graph (for the reference accuracy).
        stage: the bundle staging folder.
        exported: per partition, the export record (``file``, ``sha256``, ``op_types``, ``warnings``).
    """
    settings = ctx.settings_for(CompressionSettings)
    if settings.quantize == "none":
        return
    start = time.perf_counter()
    state = state_of(ctx, gm)
    paths = [stage / e["file"] for e in exported]
    originals = [p.read_bytes() for p in paths]
    attempts = [("all layers", False), ("first/last layer of each partition kept in float", True)]
    for label, exclude_ends in attempts:
        for path, original in zip(paths, originals):
            path.write_bytes(original)
        if settings.quantize == "int8":
            _int8(ctx, state, paths, exclude_ends)
        else:
            _fp16(paths, exclude_ends)
        if state.calib is None:
            break
        state.guard.ensure_reference(gm)
        acc = _onnx_accuracy(ctx, state, paths)
        verdict = state.guard.judge(f"--quantize {settings.quantize} ({label}, ONNX Runtime)", acc)
        if verdict.met:
            state.accuracy[f"quantize_{settings.quantize}"] = acc
            log.info("[quantize] %s partitions (%s) kept (%.2fs)", settings.quantize, label,
                     time.perf_counter() - start)
            break
        state.notes.append(verdict.line())
        if exclude_ends:  # both recipes missed: the mode the user gave is a request, so the compile fails
            raise missed(verdict, "--quantize fp16" if settings.quantize == "int8" else "drop --quantize")
    _refresh(exported, paths)


def _refresh(exported: list[dict], paths: list[Path]) -> None:
    from splitc.core.loader import sha256_file

    for record, path in zip(exported, paths):
        record["sha256"] = sha256_file(path)
        record["op_types"] = sorted({n.op_type for n in onnx.load(str(path)).graph.node})


def _ends(model: onnx.ModelProto) -> list[str]:
    compute = [n.name for n in model.graph.node if n.op_type in _COMPUTE]
    return sorted({compute[0], compute[-1]}) if compute else []


def _int8(ctx, state, paths: list[Path], exclude_ends: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    names = [s.name for s in ctx.input_specs]
    index = state.train[:CALIBRATION_SAMPLES]
    values = {k: v.numpy() for k, v in run_chain(ctx.partitions, names, state.calib.batch(index)).items()}
    values.update({n: np.asarray(a[index]) for n, a in zip(names, state.calib.inputs)})

    class Reader(CalibrationDataReader):  # one sample at a time: partitions have static batch-1 shapes
        def __init__(self, inputs: list[str]) -> None:
            self.rows = iter([{n: values[n][i:i + 1] for n in inputs} for i in range(len(index))])

        def get_next(self):
            return next(self.rows, None)

    for part, path in zip(ctx.partitions, paths):
        model = onnx.load(str(path))
        exclude = _ends(model) if exclude_ends else []
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ORT logs a pre-processing hint on the root logger for every model
        try:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "q.onnx"
                # only the compute layers: the wire encoding's Div/Round/Clip/Cast at the partition's
                # ends must stay exact float arithmetic, and TensorRT fuses the rest around the QDQ convs
                quantize_static(str(path), str(out), Reader(part.inputs), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False,
                                op_types_to_quantize=list(_COMPUTE), nodes_to_exclude=exclude,
                                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
                path.write_bytes(out.read_bytes())
        finally:
            root.setLevel(level)


def _fp16(paths: list[Path], exclude_ends: bool) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for path in paths:
        model = onnx.load(str(path))
        block = _ends(model) if exclude_ends else []
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
        onnx.save(converted, str(path))


def _onnx_accuracy(ctx, state, paths: list[Path]) -> float:
    """Held-out accuracy of the partition files chained in ONNX Runtime (wire encodings are in-graph)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
    names = [s.name for s in ctx.input_specs]
    output = state.model_outputs[0]
    preds = []
    for i in state.test:
        held = {n: np.asarray(a[i:i + 1]) for n, a in zip(names, state.calib.inputs)}
        for part, session in zip(ctx.partitions, sessions):
            held.update(zip(part.outputs, session.run(part.outputs, {n: held[n] for n in part.inputs})))
        preds.append(int(np.asarray(held[output]).reshape(-1).argmax()))
    return state.guard.measure(np.array(preds))
