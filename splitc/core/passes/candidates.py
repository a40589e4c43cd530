"""``candidates``: every cut position in topological order and what crosses it.

The compute nodes (``call_module``, ``call_function``, ``call_method``) are put in
the graph's topological order ``n_0 .. n_{N-1}``. Cut ``k`` (``0 <= k <= N``) puts
``n_0 .. n_{k-1}`` on the sending side. The tensors crossing cut ``k`` are exactly
the values produced on the sending side (inputs included) that some node on the
receiving side, or the graph output, still reads: the live set of a linear scan
with last-use positions, so residual branches, concatenations and tensors that
skip several cuts are all carried. ``get_attr`` values (weights, constants) never
cross: the cut pass copies them into each partition that reads them.

A cut is legal when everything crossing is a single tensor of static shape (a tuple-valued
node, e.g. ``nn.MultiheadAttention``'s output before its ``getitem``, cannot be shipped, nor a
detector's detections, whose size depends on the image: ``splitc.core.detectors.DYNAMIC_SHAPE``).

Each cut also gets the block it follows: the outermost module of the user's module tree whose
last node is right before it (``bert.encoder.layer.0``, from ``splitc.core.loader.MODULE_PATH``),
so the plan table names blocks and ``--split`` accepts module paths.

Writes ``ctx.candidates`` (a :class:`Candidates`) and ``node.meta["splitc.position"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch.fx

from splitc.core.detectors import DYNAMIC_SHAPE
from splitc.core.graph import COMPUTE_OPS
from splitc.core.loader import MODULE_PATH
from splitc.core.pass_manager import Pass, PassResult
from splitc.core.passes.profile import IS_TENSOR, OUT_BYTES

__all__ = ["Candidate", "Candidates", "CandidatesPass", "compute_candidates", "block_labels", "POSITION"]

#: node.meta key this analysis writes: the compute node's index in the cut order.
POSITION = "splitc.position"


@dataclass(frozen=True)
class Candidate:
    """One cut position.

    Attributes:
        index: ``k``: the number of compute nodes on the sending side.
        after: name of the last node on the sending side (``None`` for k = 0: send the inputs).
        crossing: names of the values crossing the cut, in topological order.
        bytes: total bytes of those values.
        legal: whether the cut can be shipped.
        reason: why not, when it is illegal.
        block: the outermost module (path in the model's module tree, e.g. ``bert.encoder.layer.0``)
            whose last node is ``after``: the cut is "after that block" ("" when none ends there).
    """

    index: int
    after: str | None
    crossing: tuple[str, ...]
    bytes: int
    legal: bool
    reason: str = ""
    block: str = ""


@dataclass
class Candidates:
    """All cut positions of a graph, plus per-node arrays the planner reads.

    Attributes:
        nodes: compute node names in topological order (length N).
        cuts: N + 1 candidates, ``cuts[k]`` cuts after ``nodes[k-1]``.
        block_ends: module path -> the cut index right after the module's last node.
    """

    nodes: list[str]
    cuts: list[Candidate]
    block_ends: dict[str, int] = field(default_factory=dict)

    @property
    def legal_mask(self) -> np.ndarray:
        return np.array([c.legal for c in self.cuts], dtype=bool)

    @property
    def cut_bytes(self) -> np.ndarray:
        return np.array([c.bytes for c in self.cuts], dtype=np.float64)

    def index_of(self, node_name: str) -> int:
        """Cut index right after ``node_name``: a compute node, or a module path such as
        ``bert.encoder.layer.0`` (after the module's last node); KeyError if it is neither."""
        if node_name in self._position:
            return self._position[node_name] + 1
        return self.block_ends[node_name]

    def names(self) -> list[str]:
        """Everything :meth:`index_of` accepts: node names, then module paths."""
        return [*self.nodes, *self.block_ends]

    def __post_init__(self) -> None:
        self._position = {name: i for i, name in enumerate(self.nodes)}


def compute_candidates(gm: torch.fx.GraphModule) -> Candidates:
    """Enumerate the cut positions of ``gm`` in O(nodes + crossing entries)."""
    graph_nodes = list(gm.graph.nodes)
    compute = [n for n in graph_nodes if n.op in COMPUTE_OPS]
    position = {n: i for i, n in enumerate(compute)}
    end = len(compute)  # the output node reads at position N
    last_use: dict[torch.fx.Node, int] = {}
    for node in graph_nodes:
        if node.op == "get_attr":
            continue
        uses = [end if u.op == "output" else position[u] for u in node.users if u.op != "get_attr"]
        if uses and node.op in ("placeholder", *COMPUTE_OPS):
            last_use[node] = max(uses)
    placeholders = [n for n in graph_nodes if n.op == "placeholder"]
    live: dict[torch.fx.Node, None] = dict.fromkeys(p for p in placeholders if p in last_use)
    labels, ends = block_labels(compute)
    cuts = [_candidate(0, None, live)]
    for k, node in enumerate(compute, start=1):
        node.meta[POSITION] = k - 1
        if last_use.get(node, -1) >= k:
            live[node] = None
        for dead in [v for v in live if last_use[v] < k]:
            del live[dead]
        cuts.append(_candidate(k, node.name, live, labels.get(k, "")))
    return Candidates(nodes=[n.name for n in compute], cuts=cuts, block_ends=ends)


def block_labels(compute: list[torch.fx.Node]) -> tuple[dict[int, str], dict[str, int]]:
    """Where each module of the tree ends, from the compute nodes' ``MODULE_PATH``.

    Returns:
        ``labels``: cut index -> the outermost module whose last node is right before it;
        ``ends``: module path -> the cut index right after its last node.
    """
    ends: dict[str, int] = {}
    for k, node in enumerate(compute, start=1):
        path = node.meta.get(MODULE_PATH)
        if not path:
            continue
        parts = path.split(".")
        for depth in range(1, len(parts) + 1):
            ends[".".join(parts[:depth])] = k
    labels: dict[int, str] = {}
    for path, k in ends.items():
        if k not in labels or path.count(".") < labels[k].count("."):
            labels[k] = path
    return labels, ends


def _candidate(index: int, after: str | None, live: dict[torch.fx.Node, None], block: str = "") -> Candidate:
    names, total, bad, dynamic = [], 0, [], []
    for value in live:
        names.append(value.name)
        if value.meta.get(DYNAMIC_SHAPE):  # a detector's detections: their size is known only at run time
            dynamic.append(value.name)
        elif value.meta.get(IS_TENSOR, value.op == "placeholder"):
            total += value.meta.get(OUT_BYTES, 0)
        else:
            bad.append(value.name)
    reasons = ([f"non-tensor value(s) cross the cut: {', '.join(bad)}"] if bad else []) + \
        ([f"value(s) of data-dependent shape cross the cut: {', '.join(dynamic)}"] if dynamic else [])
    return Candidate(index, after, tuple(names), total, legal=not (bad or dynamic), reason="; ".join(reasons),
                     block=block)


class CandidatesPass(Pass):
    """List every cut position and its crossing tensors (an analysis)."""

    name = "candidates"
    requires = ("splitc.profile",)
    provides = ("candidates",)

    def run(self, gm, ctx) -> PassResult:
        ctx.candidates = compute_candidates(gm)
        cuts = ctx.candidates.cuts
        legal = sum(c.legal for c in cuts)
        widest = max(len(c.crossing) for c in cuts)
        return PassResult(gm, modified=False,
                          summary=f"{len(cuts)} cut positions, {legal} legal, up to {widest} tensors crossing one cut")
