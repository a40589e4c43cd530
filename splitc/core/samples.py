"""The one way splitc runs a traced graph (or a chain of partitions) on many real samples.

Graphs are traced at batch 1 and shape arithmetic is folded into constants, so a batch may
fail or, worse, silently mix samples. Every capability that runs calibration data
(exit training, bottleneck training, accuracy checks, leakage profiles, attacks) goes
through these functions, which batch where that is provably safe and fall back to one
sample at a time otherwise.

Example:
    >>> import numpy as np, torch, torch.fx
    >>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    >>> out = run_chain([WholeGraph(gm, ["input_1"])], ["input_1"], [np.ones((5, 4), np.float32)])
    >>> tuple(out["_1"].shape)
    (5, 2)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx

from splitc.core.graph import model_output_names

__all__ = ["ValueCapture", "WholeGraph", "run_partitions", "run_chain", "run_samples", "as_input_list",
           "placeholder_shapes", "BATCH"]

#: Samples per interpreter run of :func:`run_samples` (when the graph batches).
BATCH = 32


class ValueCapture(torch.fx.Interpreter):
    """Runs a graph and hands every wanted node's tensor output to ``sink(name, tensor)`` as it is produced.

    The value is cloned (an in-place op later in the graph, ``relu_``, must not change what was
    captured) and ``garbage_collect_values`` frees each value after its last use, so only the live
    set plus what ``sink`` keeps is in memory.
    """

    def __init__(self, gm: torch.fx.GraphModule, wanted: set[str], sink: Callable[[str, torch.Tensor], None]):
        super().__init__(gm, garbage_collect_values=True)
        self.wanted, self.sink = wanted, sink

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.wanted and isinstance(result, torch.Tensor):
            self.sink(n.name, result.detach().clone())
        return result


class WholeGraph:
    """The unsplit graph as a one-partition chain (for :func:`run_chain` and :func:`run_partitions`)."""

    def __init__(self, gm: torch.fx.GraphModule, input_names: list[str]) -> None:
        self.graph_module = gm
        self.inputs = list(input_names)
        self.outputs = model_output_names(gm)


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def run_partitions(partitions: Sequence[Any], input_names: list[str], inputs: Sequence[torch.Tensor],
                   record_inputs: bool = False) -> dict[str, torch.Tensor]:
    """Run the partitions in chain order in PyTorch; returns every named value produced.

    Each partition gets its own copies of its inputs: a model may modify a tensor in
    place (``F.relu(x, inplace=True)``) where, unsplit, nothing else read it; after a
    cut the upstream value is still held (it went on the wire) and must stay intact.

    Args:
        partitions: objects with ``graph_module``, ``inputs`` and ``outputs`` (partitions, :class:`WholeGraph`).
        record_inputs: store the values each partition sees as its ``example_inputs``.
    """
    values = dict(zip(input_names, inputs))
    for part in partitions:
        args = [values[name].clone() for name in part.inputs]
        if record_inputs:
            part.example_inputs = [a.clone() for a in args]
        values.update(zip(part.outputs, _as_list(part.graph_module(*args))))
    return values


def run_chain(partitions: Sequence[Any], input_names: list[str], inputs: Sequence[np.ndarray | torch.Tensor],
              batch: int = 128) -> dict[str, torch.Tensor]:
    """Run ``partitions`` in chain order on a stack of samples; every named value, stacked.

    A batch that fails (batch-1 shapes folded into the graph) falls back to one sample at a time.
    """
    tensors = [torch.as_tensor(np.asarray(x)) for x in inputs]
    count = len(tensors[0])
    chunks: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for start in range(0, count, batch):
            values = {n: t[start:start + batch] for n, t in zip(input_names, tensors)}
            try:
                chunks.append(run_partitions(partitions, input_names, list(values.values())))
            except Exception:  # batch-1 shapes folded into the graph: go sample by sample
                rows = [run_partitions(partitions, input_names, [t[i:i + 1] for t in values.values()])
                        for i in range(len(values[input_names[0]]))]
                chunks.append({k: torch.cat([r[k] for r in rows]) for k in rows[0]})
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def placeholder_shapes(gm: torch.fx.GraphModule) -> list[tuple[int, ...]]:
    """The recorded (batch-1) shape of every graph input; needs the profile pass."""
    shapes = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            meta = node.meta.get("tensor_meta")
            if meta is None:
                raise ValueError(f"input '{node.name}' has no recorded shape: run the profile pass first")
            shapes.append(tuple(meta.shape))
    return shapes


def as_input_list(inputs: Any) -> list[np.ndarray]:
    """One ``[S, ...]`` array per model input from an array, a tensor, or a list of them."""
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        inputs = [inputs]
    return [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in inputs]


def _model_args(arrays: list[np.ndarray], shapes: list[tuple[int, ...]], index: np.ndarray) -> list[torch.Tensor]:
    """The graph's inputs for samples ``index``: batched along dim 0 when each input is batch-1."""
    args = []
    for array, shape in zip(arrays, shapes):
        chunk = array[index]
        if len(index) == 1:
            args.append(torch.from_numpy(np.ascontiguousarray(chunk.reshape(shape))))
        else:
            args.append(torch.from_numpy(np.ascontiguousarray(chunk.reshape(len(index), *shape[1:]))))
    return args


def run_samples(gm: torch.fx.GraphModule, arrays: list[np.ndarray], wanted: set[str],
                sink: Callable[[str, torch.Tensor], None], batch: int = BATCH) -> str:
    """Run every sample of ``arrays`` through ``gm``; ``sink(name, value)`` gets ``[B, *shape]`` in sample order.

    ``shape`` is the value's shape in the batch-1 graph (leading 1 included), so what the sink
    sees has the same per-sample shape whichever way the samples ran. The first batch is
    checked (each value has the batch-1 shape with a leading ``B``, and sample 0 matches a
    batch-1 run) and on any doubt every sample runs alone. Returns "batched" or
    "one sample at a time".
    """
    shapes = placeholder_shapes(gm)
    samples = len(arrays[0])
    expected = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes
                if n.name in wanted and hasattr(n.meta.get("tensor_meta"), "shape")}
    step, start = 1, 0
    with torch.no_grad():
        if batch > 1 and samples > 1 and all(s and s[0] == 1 for s in shapes):
            first = _try_batch(gm, arrays, shapes, wanted, expected, np.arange(min(batch, samples)))
            if first is not None:
                for name, value in first.items():
                    sink(name, value.unsqueeze(1))  # [B, ...] -> [B, 1, ...]: the batch-1 shape per sample
                step, start = batch, min(batch, samples)
        for lo in range(start, samples, step):
            index = np.arange(lo, min(lo + step, samples))
            values: dict[str, torch.Tensor] = {}
            ValueCapture(gm, wanted, values.__setitem__).run(*_model_args(arrays, shapes, index))
            for name, value in values.items():
                sink(name, value.unsqueeze(1) if step > 1 else value.unsqueeze(0))
    return "batched" if step > 1 else "one sample at a time"


def _try_batch(gm, arrays, shapes, wanted, expected, index) -> dict[str, torch.Tensor] | None:
    """The wanted values of a batched run of ``index``, or None when batching is not safe for this graph."""
    batched: dict[str, torch.Tensor] = {}
    single: dict[str, torch.Tensor] = {}
    try:
        ValueCapture(gm, wanted, batched.__setitem__).run(*_model_args(arrays, shapes, index))
    except Exception:  # a folded constant shape (reshape to [1, ...]) makes batches fail: run per sample
        return None
    ValueCapture(gm, wanted, single.__setitem__).run(*_model_args(arrays, shapes, index[:1]))
    for name, value in batched.items():
        shape = expected.get(name)
        if shape is None or not shape or shape[0] != 1 or tuple(value.shape) != (len(index), *shape[1:]):
            return None
        ref = single[name].float()
        if not torch.allclose(value[:1].float(), ref, rtol=1e-4, atol=1e-5 * (1.0 + float(ref.abs().max()))):
            return None
    return batched
