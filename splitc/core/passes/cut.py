"""``cut``: one sub-``GraphModule`` per tier that runs something -- or per *segment* of it.

A tier's range of nodes is cut further, on the same tier, after every node marked
:data:`SEGMENT_END` (``insert_exits`` marks each exit's confidence): each segment is a
partition of its own, run in order by the tier, with the exit rule applied between
segments by the runtime. The values a segment passes to the next stay in the tier's
process (no encoding, not a transfer).

Why segments and not control flow inside one ONNX graph: an ``If`` node whose branches
return differently shaped values (an exit's class scores vs. a feature map) is what users of
``torch.onnx.export`` and TensorRT report failing -- data-dependent control flow does not
trace with ``torch.fx``/``torch.jit.trace``, ``torch.cond`` requires both branches to return
the same shapes and dtypes, and TensorRT's ``IIfConditionalLayer`` (the ONNX parser's
``If``) requires both branches' outputs to have matching shapes. A segment is a plain static
graph like any partition: its ops are checked against
``splitc/backends/data/tensorrt_onnx_ops.json`` (TensorRT's ONNX-parser list) by the
TensorRT recipe, it gets its own Triton model, and ONNX Runtime runs it unchanged. The cost
is one extra session call per segment (a few microseconds).

Each partition takes as placeholders the values it reads from upstream (named
after the producing node, which is also the wire name in the manifest) and
returns the values it produces that cross its right-hand cut: what downstream
tiers or the model output still need. Values produced further upstream that only
pass through a tier are *relayed* by the runtime, never re-emitted by a
partition. ``get_attr`` weights are copied into every partition that reads them.

Like ``torch.fx.passes.split_module`` but with the partition boundaries, names
and input/output order under our control, because they are the bundle's wire
contract. After cutting, the partitions are chained in PyTorch on the example
inputs and must reproduce the original outputs exactly (a structural check that
no live tensor was dropped); the values seen at each boundary become the
partitions' export inputs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx

from splitc.core.pass_manager import Pass, PassResult
from splitc.core.passes.profile import FLOPS
from splitc.core.samples import run_partitions
from splitc.core.graph import COMPUTE_OPS, model_output_names

#: node.meta key this pass reads: a node marked True is an output of the partition holding it, whether or
#: not a later tier reads it (insert_exits marks each exit's scores and confidence this way).
PARTITION_OUTPUT = "splitc.partition_output"
#: node.meta key this pass reads: a node marked True ends a segment, so the partition of the tier running it
#: is cut right after it, on the same tier (insert_exits marks each exit's confidence: the exit rule runs there).
SEGMENT_END = "splitc.segment_end"

__all__ = ["PARTITION_OUTPUT", "SEGMENT_END", "Partition", "segment_bounds", "CutPass", "cut_graph", "append_output_transform", "append_joint_transform",
           "prepend_input_transform", "refresh_examples"]


@dataclass
class Partition:
    """The part of the model one tier runs.

    Attributes:
        index: partition number in chain order (tiers that run nothing have none).
        tier_index: position of its tier in the chain (several partitions share it when the tier is
            cut into segments).
        start, end: compute-node range ``[start, end)``.
        graph_module: the sub-graph, ``forward(*inputs) -> tuple(outputs)``.
        inputs: names of the values it reads, in placeholder order.
        outputs: names of the values it returns, in output order.
        example_inputs: the values seen at its inputs on the example run.
    """

    index: int
    tier_index: int
    start: int
    end: int
    graph_module: torch.fx.GraphModule
    inputs: list[str]
    outputs: list[str]
    example_inputs: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def flops(self) -> int:
        return sum(n.meta.get(FLOPS, 0) for n in self.graph_module.graph.nodes)

    @property
    def param_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.graph_module.state_dict().values())


def cut_graph(gm: torch.fx.GraphModule, bounds: list[tuple[int, int]], crossing_after: list[set[str]],
              tier_of: list[int] | None = None) -> list[Partition]:
    """Build one partition per non-empty ``[start, end)`` range.

    Args:
        gm: the profiled graph module.
        bounds: per tier (or per segment), its compute-node range, in chain order.
        crossing_after: per range, names of the values crossing its right-hand cut
            (for the last: the model outputs).
        tier_of: the tier of each range; None = range ``i`` is tier ``i``.
    """
    compute = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    partitions = []
    for i, (start, end) in enumerate(bounds):
        if end <= start:
            continue
        members = compute[start:end]
        tier_index = i if tier_of is None else tier_of[i]
        partitions.append(_build(gm, len(partitions), tier_index, start, end, members, crossing_after[i]))
    return partitions


def segment_bounds(gm: torch.fx.GraphModule, candidates, cuts: tuple[int, ...], tiers: int
                   ) -> list[tuple[int, int, int]]:
    """``(tier, start, end)`` of every non-empty segment: each tier's range cut after its :data:`SEGMENT_END` nodes."""
    n = len(candidates.nodes)
    by_name = {node.name: node for node in gm.graph.nodes}
    ends = sorted(i + 1 for i, name in enumerate(candidates.nodes) if by_name[name].meta.get(SEGMENT_END))
    edges = [0, *cuts, n]
    out = []
    for t in range(tiers):
        start, end = edges[t], edges[t + 1]
        points = [start, *(j for j in ends if start < j < end), end]
        out.extend((t, a, b) for a, b in zip(points, points[1:]) if b > a)
    return out


def _build(gm, index, tier_index, start, end, members, crossing: set[str]) -> Partition:
    graph = torch.fx.Graph()
    member_set = set(members)
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    inputs: list[str] = []
    for node in members:
        for arg in node.all_input_nodes:
            if arg in env or arg in member_set:
                continue
            if arg.op == "get_attr":
                env[arg] = graph.get_attr(arg.target)
            else:
                env[arg] = graph.placeholder(arg.name)
                env[arg].meta = dict(arg.meta)
                inputs.append(arg.name)
    # placeholders must precede the body; get_attr nodes may interleave, fx allows it
    for node in members:
        env[node] = graph.node_copy(node, lambda n: env[n])
        env[node].meta = dict(node.meta)
    outputs = [n.name for n in members if n.name in crossing]
    graph.output(tuple(env[n] for n in members if n.name in crossing))
    # eval: torch.onnx.export restores the module's mode afterwards, recursively, and a GraphModule starts in
    # training mode: exporting would switch shared submodules (a detector's post-processing leaf) to training
    sub = torch.fx.GraphModule(gm, graph, class_name=f"Partition{index}").eval()
    return Partition(index, tier_index, start, end, sub, inputs, outputs)


class CutPass(Pass):
    """Split the graph at the planned cuts and check the pieces compose to the original."""

    name = "cut"
    requires = ("splitc.profile", "candidates", "plan")
    provides = ("partitions",)

    def run(self, gm, ctx) -> PassResult:
        plan = ctx.plan_result.best
        n = len(ctx.candidates.nodes)
        segments = segment_bounds(gm, ctx.candidates, plan.cuts, len(ctx.tiers))
        outputs = set(model_output_names(gm))
        kept = {node.name for node in gm.graph.nodes if node.meta.get(PARTITION_OUTPUT)}  # e.g. exit scores
        crossing_after = [set(ctx.candidates.cuts[end].crossing) | (outputs if end == n else set()) | kept
                          for _, _, end in segments]
        partitions = cut_graph(gm, [(s, e) for _, s, e in segments], crossing_after, [t for t, _, _ in segments])
        placeholder_names = [node.name for node in gm.graph.nodes if node.op == "placeholder"]
        with torch.no_grad():
            values = run_partitions(partitions, placeholder_names, ctx.example_inputs, record_inputs=True)
            _check_composition(gm, values, ctx.example_inputs)
        ctx.partitions = partitions
        counts: dict[int, list[int]] = {}
        for p in partitions:
            counts.setdefault(p.tier_index, []).append(p.end - p.start)
        sizes = ", ".join(f"{ctx.tiers[t].name}: {sum(c)} nodes" + (f" in {len(c)} segments" if len(c) > 1 else "")
                          for t, c in counts.items())
        return PassResult(gm, modified=False, summary=f"{len(partitions)} partition(s) ({sizes}); composition checked")


def _check_composition(gm, values: dict[str, torch.Tensor], example_inputs) -> None:
    flat_expected, _ = torch.utils._pytree.tree_flatten(gm(*[x.clone() for x in example_inputs]))
    for name, want in zip(model_output_names(gm), flat_expected):
        got = values[name]
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True):
            raise AssertionError(f"partitions do not compose to the original model: output '{name}' differs "
                                 f"(max abs diff {float((got - want).abs().max()):.3g})")


# ---------------------------------------------------------------------------------------------
# editing partitions at their boundaries (bottlenecks, wire quantization, noise, defences)


def append_output_transform(part: Partition, name: str, module: torch.nn.Module, attr: str, flops: int = 0) -> None:
    """Make partition ``part`` return ``module(value)`` instead of ``value`` for output ``name``."""
    gm = part.graph_module
    gm.add_submodule(attr, module)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = list(output.args[0])
    position = part.outputs.index(name)
    with gm.graph.inserting_before(output):
        new = gm.graph.call_module(attr, (values[position],))
    new.meta[FLOPS] = int(flops)
    values[position] = new
    output.args = (tuple(values),)
    gm.recompile()


def append_joint_transform(part: Partition, names: list[str], module: torch.nn.Module, attr: str, flops: int) -> None:
    """Make ``part`` return ``module(*values)[k]`` for its outputs ``names[k]`` (one call: e.g. a joint norm)."""
    gm = part.graph_module
    gm.add_submodule(attr, module)
    output = next(node for node in gm.graph.nodes if node.op == "output")
    values = list(output.args[0])
    positions = [part.outputs.index(name) for name in names]
    with gm.graph.inserting_before(output):
        joint = gm.graph.call_module(attr, tuple(values[p] for p in positions))
        joint.meta[FLOPS] = int(flops)
        for k, p in enumerate(positions):
            values[p] = gm.graph.call_function(operator.getitem, (joint, k))
    output.args = (tuple(values),)
    gm.recompile()


def prepend_input_transform(part: Partition, name: str, module: torch.nn.Module, attr: str, flops: int = 0) -> None:
    """Make partition ``part`` apply ``module`` to its input ``name`` before anything reads it."""
    gm = part.graph_module
    gm.add_submodule(attr, module)
    nodes = list(gm.graph.nodes)
    placeholder = next(n for n in nodes if n.op == "placeholder" and n.name == name)
    first_body = next(n for n in nodes if n.op != "placeholder")
    with gm.graph.inserting_before(first_body):
        new = gm.graph.call_module(attr, (placeholder,))
    new.meta[FLOPS] = int(flops)
    placeholder.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    gm.recompile()


def refresh_examples(ctx) -> None:
    """Re-record every partition's example inputs after their boundaries changed."""
    names = [s.name for s in ctx.input_specs]
    with torch.no_grad():
        run_partitions(ctx.partitions, names, ctx.example_inputs, record_inputs=True)
