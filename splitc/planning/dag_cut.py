"""Exact latency-optimal placement of a DAG on a chain of tiers, by one s-t min cut.

Problem. Nodes ``v = 0..V-1`` of a DAG (edge ``u -> w``: ``w`` reads ``u``'s output)
go on tiers ``0..k-1`` of a chain; link ``j`` joins tier ``j`` and ``j+1``. A
placement ``tier[v]`` is *monotone* when ``tier[u] <= tier[w]`` for every edge
(data only flows forward along the chain). Its cost is::

    sum_v node_time[tier[v], v]
  + sum_u sum_{j = tier[u]}^{reach[u]-1} 8 * out_bytes[u] / bandwidth[j],
        reach[u] = max(tier[u], max over consumers w of tier[w])

i.e. a tensor crossing link ``j`` is paid once on that link however many
consumers sit beyond it (DADS, Hu et al. 2019, pays it once with an auxiliary
node), and a tensor going from tier 0 to tier 2 pays links 0 and 1 (the middle
tier relays it). Every prefix cut of a topological order is a monotone placement,
so this optimum is never worse than the chain DP's (:mod:`splitc.planning.chain`).

Constant terms are outside the cut: the round trip ``rtt_j`` of every *used* link
is not modelled here (a used link is a global, non-submodular condition). The
caller re-evaluates the chosen placement with the chain DP, which adds rtt,
memory limits, exits and compression.

Construction (Ishikawa 2003's layered graph; for k = 2 it is DADS's graph). One
binary variable per node and level, ``x[v, j] = [tier[v] > j]`` for ``j < k-1``,
is a graph vertex; ``x = 1`` means "on the source side". Then

* chain ``s -> (v,0) -> (v,1) -> ... -> (v,k-2) -> t`` with capacity
  ``node_time[m, v]`` on the edge entering level ``m`` (the edge into ``t`` for
  ``m = k-1``), plus infinite reverse edges ``(v,j+1) -> (v,j)``: a finite cut
  crosses each chain exactly once, at ``m = tier[v]``, paying ``node_time[m, v]``;
* DAG edge ``u -> w``: infinite ``(u,j) -> (w,j)`` for every ``j`` forbids
  ``x[u,j] = 1, x[w,j] = 0`` (= ``tier[u] > j >= tier[w]``), i.e. enforces monotonicity;
  a *precedence* pair (``tier[a] <= tier[b]`` with no data, e.g. a reader that must see
  a tensor before an in-place op changes it) gets the same infinite edges and no cost;
* transfer of ``u`` on link ``j`` costs ``c = 8 bytes[u] / bw[j]`` iff ``x[u,j] = 0``
  and some consumer has ``x[w,j] = 1``: a single consumer gets an edge
  ``(w,j) -> (u,j)`` of capacity ``c``; several share an auxiliary vertex ``a``
  with infinite ``(w,j) -> a`` and ``a -> (u,j)`` of capacity ``c`` (paid once).

Max-flow, two backends giving the same cut. **Boykov-Kolmogorov** (PyMaxflow, C++, float
capacities: no rounding, ``bound`` 0) when ``import maxflow`` works: about 5x faster than Dinic on
these layered graphs (10,000 nodes, 3 tiers: 0.38 s vs 1.9 s of CPU measured side by side), whose
augmenting paths cross ~1,000 layers; "infinite" is then twice the sum of all finite capacities
plus one, so no finite cut can hold it. Otherwise **Dinic** in scipy, described next.

:func:`scipy.sparse.csgraph.maximum_flow` (Dinic, in C) wants integer
capacities (int32). Seconds are scaled by ``scale = 2**30 / R`` and rounded to the
nearest integer, where ``R`` is the cost (above the constant) of a known feasible
cut: the cheapest of the trivial placements "every unpinned node on tier m" (or,
if none is feasible, the sum of all finite capacities). "Infinite" is
``2**30 + V + U (k-1) + 1``, above the reference cut's integer value, so the min
cut never holds an infinite edge (and finite edges dearer than it, which no min
cut holds, are clipped to it). Rounding changes each edge by at most
``0.5 / scale`` and a finite cut holds at most ``V + U (k-1)`` finite edges (one
per chain, one per producer ``U`` and link), so the returned placement's true
cost exceeds the true optimum by at most ``(V + U (k-1)) / scale =
(V + U (k-1)) R / 2**30`` seconds (:attr:`DagSolution.bound`). When that bound is
above :data:`REFINE_TOLERANCE` of the cost, a second max-flow runs with ``R`` = the
first placement's cost, which is near the optimum (for 10k nodes the bound is
then ~2e-5 of the cost, a worst case). The cut is read from the residual graph:
the source side is what the source still reaches. :attr:`DagSolution.cost` is the
exact float cost of that placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

__all__ = ["DagSolution", "solve_dag", "placement_cost", "is_monotone", "CAPACITY_BUDGET", "REFINE_TOLERANCE",
           "max_flow_backend"]

#: integer units the finite capacities are scaled to in total (int32 headroom for "infinite")
CAPACITY_BUDGET = 2 ** 30
#: a second, finer max-flow runs when the rounding bound exceeds this share of the cost
REFINE_TOLERANCE = 1e-4
_SOURCE, _SINK = 0, 1


def max_flow_backend() -> str:
    """``"boykov-kolmogorov"`` when PyMaxflow is installed (``import maxflow``), else ``"scipy-dinic"``."""
    try:
        import maxflow  # noqa: F401  (optional: pip install pymaxflow)
    except ImportError:
        return "scipy-dinic"
    return "boykov-kolmogorov"

EdgeList = Sequence[tuple[int, int]] | np.ndarray


@dataclass(frozen=True)
class DagSolution:
    """The min-cut placement.

    Attributes:
        tier: ``[V]`` tier of every node (monotone along the edges).
        cost: its exact cost in seconds (:func:`placement_cost`, no rtt).
        bound: seconds by which ``cost`` may exceed the true optimum (integer rounding).
        resolution_s: seconds per integer capacity unit (``1 / scale``).
    """

    tier: np.ndarray
    cost: float
    bound: float
    resolution_s: float


def _edge_array(edges: EdgeList | None) -> np.ndarray:
    """``[E, 2]`` int64 array of distinct edges (a node may read the same input twice), first-seen order."""
    if edges is None:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if len(arr) == 0 or arr.min() < 0:  # negative ids: left for _check_inputs to report
        return arr
    key = arr[:, 0] * (int(arr.max()) + 1) + arr[:, 1]  # one int per pair: a 1-D unique, far faster than axis=0
    _, first = np.unique(key, return_index=True)
    return arr[np.sort(first)]


def _check_inputs(node_time: np.ndarray, edges: np.ndarray, out_bytes: np.ndarray, bandwidth: np.ndarray) -> None:
    k, n = node_time.shape
    if bandwidth.shape != (k - 1,):
        raise ValueError(f"bandwidth has shape {bandwidth.shape}, expected ({k - 1},) for {k} tiers")
    if out_bytes.shape != (n,):
        raise ValueError(f"out_bytes has shape {out_bytes.shape}, expected ({n},)")
    if len(edges) and (edges.min() < 0 or edges.max() >= n):
        raise ValueError("an edge names a node outside 0..V-1")
    if len(edges) and np.any(edges[:, 0] == edges[:, 1]):
        raise ValueError("self-loop in the DAG")
    if not (np.all(np.isfinite(node_time)) and np.all(node_time >= 0)):
        raise ValueError("node_time must be finite and non-negative")
    if np.any(bandwidth <= 0) or np.any(out_bytes < 0):
        raise ValueError("bandwidths must be positive and byte counts non-negative")


def _monotone(tier: np.ndarray, e: np.ndarray) -> bool:
    return bool(np.all(tier[..., e[:, 0]] <= tier[..., e[:, 1]]))


def is_monotone(tier: np.ndarray, edges: EdgeList) -> bool:
    """Whether ``tier[u] <= tier[w]`` for every edge ``u -> w`` (works on ``[P, V]`` batches too)."""
    return _monotone(np.asarray(tier), _edge_array(edges))


def _costs(node_time: np.ndarray, e: np.ndarray, out_bytes: np.ndarray, bandwidth: np.ndarray,
           batch: np.ndarray) -> np.ndarray:
    """``[P]`` costs of a ``[P, V]`` batch of monotone placements (``e`` already deduplicated)."""
    compute = node_time[batch, np.arange(node_time.shape[1])].sum(axis=1)
    reach = batch.T.copy()  # [V, P]: furthest tier each tensor must get to
    np.maximum.at(reach, e[:, 0], batch[:, e[:, 1]].T)
    # seconds per byte to go from tier a to tier b = 8 * sum_{j=a}^{b-1} 1/bw_j
    per_byte = np.concatenate([[0.0], np.cumsum(8.0 / bandwidth)])
    return compute + ((per_byte[reach.T] - per_byte[batch]) * out_bytes).sum(axis=1)


def placement_cost(node_time: np.ndarray, edges: EdgeList, out_bytes: np.ndarray, bandwidth: np.ndarray,
                   tier: np.ndarray) -> float | np.ndarray:
    """Cost (seconds, no rtt) of a monotone placement, or of a ``[P, V]`` batch of them.

    Raises:
        ValueError: a placement is not monotone along the edges.
    """
    node_time = np.asarray(node_time, dtype=np.float64)
    e = _edge_array(edges)
    tier = np.asarray(tier, dtype=np.int64)
    batch = tier.reshape(-1, node_time.shape[1])
    if not _monotone(batch, e):
        raise ValueError("placement is not monotone along the edges")
    total = _costs(node_time, e, np.asarray(out_bytes, dtype=np.float64), np.asarray(bandwidth, dtype=np.float64),
                   batch)
    return float(total[0]) if tier.ndim == 1 else total


def _chain_capacities(node_time: np.ndarray, fixed: dict[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-node tier costs shifted to min 0 (the shift is a constant), ``inf`` where a node is pinned elsewhere."""
    k, n = node_time.shape
    offset = node_time.min(axis=0)
    cost = node_time - offset
    for v, t in (fixed or {}).items():
        if not 0 <= t < k or not 0 <= v < n:
            raise ValueError(f"fixed tier {t} of node {v} is out of range")
        pinned = np.full(k, np.inf)
        pinned[t] = 0.0
        cost[:, v] = pinned
        offset[v] = node_time[t, v]
    return cost, offset


def _build_graph(node_time: np.ndarray, edges: np.ndarray, precedence: np.ndarray, out_bytes: np.ndarray,
                 bandwidth: np.ndarray, fixed: dict[int, int] | None) -> tuple[list, int, int]:
    """Edge lists ``(tail, head, float capacity)`` of the layered graph; ``inf`` = hard constraint.

    Returns:
        the edge chunks, the vertex count and ``U`` (producers that have consumers).
    """
    k, n = node_time.shape
    levels = k - 1
    vid = 2 + np.arange(levels)[:, None] * n + np.arange(n)[None, :]  # vid[j, v]
    chunks = []
    cost, _ = _chain_capacities(node_time, fixed)
    chain = np.vstack([np.full(n, _SOURCE), vid, np.full(n, _SINK)])  # k+1 rows: s, levels, t
    for m in range(k):
        chunks.append((chain[m], chain[m + 1], cost[m]))
    for j in range(1, levels):
        chunks.append((vid[j], vid[j - 1], np.full(n, np.inf)))
    both = np.vstack([edges, precedence])
    for j in range(levels):
        chunks.append((vid[j, both[:, 0]], vid[j, both[:, 1]], np.full(len(both), np.inf)))
    producers, counts = np.unique(edges[:, 0], return_counts=True) if len(edges) else (np.zeros(0, int),) * 2
    n_vertices = 2 + levels * n
    if len(edges):
        single = counts[np.searchsorted(producers, edges[:, 0])] == 1  # the edge's producer has one consumer
        multi = producers[counts > 1]
        aux_of = np.full(n, -1, dtype=np.int64)
        for j in range(levels):
            price = 8.0 * out_bytes / bandwidth[j]
            s_edges = edges[single]
            chunks.append((vid[j, s_edges[:, 1]], vid[j, s_edges[:, 0]], price[s_edges[:, 0]]))
            aux_of[multi] = n_vertices + np.arange(len(multi))
            n_vertices += len(multi)
            m_edges = edges[~single]
            chunks.append((vid[j, m_edges[:, 1]], aux_of[m_edges[:, 0]], np.full(len(m_edges), np.inf)))
            chunks.append((aux_of[multi], vid[j, multi], price[multi]))
    return chunks, n_vertices, len(producers)


def _flatten(chunks: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``(tails, heads, capacities)`` triple, without zero-capacity edges (they constrain nothing)."""
    tails = np.concatenate([c[0] for c in chunks]).astype(np.int64)
    heads = np.concatenate([c[1] for c in chunks]).astype(np.int64)
    caps = np.concatenate([np.asarray(c[2], dtype=np.float64) for c in chunks])
    keep = caps > 0
    return tails[keep], heads[keep], caps[keep]


def _integer_graph(edges: tuple[np.ndarray, np.ndarray, np.ndarray], n_vertices: int, cut_edges: int,
                   reference: float | None) -> tuple[sp.csr_matrix, float, int]:
    """Scale float capacities to int32 (see module docstring).

    Args:
        edges: ``(tails, heads, seconds)``, ``inf`` for hard constraints.
        n_vertices: vertex count.
        cut_edges: most finite edges any finite cut holds (``V + U (k-1)``).
        reference: seconds of some feasible cut (an upper bound on the min cut); None = the
            sum of all finite capacities (always an upper bound).

    Returns:
        the CSR graph, the scale (units per second) and the integer standing for "infinite":
        more than the reference cut's integer value, so the min cut never contains it; finite
        edges dearer than it cannot be in the min cut either and are clipped to it.
    """
    tails, heads, caps = edges
    finite = np.isfinite(caps)
    if reference is None:
        reference = float(caps[finite].sum())
    scale = CAPACITY_BUDGET / reference if reference > 0 else 1.0
    infinity = CAPACITY_BUDGET + cut_edges + 1  # rounding adds at most 0.5 per edge of the reference cut
    ints = np.full(len(caps), infinity, dtype=np.int64)
    ints[finite] = np.minimum(np.rint(caps[finite] * scale), infinity)
    graph = sp.coo_matrix((ints, (tails, heads)), shape=(n_vertices, n_vertices)).tocsr()  # sums parallel edges
    np.minimum(graph.data, infinity, out=graph.data)  # parallel "infinite" edges stay below int32's limit
    graph.data = graph.data.astype(np.int32)
    return graph, scale, infinity


def _source_side(graph: sp.csr_matrix, flow: sp.csr_matrix) -> np.ndarray:
    """Boolean mask of the vertices the source reaches in the residual graph (the min cut's source side)."""
    residual = (graph.astype(np.int64) - flow.astype(np.int64)).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, _SOURCE, directed=True, return_predecessors=False)
    side = np.zeros(graph.shape[0], dtype=bool)
    side[reached] = True
    return side


def _trivial_reference(k: int, n: int, fixed: dict[int, int] | None, constraints: np.ndarray,
                       shifted_cost) -> float | None:
    """Cheapest shifted cost among "every unpinned node on tier m" placements that are feasible (None: none is)."""
    best = None
    for m in range(k):
        tier = np.full(n, m, dtype=np.int64)
        for v, t in (fixed or {}).items():
            tier[v] = t
        if _monotone(tier, constraints):
            cost = shifted_cost(tier)
            best = cost if best is None else min(best, cost)
    return best if best is not None and best > 0 else None


def _solve_bk(edges: tuple[np.ndarray, np.ndarray, np.ndarray], n_vertices: int, k: int, n: int) -> np.ndarray:
    """Tiers from a Boykov-Kolmogorov min cut of the layered graph (float capacities, exact)."""
    import maxflow

    tails, heads, caps = edges
    finite = np.isfinite(caps)
    infinity = 2.0 * float(caps[finite].sum()) + 1.0  # more than any finite cut: a min cut never holds it
    caps = np.where(finite, caps, infinity)
    graph = maxflow.Graph[float](n_vertices, len(tails))
    graph.add_nodes(n_vertices)
    from_source, to_sink = tails == _SOURCE, heads == _SINK
    inner = ~from_source & ~to_sink
    graph.add_edges(tails[inner], heads[inner], caps[inner], np.zeros(int(inner.sum())))
    source_caps, sink_caps = np.zeros(n_vertices), np.zeros(n_vertices)
    np.add.at(source_caps, heads[from_source], caps[from_source])
    np.add.at(sink_caps, tails[to_sink], caps[to_sink])
    graph.add_grid_tedges(np.arange(n_vertices), source_caps, sink_caps)
    flow = graph.maxflow()
    if flow >= infinity:
        raise ValueError("the pinned tiers contradict the edges: no monotone placement exists")
    source_side = ~np.asarray(graph.get_grid_segments(np.arange(n_vertices)), dtype=bool)  # True = sink side
    return source_side[2:2 + (k - 1) * n].reshape(k - 1, n).sum(axis=0).astype(np.int64)


def solve_dag(node_time: np.ndarray, edges: EdgeList, out_bytes: np.ndarray, bandwidth: np.ndarray,
              fixed: dict[int, int] | None = None, precedence: EdgeList | None = None,
              backend: str | None = None) -> DagSolution:
    """The minimum-cost monotone placement (see module docstring).

    Args:
        node_time: ``[k, V]`` seconds of each node on each tier (finite, >= 0).
        edges: DAG edges ``(u, w)``: ``w`` reads ``u``'s output.
        out_bytes: ``[V]`` bytes of each node's output.
        bandwidth: ``[k-1]`` bits per second of each link.
        fixed: ``{node: tier}`` pins (inputs are produced on tier 0).
        precedence: extra pairs ``(a, b)`` with ``tier[a] <= tier[b]`` and no data between them;
            both ``(a, b)`` and ``(b, a)`` pin two nodes to one tier (a non-tensor value that
            cannot be shipped).
        backend: ``"boykov-kolmogorov"`` or ``"scipy-dinic"``; None = the fastest installed
            (:func:`max_flow_backend`).

    Raises:
        ValueError: malformed input, or pins that no monotone placement satisfies.
    """
    node_time = np.atleast_2d(np.asarray(node_time, dtype=np.float64))
    out_bytes = np.asarray(out_bytes, dtype=np.float64).reshape(-1)
    bandwidth = np.asarray(bandwidth, dtype=np.float64).reshape(-1)
    e, order = _edge_array(edges), _edge_array(precedence)
    _check_inputs(node_time, e, out_bytes, bandwidth)
    k, n = node_time.shape
    if k == 1 or n == 0:
        tier = np.zeros(n, dtype=np.int64)
        return DagSolution(tier, float(node_time[0].sum()), 0.0, 0.0)
    chunks, n_vertices, producers = _build_graph(node_time, e, order, out_bytes, bandwidth, fixed)
    flat = _flatten(chunks)
    cut_edges = n + producers * (k - 1)
    offset = float(_chain_capacities(node_time, fixed)[1].sum())  # the constant the chain shift took out
    constraints = np.vstack([e, order])

    def shifted_cost(tier: np.ndarray) -> float:
        return float(_costs(node_time, e, out_bytes, bandwidth, tier[None])[0]) - offset

    if backend is None:
        backend = max_flow_backend()
    if backend == "boykov-kolmogorov":
        tier = _solve_bk(flat, n_vertices, k, n)
        if not _monotone(tier, constraints) or any(tier[v] != t for v, t in (fixed or {}).items()):
            raise ValueError("the pinned tiers contradict the edges: no monotone placement exists")
        return DagSolution(tier=tier, cost=float(shifted_cost(tier) + offset), bound=0.0, resolution_s=0.0)
    reference = _trivial_reference(k, n, fixed, constraints, shifted_cost)
    for _ in range(2):
        graph, scale, infinity = _integer_graph(flat, n_vertices, cut_edges, reference)
        result = maximum_flow(graph, _SOURCE, _SINK, method="dinic")
        if result.flow_value >= infinity:
            raise ValueError("the pinned tiers contradict the edges: no monotone placement exists")
        levels = _source_side(graph, result.flow)[2:2 + (k - 1) * n].reshape(k - 1, n)
        tier = levels.sum(axis=0).astype(np.int64)
        if not _monotone(tier, constraints) or any(tier[v] != t for v, t in (fixed or {}).items()):
            raise ValueError("the pinned tiers contradict the edges: no monotone placement exists")
        reference = shifted_cost(tier)
        if reference <= 0:  # nothing to pay beyond the constant: optimal exactly
            scale = np.inf
            break
        if cut_edges / scale <= REFINE_TOLERANCE * (reference + offset):
            break  # fine enough; else solve again scaled by this placement's (much lower) cost
    cost = shifted_cost(tier) + offset
    bound = cut_edges / scale
    return DagSolution(tier=tier, cost=float(cost), bound=float(bound), resolution_s=float(1.0 / scale))
