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

Verification (``docs/verification.md``): the float exports are kept
(``CompressionState.float_partitions``) so the driver can check them against PyTorch and
build each int8 partition's *fake-quantized reference* (:func:`fake_quant_reference`): the
shipped QDQ graph, checked to be the float export plus Q/DQ pairs and nothing else
(:func:`check_qdq_structure`), with every weight, bias and constant taken from the float
export instead of the shipped file (weights re-quantized by ONNX Runtime's own recipe,
``quant_utils.quantize_data``), run by ONNX Runtime with graph optimizations off, so each
Q/DQ pair executes as float rounding rather than fused integer kernels. Only the
activation scales come from the shipped file. :func:`quantization_steps` gives each output's
quantization step, in which the comparison's tolerance is stated.
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

__all__ = ["quantize_partitions", "CALIBRATION_SAMPLES", "fake_quant_reference", "check_qdq_structure",
           "quantization_steps", "neutralize_noise", "reference_session", "fp16_rtol", "ReferenceError"]

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
    state.float_partitions = list(originals)  # verification checks these against PyTorch and derives references
    state.quantized = None
    attempts = [("all layers", False), ("first/last layer of each partition kept in float", True)]
    for label, exclude_ends in attempts:
        for path, original in zip(paths, originals):
            path.write_bytes(original)
        if settings.quantize == "int8":
            _int8(ctx, state, paths, exclude_ends)
        else:
            _fp16(paths, exclude_ends)
        if state.calib is None:
            state.quantized = settings.quantize
            break
        state.guard.ensure_reference(gm)
        acc = _onnx_accuracy(ctx, state, paths)
        verdict = state.guard.judge(f"--quantize {settings.quantize} ({label}, ONNX Runtime)", acc)
        if verdict.met:
            state.quantized = settings.quantize
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


# ---------------------------------------------------------------------------------------------
# verification: the fake-quantized reference of a QDQ partition

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_QUANT_SUFFIX = "_quantized"  # onnxruntime.quantization names a quantized initializer <float name>_quantized
#: ops through which an output's quantization step carries over unchanged (walking back to its last Q/DQ)
_STEP_PRESERVING = ("Relu", "Clip", "Round", "Cast", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                    "MaxPool", "GlobalAveragePool", "AveragePool", "GlobalMaxPool", "Identity", "Concat", "Add", "Sub",
                    "Max", "Min", "Slice", "Split", "Resize", "Upsample", "Pad", "Expand", "Tile", "Gather")


class ReferenceError(Exception):
    """A fake-quantized reference cannot be built for this partition (the reason is the message)."""


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _constants(model: onnx.ModelProto) -> dict[str, onnx.AttributeProto]:
    return {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}


def _resolution(model: onnx.ModelProto) -> dict[str, str]:
    """Shipped tensor name -> the float export's name it stands for, across every Q/DQ pair.

    ``DequantizeLinear(w_quantized)`` stands for the float initializer ``w``;
    ``DequantizeLinear(QuantizeLinear(x))`` stands for ``x``.
    """
    inits = {i.name for i in model.graph.initializer}
    quantize_input = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    resolve: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in inits and source.endswith(_QUANT_SUFFIX):
            resolve[node.output[0]] = source[:-len(_QUANT_SUFFIX)]
        elif source in quantize_input:
            x = quantize_input[source]
            resolve[node.output[0]] = resolve.get(x, x)
    return resolve


def check_qdq_structure(shipped: onnx.ModelProto, float_model: onnx.ModelProto) -> dict[str, str]:
    """Check that ``shipped`` is ``float_model`` with QuantizeLinear/DequantizeLinear pairs inserted and nothing else.

    Every other node must be the float export's node computing the same tensor: same op, same
    attributes, inputs that resolve (through Q/DQ pairs) to the same tensors, and graph
    outputs that resolve to the float export's outputs. A quantized weight or bias may carry
    a numbered name (onnxruntime quantizes an initializer shared by several nodes once per
    node: ``b`` -> ``b0``, ``b1``, with its own scale each).

    Returns:
        each quantized initializer of ``shipped`` -> the float export's initializer it stands for.

    Raises:
        ReferenceError: with the first difference.
    """
    import re

    resolve = _resolution(shipped)
    shipped_inits = {i.name for i in shipped.graph.initializer}
    float_inits = {i.name for i in float_model.graph.initializer}
    quantized_source = {n.output[0]: n.input[0] for n in shipped.graph.node
                        if n.op_type == "DequantizeLinear" and n.input[0] in shipped_inits}
    ours = [n for n in shipped.graph.node if n.op_type not in _QDQ]
    theirs = {o: n for n in float_model.graph.node if n.op_type not in _QDQ for o in n.output[:1]}
    if len(ours) != len(theirs) or [i.name for i in shipped.graph.input] != [i.name for i in float_model.graph.input]:
        raise ReferenceError(f"{len(ours)} non-Q/DQ node(s) where the float export has {len(theirs)}, or other inputs")
    if len(shipped.graph.output) != len(float_model.graph.output):
        raise ReferenceError("the graph outputs differ from the float export's")
    # a quantized graph output is renamed at its producer (fc -> fc_QuantizeLinear_Input): map it back
    alias = {resolve.get(o.name, o.name): f.name for o, f in zip(shipped.graph.output, float_model.graph.output)}

    def name(tensor: str) -> str:
        tensor = resolve.get(tensor, tensor)
        return alias.get(tensor, tensor)

    sources: dict[str, str] = {}
    seen = set()
    for a in ours:
        b = theirs.get(name(a.output[0]))
        if b is None or b.output[0] in seen:
            raise ReferenceError(f"{a.op_type} '{a.name}' produces '{name(a.output[0])}', which no node of the float "
                                 "export does")
        seen.add(b.output[0])
        if a.op_type != b.op_type or a.domain != b.domain or [name(x) for x in a.output] != list(b.output):
            raise ReferenceError(f"'{name(a.output[0])}' is computed by {a.op_type} where the float export uses "
                                 f"{b.op_type}")
        if a.op_type != "Constant" and sorted(x.SerializeToString() for x in a.attribute) != \
                sorted(x.SerializeToString() for x in b.attribute):
            raise ReferenceError(f"{a.op_type} '{a.name}' has other attributes than in the float export")
        got = [name(x) for x in a.input]
        for x, mine, want in zip(a.input, got, b.input):
            quantized = quantized_source.get(x)
            if quantized is not None and want in float_inits and re.fullmatch(re.escape(want) + r"\d*", mine):
                if sources.setdefault(quantized, want) != want:
                    raise ReferenceError(f"'{quantized}' stands for both '{sources[quantized]}' and '{want}'")
            elif mine != want:
                raise ReferenceError(f"{a.op_type} '{a.name}' reads {got} where the float export reads {list(b.input)}")
        if len(got) != len(b.input):
            raise ReferenceError(f"{a.op_type} '{a.name}' has {len(got)} inputs, the float export's {len(b.input)}")
    return sources


def fake_quant_reference(shipped: onnx.ModelProto, float_model: onnx.ModelProto) -> onnx.ModelProto:
    """The shipped QDQ partition with every weight, bias and constant taken from the float export.

    Weights (int8 initializers behind a DequantizeLinear) are re-quantized from the float
    export's tensor by ONNX Runtime's own recipe (``quantize_data``: symmetric int8, per
    tensor, as :func:`_int8` asks for) and stored dequantized; biases (int32, scale =
    input scale x weight scale, i.e. finer than float32 rounding matters here) are the float
    export's; float initializers and Constant nodes are the float export's by name. Only the
    activation QuantizeLinear/DequantizeLinear scales and zero points come from the shipped
    file: they are calibration results with no other source. Run it with
    :func:`reference_session` (no graph optimization: each Q/DQ pair is float rounding).

    Raises:
        ReferenceError: the shipped file is not the float export plus Q/DQ pairs, or holds a
            tensor the float export cannot account for.
    """
    import copy

    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.quant_utils import quantize_data

    sources = check_qdq_structure(shipped, float_model)
    floats = _initializers(float_model)
    float_constants = _constants(float_model)
    ref = copy.deepcopy(shipped)
    shipped_inits = _initializers(shipped)
    q_params = {x for n in ref.graph.node if n.op_type in _QDQ and n.input[0] not in shipped_inits for x in n.input[1:]}
    nodes = []
    for node in ref.graph.node:
        source = node.input[0] if node.op_type == "DequantizeLinear" else None
        if source in shipped_inits:
            if sources.get(source) not in floats:
                raise ReferenceError(f"quantized initializer '{source}' has no float source in the export")
            value = floats[sources[source]].astype(np.float32)
            if shipped_inits[source].dtype == np.int8:  # a weight: re-quantize by the same recipe
                zero, scale, q = quantize_data(value.ravel(), TensorProto.INT8, True)
                value = ((np.asarray(q, np.float32) - np.float32(zero)) * np.float32(scale)).reshape(value.shape)
            nodes.append(helper.make_node("Constant", [], [node.output[0]],
                                          value=numpy_helper.from_array(value.astype(np.float32), node.output[0])))
            continue
        if node.op_type == "Constant":
            if node.output[0] not in float_constants:
                raise ReferenceError(f"Constant '{node.output[0]}' is not in the float export")
            node = float_constants[node.output[0]]
        nodes.append(node)
    del ref.graph.node[:]
    ref.graph.node.extend(nodes)
    used = {x for n in ref.graph.node for x in n.input}
    kept = []
    for init in ref.graph.initializer:
        if init.name not in used:
            continue
        if init.name in floats:
            init = numpy_helper.from_array(floats[init.name], init.name)
        elif init.name not in q_params:
            raise ReferenceError(f"initializer '{init.name}' is neither in the float export nor an activation scale")
        kept.append(init)
    del ref.graph.initializer[:]
    ref.graph.initializer.extend(kept)
    return ref


def neutralize_noise(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``RandomUniformLike`` replaced by 0.5 everywhere: add_noise's Laplace draw is then 0.

    (``n = -b sign(u - 1/2) log(1 - 2|u - 1/2|)`` with ``u = 1/2``.) The clean reference of a
    noised sending partition.
    """
    import copy

    from onnx import helper, numpy_helper

    out = copy.deepcopy(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type != "RandomUniformLike":
            nodes.append(node)
            continue
        zero, half = f"{node.output[0]}__zero", f"{node.output[0]}__half"
        nodes += [helper.make_node("Constant", [], [zero], value=numpy_helper.from_array(np.zeros((), np.float32))),
                  helper.make_node("Constant", [], [half], value=numpy_helper.from_array(np.full((), 0.5, np.float32))),
                  helper.make_node("Mul", [node.input[0], zero], [f"{node.output[0]}__zeros"]),
                  helper.make_node("Add", [f"{node.output[0]}__zeros", half], [node.output[0]])]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def reference_session(model: onnx.ModelProto):
    """An ONNX Runtime session with graph optimizations off (no Q/DQ fusion into integer kernels), one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def quantization_steps(model: onnx.ModelProto) -> tuple[dict[str, float | None], int]:
    """Each graph output's quantization step in its own units, and the number of activation QuantizeLinear nodes.

    The step is that of the last activation QuantizeLinear/DequantizeLinear the output goes
    through, carried over the ops that keep it (ReLU, pooling, reshapes, additions of two
    quantized values: the larger step) and scaled by constant Div/Mul (a uint8 wire encoding
    divides by its scale, so a step of ``s`` becomes ``s / scale`` wire units). None where
    the walk meets anything else (e.g. an unquantized convolution).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = _initializers(model)
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return inits[name]
        if name in constants:
            from onnx import numpy_helper

            return numpy_helper.to_array(constants[name].attribute[0].t)
        return None

    def step(tensor: str, depth: int = 0) -> float | None:
        node = producer.get(tensor)
        if node is None or depth > 64:
            return None
        if node.op_type == "DequantizeLinear":
            return None if node.input[0] in inits else float(np.max(np.abs(const(node.input[1]))))
        if node.op_type == "QuantizeLinear":
            return float(np.max(np.abs(const(node.input[1]))))
        if node.op_type in ("Div", "Mul") and const(node.input[1]) is not None:
            inner, c = step(node.input[0], depth + 1), np.abs(const(node.input[1]))
            if inner is None or not c.size:
                return None
            return inner / float(c.min()) if node.op_type == "Div" else inner * float(c.max())
        if node.op_type in _STEP_PRESERVING:
            found = [step(x, depth + 1) for x in node.input if x and const(x) is None]
            return None if not found or any(f is None for f in found) else max(found)
        return None

    count = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    return {o.name: step(o.name) for o in model.graph.output}, count


def fp16_rtol(model: onnx.ModelProto, rtol: float) -> float:
    """Relative tolerance of a float16 partition: half a float16 ulp (2^-11) per compute layer, at least ``rtol``."""
    layers = sum(1 for n in model.graph.node if n.op_type in _COMPUTE)
    return max(rtol, 2.0 ** -11 * max(layers, 1))
