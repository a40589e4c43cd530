"""``profile``: per-node shapes, dtypes, bytes, FLOPs, parameter bytes and op class.

Runs the graph once on the example inputs (torch.fx's ``ShapeProp`` writes
``node.meta["tensor_meta"]``) and, around every node, counts FLOPs with PyTorch's
own ``FlopCounterMode``, which knows the exact formulas of convolutions, matmuls,
bmm/baddbmm and scaled-dot-product attention (also inside leaf modules such as
``nn.MultiheadAttention`` and fx-wrapped functions such as torchvision's
``shifted_window_attention``). ``FlopCounterMode`` counts only those contractions;
the cheap rest (norms, pooling, activations, reductions) gets a per-element
estimate written here, marked ``splitc.flops_source = "estimated"``, in the spirit
of fvcore/ptflops.

Writes, for every node:
    ``splitc.op_class``     one of :data:`splitc.core.op_classes.OP_CLASSES`
    ``splitc.flops``        int, floating point operations of one call
    ``splitc.flops_source`` "counted" (FlopCounterMode) | "formula" | "estimated" | "none"
    ``splitc.out_bytes``    bytes of the tensor outputs
    ``splitc.in_bytes``     bytes of the tensor inputs read
    ``splitc.param_bytes``  bytes of parameters and buffers the node reads
    ``splitc.is_tensor``    the node's value is a single tensor
    ``splitc.const_value``  the node's value, when it is not a tensor (shapes, ints)
    ``splitc.foldable``     a BatchNorm directly after a convolution (folded at export)
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata, _extract_tensor_metadata
from torch.utils.flop_counter import FlopCounterMode

from splitc.core.pass_manager import Pass, PassResult
from splitc.errors import SplitcError
from splitc.units import format_bytes

__all__ = ["ProfilePass", "profile_graph", "weight_bytes", "op_name", "classify", "OP_NAME", "OP_CLASS", "FLOPS", "FLOPS_SOURCE", "OUT_BYTES",
           "IN_BYTES", "PARAM_BYTES", "IS_TENSOR", "CONST_VALUE", "FOLDABLE", "DEPTHWISE"]

# node.meta keys this analysis writes (every other pass reads them through these names)
OP_NAME = "splitc.op_name"          #: the operator's name (``conv2d``, ``add``, ...)
OP_CLASS = "splitc.op_class"        #: one of :data:`splitc.core.op_classes.OP_CLASSES`
FLOPS = "splitc.flops"              #: int, floating point operations of one call
FLOPS_SOURCE = "splitc.flops_source"  #: "counted" | "formula" | "estimated" | "none"
OUT_BYTES = "splitc.out_bytes"      #: bytes of the tensor outputs
IN_BYTES = "splitc.in_bytes"        #: bytes of the tensor inputs read
PARAM_BYTES = "splitc.param_bytes"  #: bytes of parameters and buffers the node reads
IS_TENSOR = "splitc.is_tensor"      #: the node's value is a single tensor
CONST_VALUE = "splitc.const_value"  #: the node's value when it is not a tensor (shapes, ints)
FOLDABLE = "splitc.foldable"        #: a BatchNorm directly after a convolution (folded at export)
DEPTHWISE = "splitc.depthwise"      #: a depthwise convolution (groups == input channels)

_VIEW_NAMES = frozenset({
    "getattr", "getitem", "size", "dim", "view", "reshape", "flatten", "squeeze", "unsqueeze",
    "expand", "expand_as", "split", "chunk", "unbind", "identity", "dropout", "dropout1d",
    "dropout2d", "alias", "detach", "t", "_assert", "type_as", "to", "float", "narrow", "select",
    "slice", "unflatten", "view_as", "clone", "_unsafe_view",
})
_MOVE_NAMES = frozenset({
    "cat", "concat", "stack", "permute", "transpose", "contiguous", "pad", "roll", "repeat",
    "index_select", "gather", "channel_shuffle", "pixel_shuffle", "constant_pad_nd", "copy",
    "_patch_merging_pad", "zeros", "zeros_like", "ones", "ones_like", "new_zeros", "arange",
})
_MATMUL_NAMES = frozenset({"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum"})
_REDUCE_NAMES = frozenset({
    "mean", "sum", "amax", "max", "min", "softmax", "log_softmax", "_softmax", "logsumexp",
    "var", "std", "norm", "argmax", "prod",
})
#: Classes whose ops FlopCounterMode counts (and "other": unknown, so counted to be safe).
_CONTRACTING = frozenset({"conv", "matmul", "attention", "other"})
#: Where built-in functions live (``torch.relu.__module__`` is ``"torch"``; ``operator.add``'s ``"_operator"``).
_BUILTIN_HOMES = frozenset({"torch", "torch.functional", "torch._C._nn", "torch._C._VariableFunctions", "operator",
                            "_operator", "math", "builtins", "torch.nn.functional"})
# Per-element FLOP estimates for classes FlopCounterMode does not count.
_PER_ELEMENT = {"norm": 5, "elementwise": 1, "reduction": 1, "other": 1}


def op_name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """A lower-case name of what a node computes (module type, function or method)."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__.lower()
    if node.op == "call_method":
        return str(node.target).lower()
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        name = getattr(node.target, "__name__", str(node.target))
        return name.split(".")[0].lower()  # aten ops: "convolution.default" -> "convolution"
    return node.op


def classify(name: str) -> str:
    """Map an op name from :func:`op_name` to an op class."""
    if "attention" in name:
        return "attention"
    if "conv" in name:
        return "conv"
    if name in _MATMUL_NAMES or name.endswith("linear"):
        return "matmul"
    if "norm" in name and name not in ("norm",):
        return "norm"
    if "pool" in name:
        return "pool"
    if name in _VIEW_NAMES:
        return "view"
    if name in _MOVE_NAMES:
        return "data_movement"
    if name in _REDUCE_NAMES:
        return "reduction"
    if name in ("placeholder", "get_attr", "output"):
        return "view"
    return "elementwise"


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


def _numel(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return sum(_numel(v) for v in value)
    return 0


class _Profiler(ShapeProp):
    """ShapeProp that also counts FLOPs and bytes around every node.

    ``ShapeProp.run_node`` prints a traceback to stderr before re-raising any error,
    which would break our one-line user errors (a wrong --input-shape fails here), so
    nodes run through the plain Interpreter and ``tensor_meta`` is written with
    ShapeProp's own extractor.
    """

    def run_node(self, n: torch.fx.Node) -> Any:
        name = op_name(n, self.module)
        op_class = classify(name)
        counted = self._may_contract(n, op_class)
        try:
            if counted:
                with FlopCounterMode(display=False) as counter:
                    result = torch.fx.Interpreter.run_node(self, n)
            else:  # a built-in op of a class FlopCounterMode never counts: skip its dispatch mode (most of a
                result = torch.fx.Interpreter.run_node(self, n)  # 10,000-node chain's profile time)
        except Exception as exc:
            raise _NodeFailure(n, exc) from exc
        meta = map_aggregate(result, lambda v: _tensor_metadata(v) if isinstance(v, torch.Tensor) else v)
        if _contains_tensor(result):
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        flops = int(counter.get_total_flops()) if counted else 0
        source = "counted" if flops else "none"
        if not flops and op_class not in ("view", "data_movement"):
            flops = self._estimate(n, name, op_class, args, result)
            source = ("formula" if op_class == "attention" else "estimated") if flops else "none"
        meta = n.meta
        meta[OP_NAME] = name
        meta[OP_CLASS] = op_class
        meta[FLOPS] = flops
        meta[FLOPS_SOURCE] = source
        meta[OUT_BYTES] = _tensor_bytes(result)
        meta[IN_BYTES] = _tensor_bytes(list(args)) + _tensor_bytes(list(kwargs.values()))
        meta[PARAM_BYTES] = self._param_bytes(n, result)
        meta[IS_TENSOR] = isinstance(result, torch.Tensor)
        if op_class == "conv" and n.op == "call_module":  # depthwise convs run far below dense conv rates
            conv = self.module.get_submodule(n.target)
            groups, channels = getattr(conv, "groups", 1), getattr(conv, "in_channels", 0)
            meta[DEPTHWISE] = bool(groups > 1 and groups == channels)
        if not isinstance(result, torch.Tensor) and not _contains_tensor(result):
            meta[CONST_VALUE] = result
        return result

    def _may_contract(self, n: torch.fx.Node, op_class: str) -> bool:
        """Whether FlopCounterMode could count anything in ``n`` (convs, matmuls, attention, or unknown code).

        Placeholders, weights and outputs never; a ``torch.nn`` layer, a Tensor method or a function of
        torch / torch.nn.functional / operator / math of a class without contractions (element-wise,
        norms, pooling, reductions, views, copies) neither; anything else (user code wrapped as a leaf,
        a custom module) is counted.
        """
        if n.op not in ("call_module", "call_function", "call_method") or op_class in _CONTRACTING:
            return n.op in ("call_module", "call_function", "call_method")
        if n.op == "call_method":
            return False
        if n.op == "call_module":
            return not type(self.module.get_submodule(n.target)).__module__.startswith("torch.nn")
        home = getattr(n.target, "__module__", None) or ""
        return not (home in _BUILTIN_HOMES or home.startswith("torch.nn.functional") or home.startswith("torch._ops")
                    or getattr(n.target, "__self__", None) is torch or isinstance(n.target, torch._ops.OpOverload))

    def _estimate(self, n: torch.fx.Node, name: str, op_class: str, args: tuple, result: Any) -> int:
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        if isinstance(module, nn.MultiheadAttention):
            return _mha_flops(module, args)
        if op_class == "pool":
            kernel = getattr(module, "kernel_size", None)
            if kernel is not None:
                area = math.prod(kernel) if isinstance(kernel, (tuple, list)) else kernel ** 2
                return _numel(result) * area
            return _numel(args[0]) if args else _numel(result)  # adaptive / functional pools
        if op_class == "reduction":
            return (5 if "softmax" in name else 1) * max(_numel(list(args)), 1)
        return _PER_ELEMENT.get(op_class, 1) * _numel(result)

    def _param_bytes(self, n: torch.fx.Node, result: Any) -> int:
        if n.op == "call_module":
            module = self.module.get_submodule(n.target)
            tensors = list(module.parameters()) + list(module.buffers())
            return sum(t.numel() * t.element_size() for t in tensors)
        if n.op == "get_attr":
            return _tensor_bytes(result)
        return 0


_FORMATS = ((torch.contiguous_format, 0), (torch.channels_last, 4), (torch.channels_last_3d, 5))


def _tensor_metadata(value: torch.Tensor) -> TensorMetadata:
    """ShapeProp's ``TensorMetadata`` of a dense tensor, without its contiguity helper.

    torch's ``_extract_tensor_metadata`` checks memory formats through ``torch._check``, whose first
    call imports sympy (~0.4 s of every ``splitc plan``); ``Tensor.is_contiguous(memory_format=...)``
    answers the same question natively (channels_last formats only exist for 4-D / 5-D tensors).
    Quantized and sparse tensors take torch's own path.
    """
    if value.is_quantized or value.layout != torch.strided:
        return _extract_tensor_metadata(value)
    memory_format = next((fmt for fmt, rank in _FORMATS
                          if (rank == 0 or value.dim() == rank) and value.is_contiguous(memory_format=fmt)), None)
    return TensorMetadata(value.shape, value.dtype, value.requires_grad, value.stride(), memory_format, False, {})


def _mha_flops(module: nn.MultiheadAttention, args: tuple) -> int:
    """nn.MultiheadAttention in eval mode takes a fused native kernel FlopCounterMode does not see.

    Projections of query (L), key and value (S) tokens, scores and weighted sum, output projection.
    """
    query, key = args[0], args[1] if len(args) > 1 else args[0]
    seq_dim = 1 if module.batch_first else 0
    batch = query.numel() // (query.shape[seq_dim] * query.shape[-1])
    q_len, kv_len, embed = query.shape[seq_dim], key.shape[seq_dim], module.embed_dim
    return 2 * batch * (q_len * embed * embed + 2 * kv_len * embed * embed + 2 * q_len * kv_len * embed
                        + q_len * embed * embed)


class _NodeFailure(Exception):
    def __init__(self, node: torch.fx.Node, exc: Exception) -> None:
        self.node, self.exc = node, exc
        super().__init__(str(exc))


def _contains_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    return False


def _mark_foldable_batchnorms(gm: torch.fx.GraphModule) -> int:
    """BatchNorm fed only by a convolution is folded into it by the ONNX exporter (eval mode)."""
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if isinstance(src, torch.fx.Node) and src.meta.get(OP_CLASS) == "conv" and len(src.users) == 1:
            node.meta[FOLDABLE] = True
            count += 1
    return count


def profile_graph(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> None:
    """Annotate ``gm`` in place as the profile pass does (shapes, FLOPs, bytes, op class) from ``inputs``."""
    with torch.no_grad():
        _Profiler(gm).propagate(*[x.clone() for x in inputs])  # the model may write in place


class ProfilePass(Pass):
    """Annotate every node with shape, dtype, bytes, FLOPs and op class (an analysis)."""

    name = "profile"
    provides = ("tensor_meta", "splitc.profile")

    def run(self, gm, ctx) -> PassResult:
        with torch.no_grad():
            try:
                _Profiler(gm).propagate(*[x.clone() for x in ctx.example_inputs])  # the model may write in place
            except _NodeFailure as failure:
                raise _input_error(failure, ctx) from None
        folded = _mark_foldable_batchnorms(gm)
        nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
        flops = sum(n.meta[FLOPS] for n in nodes)
        estimated = sum(1 for n in nodes if n.meta[FLOPS_SOURCE] == "estimated")
        params = weight_bytes(gm)
        summary = (f"{len(nodes)} nodes, {flops / 1e9:.3f} GFLOPs ({estimated} nodes estimated per element), "
                   f"{format_bytes(params)} parameters, {folded} BatchNorms foldable")
        return PassResult(gm, modified=False, summary=summary)


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters *and buffers* (BatchNorm statistics, folded constants): what a tier
    holds for it. The one "parameters" figure of the log, the manifest and ``splitc inspect``."""
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))


def _input_error(failure: _NodeFailure, ctx) -> SplitcError:
    shapes = ", ".join(f"{s.name}: {'x'.join(map(str, s.shape))} {s.dtype}" for s in ctx.input_specs)
    first = (str(failure.exc).strip().splitlines() or [type(failure.exc).__name__])[0][:300]
    return SplitcError(
        f"the model fails on input ({shapes}) at node '{failure.node.name}' "
        f"({op_name(failure.node, failure.node.graph.owning_module)}): {first}",
        "pass the model's real input shape with --input-shape (and --input-dtype)",
    )
