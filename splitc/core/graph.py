"""Small facts about a traced graph that every layer asks: which nodes compute, what the model returns.

Example:
    >>> import torch, torch.fx
    >>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    >>> [n.name for n in compute_nodes(gm)], model_output_names(gm)
    (['_0', '_1'], ['_1'])
"""

from __future__ import annotations

import torch
import torch.fx

__all__ = ["COMPUTE_OPS", "compute_nodes", "model_output_names", "nodes_by_name", "is_float_tensor"]

#: fx node kinds that run code; cuts are placed between them (placeholders, get_attr and output never run).
COMPUTE_OPS = ("call_module", "call_function", "call_method")

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.float64, torch.bfloat16)


def compute_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The compute nodes in the graph's (topological) order."""
    return [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]


def model_output_names(gm: torch.fx.GraphModule) -> list[str]:
    """Names of the values the model returns, flattened in order."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    names: list[str] = []
    torch.fx.node.map_arg(output.args[0], lambda n: names.append(n.name))
    return names


def nodes_by_name(gm: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def is_float_tensor(node: torch.fx.Node) -> bool:
    """Whether ``node`` (profiled: ``tensor_meta`` set) produces one floating-point tensor."""
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype in _FLOAT_DTYPES
