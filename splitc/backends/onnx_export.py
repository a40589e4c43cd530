"""Export the partitions to ONNX: static shapes, opset >= 17, boundary names kept, simplified.

**Once for the whole chain** (:func:`export_partitions`, what ``splitc compile`` does): the
partitions, as they are after every adaptation (bottleneck encoders and decoders, wire
quantization, noise, exit heads, several segments per tier), are stitched into one module that
runs them in chain order and returns every value a partition sends or the model answers, each
under its wire name. That module is exported once (TorchScript), simplified once (onnxsim) and cut
in memory into one ONNX graph per partition with :class:`onnx.utils.Extractor` (both on the graph with
its large weights set aside, which each piece gets back: :func:`_set_weights_aside`), from the
partition's input names to its output names: the wire names are graph inputs/outputs of the
whole export, so every cut tensor has its type and shape (the Extractor's known need for
value_info). Each piece is checked: its inputs and outputs are exactly the partition's wire names
in order, every node input is produced inside it, and no computing node appears in two pieces (a
graph optimisation that merged work across a cut would show here). Falls back to one export per
partition (:func:`export_partition`), saying why in the log, when the stitched export fails, a
check fails, or the parameters approach protobuf's 2 GB limit.

**One partition** (:func:`export_partition`): the TorchScript-based exporter (``dynamo=False``)
is used first: it is fast (ResNet-50 in ~1.3 s on the CI machine, vs ~3 s for the dynamo exporter
on a small net) and folds eval-mode BatchNorm into convolutions. If it fails, the dynamo exporter
is tried. The result is simplified with onnxsim; when onnxsim fails, the unsimplified model is
kept and a warning says so. The graph's input and output names are exactly the partition's wire
names (checked after simplification).
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import onnx
import torch
from torch import nn

from splitc.errors import SplitcError
from splitc.core.passes.cut import Partition
from splitc.core.tracing import quiet_native_stderr

__all__ = ["ExportedPartition", "ExportReport", "export_partition", "export_partitions", "MIN_OPSET"]

log = logging.getLogger("splitc")
MIN_OPSET = 17
#: Above this many parameter bytes the stitched export is not tried (protobuf's 2 GB limit on one model).
STITCH_MAX_PARAM_BYTES = 1_800_000_000


@dataclass
class ExportedPartition:
    """Where a partition's ONNX file is and what is in it."""

    path: Path
    exporter: str
    simplified: bool
    op_types: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ExportReport:
    """How the partitions were exported.

    Attributes:
        partitions: one :class:`ExportedPartition` per partition, in order.
        method: ``"stitched"`` (one export, cut with onnx.utils.Extractor) or ``"per-partition"``.
        reason: why the per-partition export was used (empty for ``stitched``).
        seconds: wall time per step (``export``, ``simplify``, ``extract``, ``save``).
    """

    partitions: list[ExportedPartition]
    method: str
    reason: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


class _Stitched(nn.Module):
    """The partitions run in chain order: model inputs in, every value a partition returns out (by wire name).

    Each partition gets copies of its inputs (as :func:`splitc.core.samples.run_partitions` does): an
    in-place op in a receiver must not change the value its sender returns.
    """

    def __init__(self, partitions: Sequence[Partition], input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        self.parts = nn.ModuleList([p.graph_module for p in partitions])
        self.part_inputs = [list(p.inputs) for p in partitions]
        self.part_outputs = [list(p.outputs) for p in partitions]
        self.input_names, self.output_names = input_names, output_names

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = dict(zip(self.input_names, args))
        for gm, names_in, names_out in zip(self.parts, self.part_inputs, self.part_outputs):
            result = gm(*[values[n].clone() for n in names_in])
            values.update(zip(names_out, result if isinstance(result, (tuple, list)) else (result,)))
        return tuple(values[n] for n in self.output_names)


def export_partition(part: Partition, path: Path, opset: int = MIN_OPSET, simplify: bool = True) -> ExportedPartition:
    """Write ``part`` to ``path`` as ONNX.

    Args:
        part: the partition, with ``example_inputs`` recorded by the cut pass.
        path: the .onnx file to write (its folder must exist).
        opset: ONNX opset (>= 17).
        simplify: run onnxsim.

    Returns:
        An :class:`ExportedPartition`.
    """
    if opset < MIN_OPSET:
        raise SplitcError(f"--opset {opset} is too old", f"use {MIN_OPSET} or newer")
    notes: list[str] = []
    model, exporter = _export(part, opset, notes)
    simplified = False
    if simplify:
        model, simplified = _simplify(model, part, notes)
    _check_names(model, part)
    onnx.save(model, str(path))
    ops = sorted(_op_types(model.graph))
    return ExportedPartition(path, exporter, simplified, ops, notes)


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Op types of ``graph`` and of its subgraphs (If/Loop/Scan bodies: a detector's NonMaxSuppression
    sits inside an If), so backend support checks see every op."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= _op_types(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    ops |= _op_types(sub)
    return ops


def _export(part: Partition, opset: int, notes: list[str]) -> tuple[onnx.ModelProto, str]:
    args = tuple(part.example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _torchscript_export(part, args, opset), "torchscript"
        except Exception as exc:  # fall back to the dynamo exporter, which handles more ops
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            notes.append(f"TorchScript exporter failed ({reason}); used the dynamo exporter")
            log.warning("partition %d: TorchScript ONNX exporter failed (%s); trying the dynamo exporter",
                        part.index, reason)
        program = torch.onnx.export(part.graph_module, args, input_names=part.inputs,
                                    output_names=part.outputs, opset_version=opset, dynamo=True,
                                    optimize=True, verbose=False)
        return program.model_proto, "dynamo"


def _torchscript_export(part: Partition, args: tuple, opset: int) -> onnx.ModelProto:
    import io

    buffer = io.BytesIO()
    torch.onnx.export(part.graph_module, args, buffer, input_names=part.inputs, output_names=part.outputs,
                      opset_version=opset, do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _simplify(model: onnx.ModelProto, part: Partition, notes: list[str]) -> tuple[onnx.ModelProto, bool]:
    import onnxsim

    try:
        with quiet_native_stderr():  # onnxsim's C++ optimizer prints a line per constant it cannot fold
            simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises plain RuntimeErrors from C++
        ok, reason = False, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    else:
        reason = "its check of the simplified model failed"
    if ok:
        return simplified, True
    notes.append(f"onnxsim skipped: {reason}")
    log.warning("partition %d: onnxsim failed (%s); keeping the unsimplified model", part.index, reason)
    return model, False


def _check_names(model: onnx.ModelProto, part: Partition) -> None:
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != part.inputs or outputs != part.outputs:
        raise AssertionError(f"partition {part.index}: ONNX names {inputs} -> {outputs} do not match the "
                             f"wire names {part.inputs} -> {part.outputs}")


def _wire_names(partitions: Sequence[Partition]) -> tuple[list[str], list[str], list[torch.Tensor]]:
    """Model inputs the chain reads (with example values) and every value a partition returns, in chain order."""
    produced: list[str] = []
    inputs: dict[str, torch.Tensor] = {}
    for part in partitions:
        for name, value in zip(part.inputs, part.example_inputs):
            if name not in produced and name not in inputs:
                inputs[name] = value
        produced += [n for n in part.outputs if n not in produced]
    return list(inputs), produced, list(inputs.values())


def _stitched_export(partitions: Sequence[Partition], opset: int) -> onnx.ModelProto:
    input_names, output_names, examples = _wire_names(partitions)
    module = _Stitched(partitions, input_names, output_names)
    # the exporter puts the module in eval mode and afterwards calls train(<the top module's old mode>) on the
    # whole tree: a fresh wrapper is in training mode, which would leave every BatchNorm of the partitions (shared
    # with the loaded model) in training mode; so each module's own mode is restored here
    modes = {m: m.training for m in module.modules()}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(examples), buffer, input_names=input_names,
                              output_names=output_names, opset_version=opset, do_constant_folding=True, dynamo=False)
    finally:
        for m, training in modes.items():
            m.training = training
    return onnx.load_from_string(buffer.getvalue())


def _check_piece(piece: onnx.ModelProto, part: Partition) -> str | None:
    """Why an extracted partition is not self-contained with the partition's wire names (None: it is)."""
    inputs = [i.name for i in piece.graph.input]
    outputs = [o.name for o in piece.graph.output]
    if inputs != part.inputs or outputs != part.outputs:
        return f"partition {part.index}: extracted names {inputs} -> {outputs}, expected {part.inputs} -> {part.outputs}"
    available = set(inputs) | {t.name for t in piece.graph.initializer} | {""}
    for node in piece.graph.node:
        missing = [i for i in node.input if i not in available]
        if missing:
            return f"partition {part.index}: node {node.name or node.op_type} reads {missing[0]}, computed in another partition"
        # an If/Loop body may read outer-scope tensors: the Extractor does not follow those reads (its known
        # limit), so a piece can lack the nodes that compute them (found on torchvision's Faster R-CNN tail)
        outer = [i for i in sorted(_outer_reads(node)) if i not in available]
        if outer:
            return (f"partition {part.index}: a subgraph of node {node.name or node.op_type} reads {outer[0]}, which "
                    "the extracted piece does not compute before it")
        available.update(node.output)
    return None


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names the subgraphs of ``node`` (If branches, Loop/Scan bodies, nested) read from the enclosing scopes."""
    reads: set[str] = set()
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                      list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            local = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
            for inner in graph.node:
                reads |= {i for i in inner.input if i not in local}
                reads |= _outer_reads(inner) - local
                local.update(inner.output)
    return reads


#: Initializers of more elements than this leave the graph while onnxsim runs (see :func:`_weightless_simplify`).
_WEIGHT_ELEMENTS = 1024


def _set_weights_aside(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """The graph with every initializer of more than :data:`_WEIGHT_ELEMENTS` elements made a graph input.

    Simplifying and cutting run on this weightless graph; each piece gets the weights its nodes read
    back at the end (:func:`_extract`). Hand-written around onnxsim and the Extractor rather than
    calling them on the whole model: both serialise, parse and (onnxsim) check the model with every
    weight (several copies of ResNet-50's 100 MB: ~0.5 s of CPU, a third of a compile), while what
    they do to an exported graph (identities, shape arithmetic, duplicate constants, reachability)
    never needs a large weight -- the exporter already folded every computation on weights. Small
    initializers (shapes, scales) stay, so shape arithmetic still folds.
    """
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    large = {t.name: t for t in skeleton.graph.initializer if _elements(t) > _WEIGHT_ELEMENTS}
    kept = [t for t in skeleton.graph.initializer if t.name not in large]
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(kept)
    skeleton.graph.input.extend(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))
                                for name, t in large.items())
    return skeleton, large


def _with_weights(model: onnx.ModelProto, large: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """Put the weights set aside back as initializers (those the nodes read) and drop them from the inputs."""
    used = {i for node in model.graph.node for i in node.input}
    inputs = [i for i in model.graph.input if i.name not in large]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(t for name, t in large.items() if name in used)
    return model


def _weightless_simplify(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxsim on the graph with its large weights set aside, the weights put back after (see above).

    Returns None when onnxsim's check fails or the result does not have the original inputs back.
    """
    import onnxsim

    skeleton, large = _set_weights_aside(model)
    with quiet_native_stderr():  # onnxsim's C++ optimizer prints a line per constant it cannot fold
        simplified, ok = onnxsim.simplify(skeleton)
    if not ok or [i.name for i in simplified.graph.input if i.name not in large] != [i.name for i in model.graph.input]:
        return None
    return _with_weights(simplified, large)


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count


def _simplify_whole(model: onnx.ModelProto, notes: list[str]) -> tuple[onnx.ModelProto, bool]:
    import onnxsim

    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    try:
        fast = _weightless_simplify(model)
        if fast is not None and [o.name for o in fast.graph.output] == names[1]:
            return fast, True
        with quiet_native_stderr():
            simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises plain RuntimeErrors from C++
        ok, reason = False, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    else:
        reason = "its check of the simplified model failed"
        if ok and ([i.name for i in simplified.graph.input], [o.name for o in simplified.graph.output]) != names:
            ok, reason = False, "it renamed graph inputs or outputs"
    if ok:
        return simplified, True
    notes.append(f"onnxsim skipped: {reason}")
    log.warning("onnxsim failed on the stitched model (%s); keeping it unsimplified", reason)
    return model, False


def _extract(model: onnx.ModelProto, partitions: Sequence[Partition]) -> tuple[list[onnx.ModelProto], str | None]:
    """One graph per partition, cut from ``model`` by wire names; (pieces, None) or ([], why not)."""
    from onnx.utils import Extractor

    skeleton, large = _set_weights_aside(model)  # the Extractor infers shapes on a copy: no need to copy weights
    extractor = Extractor(skeleton)
    pieces, owner = [], {}
    for part in partitions:
        piece = _with_weights(extractor.extract_model(list(part.inputs), list(part.outputs)), large)
        problem = _check_piece(piece, part)
        if problem is None:
            for node in piece.graph.node:
                if node.op_type == "Constant":  # a constant may serve two pieces; computing nodes may not
                    continue
                key = tuple(node.output)
                if key in owner:
                    problem = (f"node {node.name or node.op_type} is in partitions {owner[key]} and {part.index} "
                               "(work merged across a cut)")
                    break
                owner[key] = part.index
        if problem is not None:
            return [], problem
        pieces.append(piece)
    return pieces, None


def export_partitions(partitions: Sequence[Partition], paths: Sequence[Path], opset: int = MIN_OPSET,
                      simplify: bool = True) -> ExportReport:
    """Write every partition to its path as ONNX: one stitched export cut by wire names (see module docstring).

    Args:
        partitions: the partitions in chain order, with ``example_inputs`` (after every adaptation).
        paths: one .onnx file per partition (folders must exist).
        opset: ONNX opset (>= 17).
        simplify: run onnxsim (once, on the stitched model).

    Returns:
        An :class:`ExportReport` (``method`` says whether the stitched export or the per-partition
        fallback was used, and why).
    """
    if opset < MIN_OPSET:
        raise SplitcError(f"--opset {opset} is too old", f"use {MIN_OPSET} or newer")
    seconds: dict[str, float] = {}
    params = sum(p.param_bytes for p in partitions)
    reason = ""
    pieces: list[onnx.ModelProto] = []
    notes: list[str] = []
    simplified = False
    if params > STITCH_MAX_PARAM_BYTES:
        reason = f"{params / 1e9:.1f} GB of parameters: one model would pass protobuf's 2 GB limit"
    else:
        start = time.perf_counter()
        try:
            model = _stitched_export(partitions, opset)
        except Exception as exc:  # noqa: BLE001 - any exporter failure: the per-partition path has its own fallback
            reason = f"the stitched TorchScript export failed ({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__})"
        seconds["export"] = time.perf_counter() - start
        if not reason:
            if simplify:
                start = time.perf_counter()
                model, simplified = _simplify_whole(model, notes)
                seconds["simplify"] = time.perf_counter() - start
            start = time.perf_counter()
            pieces, problem = _extract(model, partitions)
            seconds["extract"] = time.perf_counter() - start
            reason = problem or ""
    if reason:
        log.info("[export] per-partition export: %s", reason)
        start = time.perf_counter()
        results = [export_partition(part, path, opset=opset, simplify=simplify) for part, path in zip(partitions, paths)]
        seconds["per_partition"] = time.perf_counter() - start
        return ExportReport(results, "per-partition", reason, seconds)
    start = time.perf_counter()
    results = []
    for part, piece, path in zip(partitions, pieces, paths):
        onnx.save(piece, str(path))
        ops = sorted(_op_types(piece.graph))
        results.append(ExportedPartition(Path(path), "torchscript", simplified, ops, list(notes)))
    seconds["save"] = time.perf_counter() - start
    return ExportReport(results, "stitched", "", seconds)
