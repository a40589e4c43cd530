"""``splitc profile --model``: measure one model's own nodes on this machine (Neurosurgeon-style).

The compiler's profiled graph (after the same analysis passes ``splitc plan`` runs, so node
names match) is exported once with every compute node wrapped in a submodule named after it:
the TorchScript exporter names each ONNX node and value by that scope (``/layer1_0_conv1/op/Conv``),
so ONNX Runtime's profiler, which reports a time per kernel it ran, can be mapped back to graph
nodes. ONNX Runtime fuses and rewrites (Conv + BatchNorm + ReLU into one blocked-layout kernel
named after its output, layout reorders with no scope at all), so the mapping reads the graph
ONNX Runtime actually ran (``optimized_model_filepath``):

* a kernel computes the fx nodes between the fx values it reads and the fx values it writes
  (walking the fx graph back from its outputs, stopping at its inputs);
* a kernel that computes no fx node (``ReorderInput``/``ReorderOutput``, identities) is charged
  to the kernel it feeds (a reorder into the blocked layout) or the one that feeds it (others);
* a fused kernel's time is split over its fx nodes in proportion to the cost model's
  predictions for them (the convolution takes nearly all of Conv + ReLU).

Times come from :data:`PROFILED_RUNS` profiled runs (the median per node), then scaled so they
sum to the model's time measured without the profiler by the one timing method
(:mod:`splitc.targets.timing`) less one run's fixed cost (``run_overhead``): the profiler's own
overhead and the gaps between kernels are spread over the nodes in proportion.

Example:
    >>> profile = measure_model(gm, inputs, target, threads=1, model="model.pt")   # doctest: +SKIP
    >>> dataclasses.replace(target, model_profile=profile)                         # doctest: +SKIP
"""

from __future__ import annotations

import copy
import io
import json
import logging
import statistics
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.node import map_aggregate, map_arg

from splitc.core.graph import COMPUTE_OPS
from splitc.core.passes.profile import OP_NAME, OUT_BYTES
from splitc.errors import SplitcError
from splitc.targets.cost_model import node_times
from splitc.targets.target import MeasuredNode, ModelProfile, Target
from splitc.targets.timing import make_session, time_session

__all__ = ["measure_model", "scoped_module", "kernel_attribution", "PROFILED_RUNS"]

log = logging.getLogger("splitc")

#: Runs with ONNX Runtime's profiler on (after a warm-up); the median per node is kept.
PROFILED_RUNS = 20


class _Slot:
    """Stands for the i-th graph input of a wrapped node inside its recorded args."""

    def __init__(self, index: int) -> None:
        self.index = index


class _Scoped(nn.Module):
    """One fx node as a submodule (its name becomes the ONNX scope of everything it exports)."""

    def __init__(self, node: torch.fx.Node, module: nn.Module | None) -> None:
        super().__init__()
        self.kind, self.fn = node.op, node.target
        if module is not None:
            self.op = module
        index = {n: i for i, n in enumerate(node.all_input_nodes)}
        self.args_template = map_arg(node.args, lambda n: _Slot(index[n]))
        self.kwargs_template = map_arg(node.kwargs, lambda n: _Slot(index[n]))

    def forward(self, *values: Any) -> Any:
        def fill(a: Any) -> Any:
            return values[a.index] if isinstance(a, _Slot) else a

        args, kwargs = map_aggregate(self.args_template, fill), map_aggregate(self.kwargs_template, fill)
        if self.kind == "call_module":
            return self.op(*args, **kwargs)
        if self.kind == "call_function":
            return self.fn(*args, **kwargs)
        return getattr(args[0], self.fn)(*args[1:], **kwargs)


def scoped_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The same computation with every compute node a top-level submodule named after the node.

    A module object called by several nodes (torchvision's ResNet reuses one ``nn.ReLU``) is
    copied per node: the exporter names a shared module by its first name only.
    """
    root = nn.Module()
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = graph.placeholder(node.name)
        elif node.op == "get_attr":
            attr = "const__" + str(node.target).replace(".", "__")
            value = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                root.register_buffer(attr, value.detach())
            else:
                setattr(root, attr, value)
            env[node] = graph.get_attr(attr)
        elif node.op == "output":
            graph.output(map_arg(node.args[0], lambda a: env[a]))
        else:
            module = gm.get_submodule(node.target) if node.op == "call_module" else None
            if module is not None and calls[node.target] > 1:
                module = copy.deepcopy(module)
            root.add_module(node.name, _Scoped(node, module))
            env[node] = graph.call_module(node.name, tuple(env[a] for a in node.all_input_nodes))
    return torch.fx.GraphModule(root, graph)


def _export(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor], names: Sequence[str]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(scoped_module(gm), tuple(inputs), buffer, input_names=list(names), opset_version=17,
                          do_constant_folding=True, dynamo=False)
    return buffer.getvalue()


def _scope(name: str, known: set[str]) -> str | None:
    """The fx node an ONNX node or value name belongs to (``/conv1/op/Conv_output_0_nchwc`` -> ``conv1``)."""
    if name in known:
        return name  # graph inputs keep their placeholder names
    if name.startswith("/"):
        head = name[1:].split("/", 1)[0]
        return head if head in known else None
    return None


@dataclass
class _Kernel:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]


def _kernels(path: Path) -> list[_Kernel]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [_Kernel(n.name, n.op_type, [i for i in n.input if i], [o for o in n.output if o]) for n in model.graph.node]


def kernel_attribution(gm: torch.fx.GraphModule, kernels: Sequence[_Kernel]) -> dict[str, list[str]]:
    """Kernel name -> the fx compute nodes it computes (see the module docstring).

    Every kernel is listed; one that computes no fx node is mapped to an empty list (its time
    is charged to a neighbour by :func:`_charge`).
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    known = set(by_name)
    out: dict[str, list[str]] = {}
    claimed: set[str] = set()
    for kernel in kernels:
        writes = {s for s in (_scope(v, known) for v in kernel.outputs) if s}
        if not writes and _scope(kernel.name, known):
            writes = {_scope(kernel.name, known)}
        reads = {s for s in (_scope(v, known) for v in kernel.inputs) if s} - writes
        members: list[str] = []
        stack = [by_name[w] for w in writes]
        seen: set[str] = set()
        while stack:
            node = stack.pop()
            if node.name in seen or node.name in reads or node.name in claimed or node.op not in COMPUTE_OPS:
                continue  # claimed: computed by an earlier kernel (kernels come in topological order)
            seen.add(node.name)
            members.append(node.name)
            stack.extend(node.all_input_nodes)
        claimed.update(members)
        out[kernel.name] = members
    return out


def _charge(kernels: Sequence[_Kernel], members: dict[str, list[str]]) -> dict[str, str]:
    """For each kernel that computes nothing, the kernel its time goes to (itself otherwise)."""
    producer = {v: k.name for k in kernels for v in k.outputs}
    consumers: dict[str, list[str]] = {}
    for k in kernels:
        for v in k.inputs:
            consumers.setdefault(v, []).append(k.name)
    target: dict[str, str] = {}

    def resolve(name: str, depth: int = 0) -> str | None:
        if members.get(name) or depth > 8:
            return name if members.get(name) else None
        kernel = by_kernel[name]
        before = [producer[v] for v in kernel.inputs if v in producer]
        after = [c for v in kernel.outputs for c in consumers.get(v, [])]
        order = (after + before) if kernel.op_type == "ReorderInput" else (before + after)
        for other in order:
            found = resolve(other, depth + 1)
            if found:
                return found
        return None

    by_kernel = {k.name: k for k in kernels}
    for k in kernels:
        target[k.name] = resolve(k.name) or k.name
    return target


def _profiled_kernel_times(path: str) -> dict[str, list[float]]:
    """Kernel name -> its seconds in each profiled run (ONNX Runtime's ``*_kernel_time`` events)."""
    events = json.loads(Path(path).read_text(encoding="utf-8"))
    times: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        times.setdefault(event["name"][: -len("_kernel_time")], []).append(event["dur"] * 1e-6)
    return times


def measure_model(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                  target: Target, *, threads: int, model: str, command: str = "", input_shapes=(),
                  quick: bool = False) -> ModelProfile:
    """Time every node of ``gm`` on this machine (see the module docstring).

    Args:
        gm: the profiled graph (after the analysis passes ``splitc plan`` runs).
        inputs: example inputs, one per placeholder.
        input_names: the placeholders' names.
        target: this machine's target (its cost model splits fused kernels; its ``run_overhead_s``
            is taken off the measured model time).
        threads: ONNX Runtime intra-op threads (as the target was measured).
        model: how the model was given (recorded).
        command: the command line (recorded).
        input_shapes: the shapes it was measured with (recorded).
        quick: a shorter timing window.

    Returns:
        The per-node table for ``target.model_profile``.

    Raises:
        SplitcError: the model cannot be exported or run in ONNX Runtime.
    """
    compute = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    predicted = dict(zip((n.name for n in compute), node_times(compute, target)))
    feeds = {name: x.detach().numpy() for name, x in zip(input_names, inputs)}
    try:
        onnx_bytes = _export(gm, inputs, input_names)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the user needs one line
        raise SplitcError(f"cannot export the model to ONNX for profiling: {str(exc).strip().splitlines()[0][:200]}",
                          "profile without --model (microbenchmarks only)") from None
    with tempfile.TemporaryDirectory(prefix="splitc-model-profile-") as tmp:
        session = make_session(onnx_bytes, threads)
        whole, runs, spread = time_session(session, feeds, min_runs=10 if quick else 30,
                                           min_seconds=0.3 if quick else 2.0)
        del session
        optimized = Path(tmp) / "optimized.onnx"
        profiled = make_session(onnx_bytes, threads, profile_prefix=str(Path(tmp) / "ort"), optimized_path=optimized)
        for _ in range(3):
            profiled.run(None, feeds)
        for _ in range(5 if quick else PROFILED_RUNS):
            profiled.run(None, feeds)
        trace = profiled.end_profiling()
        kernels = _kernels(optimized)
        times = _profiled_kernel_times(trace)
    members = kernel_attribution(gm, kernels)
    charged = _charge(kernels, members)
    skip = 3  # the warm-up runs are in the trace too: keep the last PROFILED_RUNS of each kernel
    per_node = {n.name: 0.0 for n in compute}
    for kernel in kernels:
        samples = times.get(kernel.name, [])[skip:]
        if not samples:
            continue
        seconds = statistics.median(samples)
        owners = members.get(charged[kernel.name]) or []
        if not owners:
            continue
        weights = np.array([predicted.get(o, 0.0) for o in owners])
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(owners), 1.0 / len(owners))
        for owner, w in zip(owners, weights):
            per_node[owner] += seconds * float(w)
    total = sum(per_node.values())
    if total <= 0:
        raise SplitcError("ONNX Runtime's profiler reported no kernel of this model",
                          "profile without --model (microbenchmarks only)")
    scale = max(whole - target.run_overhead_s, 0.1 * whole) / total
    log.info("[profile] model: %d nodes measured in %d kernels; %s per run (p10 of %d, spread %.0f%%); "
             "profiled kernels sum to %.1f%% of it", sum(1 for v in per_node.values() if v > 0), len(kernels),
             f"{whole * 1e3:.3f} ms", runs, spread * 100, 100 * total / whole)
    table = {n.name: MeasuredNode(per_node[n.name] * scale, str(n.meta.get(OP_NAME, "")),
                                  int(n.meta.get(OUT_BYTES, 0))) for n in compute}
    return ModelProfile(model=model, input_shapes=tuple(tuple(int(d) for d in s) for s in input_shapes),
                        command=command, measured_s=whole, nodes=table)
