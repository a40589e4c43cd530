"""``fold_constants``: evaluate constant subgraphs once and store them as buffers.

A node computed from weights, literals and nothing else (torchvision Swin's relative-position
bias gathered from a learned table; a transformer's position ids ``arange(64)``; the all-True
or causal attention mask of a model called without a mask) computes the same tensor for every
request. Left in the graph it could be chosen to cross a cut (a [1, 1, S, S] mask is S^2 bytes
per link per request), and the ONNX exporter would fold it into an initializer under a new
name. Folding it here makes it a ``get_attr`` like any weight: the cut pass copies it into the
partitions that read it and it never goes on the wire.

Constant means: every input is a weight or another constant; or no tensor input at all (a
factory with literal arguments: ``arange``, ``ones``, ``full``); or a "like" factory whose value
depends only on its input's static shape (``ones_like``, ``new_zeros``). Never folded: random
ops, ``empty*`` (its value is whatever is written into it later), and any value written in
place, directly or through a view (``x[0].copy_(img)``).

Two helpers make more of a graph foldable: :func:`functionalize_private_inplace` (an in-place
op on a private intermediate, such as T5's ``buckets += ...``, becomes functional) and
:func:`drop_empty_concat_inputs` (``cat([tensor([]), k])``, legal in torch, not in ONNX).

Runs twice in the default pipeline: before profiling, and again after ``fold_static_shapes``
(:class:`RefoldConstantsPass`), because ``arange(x.size(1))`` becomes ``arange(64)`` only
then; that run re-profiles the graph when it folded something, so the new buffers carry the
profile's metadata.

torch.fx's ``const_fold.split_const_subgraphs`` does a narrower job (parameter-only subgraphs)
and returns a module that evaluates the constants lazily on first call and renames attributes;
we need plain buffers in the graph, so the few lines are here.
"""

from __future__ import annotations

import torch
import torch.fx

from splitc.core.graph import COMPUTE_OPS
from splitc.core.pass_manager import Pass, PassResult
from splitc.core.passes.profile import OP_CLASS, profile_graph

__all__ = ["FoldConstantsPass", "RefoldConstantsPass", "fold_constants", "functionalize_private_inplace",
           "drop_empty_concat_inputs"]


class FoldConstantsPass(Pass):
    """Replace every constant computation by a buffer holding its value."""

    name = "fold_constants"
    provides = ("splitc.constants_folded",)

    def run(self, gm, ctx) -> PassResult:
        rewritten = functionalize_private_inplace(gm)
        folded = fold_constants(gm)
        if folded or rewritten:
            gm.graph.eliminate_dead_code()  # the folded subgraphs now have no users
            gm.graph.lint()
            gm.recompile()
        if folded and any(OP_CLASS in n.meta for n in gm.graph.nodes):  # after profiling: profile the new buffers
            profile_graph(gm, ctx.example_inputs)
        summary = f"{folded} constant subgraph(s) folded to buffers"
        if rewritten:
            summary += f", {rewritten} private in-place op(s) made functional"
        return PassResult(gm, modified=bool(folded or rewritten), summary=summary)


class RefoldConstantsPass(FoldConstantsPass):
    """The second run of :class:`FoldConstantsPass`, once shapes are literals (own name for timings and logs)."""

    name = "fold_constants_after_shapes"
    requires = ("splitc.static_shapes",)
    provides = ("splitc.constants_refolded",)


def fold_constants(gm: torch.fx.GraphModule) -> int:
    """Replace each constant node some non-constant node reads by a ``get_attr`` buffer.

    Returns:
        How many buffers were made (plus constant empty ``cat`` operands dropped).
    """
    values: dict[torch.fx.Node, object] = {}
    interpreter = torch.fx.Interpreter(gm)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node] = interpreter.fetch_attr(node.target)
        elif node.op in COMPUTE_OPS and _foldable(node, values):
            shape_only = _is_shape_only(node)
            args, kwargs = torch.fx.node.map_arg(
                (node.args, node.kwargs), lambda a: _static_value(a, values) if shape_only else values[a])
            leftover: list[object] = []
            torch.fx.node.map_aggregate((args, kwargs), lambda v: leftover.append(v)
                                        if isinstance(v, torch.fx.Node) else None)
            if leftover:
                continue  # a shape-only factory whose input shape is not known yet
            with torch.no_grad():
                values[node] = getattr(interpreter, node.op)(node.target, args, kwargs)
    folded = 0
    for node in [n for n in values if n.op in COMPUTE_OPS]:
        if isinstance(values[node], torch.Tensor) and any(u not in values for u in node.users):
            folded += 1
            name = f"_splitc_const_{node.name}"
            gm.register_buffer(name, values[node].detach().clone())
            with gm.graph.inserting_before(node):
                replacement = gm.graph.get_attr(name)
            node.replace_all_uses_with(replacement)
    return folded + drop_empty_concat_inputs(gm)


def functionalize_private_inplace(gm: torch.fx.GraphModule) -> int:
    """Rewrite ``aten.add_(x, y)`` to ``aten.add(x, y)`` where nothing else can see the mutation.

    That is: ``x`` is a computed tensor whose only user is that op, made by an ATen op whose result
    aliases nothing (a view such as ``select`` would carry the write to its base). torch.export keeps
    T5's ``buckets += ...`` in place; left so, the relative-position buckets, hence the position
    bias ([1, H, S, S] floats), never fold and cross every encoder cut.

    Returns:
        The number of rewritten nodes.
    """
    count = 0
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        name = target._schema.name.split("::")[-1]
        if not name.endswith("_") or name.startswith("_") or not node.args or \
                not isinstance(node.args[0], torch.fx.Node):
            continue
        base = node.args[0]
        if len(base.users) != 1 or not _fresh_tensor(base):
            continue
        packet = getattr(torch.ops.aten, name[:-1], None)
        functional = getattr(packet, target._overloadname, None) if packet is not None else None
        if functional is None:
            continue
        node.target = functional
        count += 1
    return count


def _fresh_tensor(node: torch.fx.Node) -> bool:
    """``node`` is an ATen op returning new memory (its schema's result aliases no input)."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    returns = target._schema.returns
    return len(returns) == 1 and returns[0].alias_info is None


def drop_empty_concat_inputs(gm: torch.fx.GraphModule) -> int:
    """Drop constant empty 1-D operands of ``cat``.

    torch's legacy rule lets ``cat([tensor([]), x])`` concatenate a 1-D empty tensor with any
    tensor; ONNX Concat needs equal ranks. A transformers ``DynamicCache`` starts each layer so,
    which a decoder compiled with ``--keep-cache`` needs.

    Returns:
        How many ``cat`` nodes changed.
    """
    cats = {torch.cat, torch.ops.aten.cat.default, torch.concat, torch.concatenate}
    interpreter = torch.fx.Interpreter(gm)
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in cats or not node.args or \
                not isinstance(node.args[0], (list, tuple)):
            continue
        keep = []
        for arg in node.args[0]:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                value = interpreter.fetch_attr(arg.target)
                if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == 0:
                    continue
            keep.append(arg)
        if len(keep) == len(node.args[0]) or not keep:
            continue
        node.args = (keep, *node.args[1:])
        changed += 1
    return changed


#: factories whose value depends only on their input's shape, dtype and device (all static here)
_SHAPE_ONLY_FACTORIES = {getattr(torch, n) for n in ("ones_like", "zeros_like", "full_like")} | {
    getattr(torch.ops.aten, n).default for n in ("ones_like", "zeros_like", "full_like", "new_ones", "new_zeros",
                                                 "new_full") if hasattr(torch.ops.aten, n)}
_SHAPE_ONLY_METHODS = {"new_ones", "new_zeros", "new_full"}
#: calls with literal arguments that make a tensor (recognised by name before profiling)
_FACTORY_NAMES = {"arange", "ones", "zeros", "full", "eye", "tensor", "scalar_tensor", "linspace", "logspace",
                  "tril_indices", "triu_indices", "as_tensor"}
#: in-place methods that do not change the value (torch.export's lift_fresh_copy -> detach_ of a constant)
_VALUE_PRESERVING_INPLACE = {"detach_", "requires_grad_"}
#: ops whose result shares its input's storage: a write into the result writes the input
_VIEW_OPS = {"select", "slice", "view", "narrow", "expand", "permute", "transpose", "unsqueeze", "squeeze",
             "as_strided", "diagonal", "t", "alias", "getitem", "unflatten", "split", "chunk", "unbind", "reshape",
             "view_as", "flatten", "movedim", "swapaxes", "expand_as", "_unsafe_view", "split_with_sizes"}


def _is_shape_only(node: torch.fx.Node) -> bool:
    return node.target in _SHAPE_ONLY_FACTORIES or \
        (node.op == "call_method" and isinstance(node.target, str) and node.target in _SHAPE_ONLY_METHODS)


def _static_value(arg: torch.fx.Node, values: dict) -> object:
    """A stand-in for a shape-only factory's tensor input: its constant value, or a zero tensor of its
    profiled (or torch.export's fake) shape and dtype; the node itself when neither is known."""
    if arg in values:
        return values[arg]
    meta = arg.meta.get("tensor_meta", arg.meta.get("val"))
    if meta is not None and hasattr(meta, "shape") and hasattr(meta, "dtype"):
        try:
            return torch.zeros(tuple(int(d) for d in meta.shape), dtype=meta.dtype)
        except TypeError:  # a symbolic size
            return arg
    return arg


def _foldable(node: torch.fx.Node, values: dict) -> bool:
    if _is_random(node) or _written_in_place(node):
        return False
    if "empty" in getattr(node.target, "__name__", str(node.target)):  # uninitialised memory
        return False
    if _is_shape_only(node):
        return True
    inputs = node.all_input_nodes
    if not inputs:  # arange(64), ones(1, 64), tensor(...): a factory with literal arguments
        return node.op == "call_function" and _makes_tensor(node)
    return all(a in values for a in inputs)


def _makes_tensor(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    if meta is not None:
        return hasattr(meta, "shape")
    return getattr(node.target, "__name__", str(node.target)).split(".")[0] in _FACTORY_NAMES


def _written_in_place(node: torch.fx.Node, depth: int = 0) -> bool:
    """Some user mutates the node's value, directly or through a view of it (``x.fill_()``,
    ``x[...] = v``, ``aten.copy_(aten.select(x, 0, 0), img)`` as torch.export records torchvision's
    image batching)."""
    for user in node.users:
        name = user.target if isinstance(user.target, str) else getattr(user.target, "__name__", "")
        base = name.split(".")[0]
        if base in _VALUE_PRESERVING_INPLACE:
            continue
        first = bool(user.args) and user.args[0] is node
        if first and ((base.endswith("_") and not base.startswith("__")) or base in ("setitem", "index_put")):
            return True
        if first and base in _VIEW_OPS and depth < 16 and _written_in_place(user, depth + 1):
            return True
    return False


def _is_random(node: torch.fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target))
    return any(key in name for key in ("rand", "dropout", "bernoulli", "normal"))
