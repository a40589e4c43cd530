"""Exact latency planning over prefix cuts for a chain of tiers.

Problem (survey notation: tiers 0..k-1 in a chain, link t joins tier t and t+1).
Compute nodes ``0..N-1`` in topological order; a plan is ``0 = c_0 <= c_1 <= ... <=
c_{k-1} <= c_k = N`` and tier ``t`` runs nodes ``[c_t, c_{t+1})``. Its latency is::

    sum_t  T_t[c_t, c_{t+1})                       (compute; prefix sums of node times)
  + sum_{t<k-1} [c_{t+1} < N] * (rtt_t + 8 * bytes(c_{t+1}) / bw_t)    (links)

A link carries what crosses its cut; it is used only while work remains
downstream (a tier that runs nothing relays). Cut 0 ships the raw input. Each tier's
partition must fit its memory: parameter bytes of its nodes + the largest live
activation set inside its range.

Dynamic programming over (tier, cut) is exact over all prefix cuts. For a fixed
end ``c`` the feasible starts ``c'`` form a window ``[lo(c), c]`` whose ends never
move left as ``c`` grows (memory grows with the range), so a monotone-deque
sliding-window minimum gives O(k N) time. A backward pass gives, for every
boundary and candidate, the best total latency achievable with that cut -- the
ranked table ``splitc plan`` prints, which lets anyone check the optimum.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from splitc.core.placement import ChainProblem, ChainSolution

__all__ = ["solve_chain", "range_memory"]

INF = float("inf")


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(values.shape[-1] + 1)
    out[1:] = np.cumsum(values)
    return out


class _RangeMax:
    """O(1) range-maximum queries (sparse table over ``values``)."""

    def __init__(self, values: np.ndarray) -> None:
        self.table = [np.asarray(values, dtype=np.float64)]
        width = 1
        while 2 * width <= len(values):
            prev = self.table[-1]
            self.table.append(np.maximum(prev[:-width], prev[width:]))
            width *= 2

    def query(self, lo: int, hi: int) -> float:
        """max(values[lo..hi]) inclusive."""
        level = (hi - lo + 1).bit_length() - 1
        row = self.table[level]
        return float(max(row[lo], row[hi - (1 << level) + 1]))


def _feasible_windows(problem: ChainProblem, tier: int, rmax: _RangeMax,
                      pparams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each cut c: lo[c] = first start s with mem(s, c) <= M; hi[c] = last end e with mem(c, e) <= M."""
    n, limit = problem.n, problem.memory[tier]

    def fits(start: int, end: int) -> bool:
        if end <= start:
            return True
        return pparams[end] - pparams[start] + rmax.query(start, end) <= limit

    lo = np.zeros(n + 1, dtype=np.int64)
    start = 0
    for end in range(n + 1):
        while not fits(start, end):
            start += 1
        lo[end] = start
    hi = np.zeros(n + 1, dtype=np.int64)
    end = 0
    for start in range(n + 1):
        end = max(end, start)
        while end < n and fits(start, end + 1):
            end += 1
        hi[start] = end
    return lo, hi


def range_memory(problem: ChainProblem, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Vectorised :meth:`ChainProblem.memory_of` for arrays of ranges ``[starts, ends)``."""
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    pparams = _prefix(problem.param_bytes)
    table = _RangeMax(problem.cut_bytes).table
    out = np.zeros(starts.shape, dtype=np.float64)
    busy = ends > starts
    lo, hi = starts[busy], ends[busy]  # max over cut_bytes[lo..hi] inclusive, as memory_of
    level = np.floor(np.log2(hi - lo + 1)).astype(np.int64)
    peak = np.zeros(lo.shape)
    for lv in np.unique(level):
        sel = level == lv
        row = table[lv]
        peak[sel] = np.maximum(row[lo[sel]], row[hi[sel] - (1 << int(lv)) + 1])
    out[busy] = pparams[hi] - pparams[lo] + peak
    return out


def _window_argmin(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and argmin of ``values[lo[i]..hi[i]]`` for windows whose ends never decrease."""
    mins = np.full(len(lo), INF)
    args = np.full(len(lo), -1, dtype=np.int64)
    window: deque[int] = deque()
    right = -1
    for i in range(len(lo)):
        while right < hi[i]:
            right += 1
            while window and values[window[-1]] >= values[right]:
                window.pop()
            window.append(right)
        while window and window[0] < lo[i]:
            window.popleft()
        if window and lo[i] <= hi[i]:
            mins[i], args[i] = values[window[0]], window[0]
    return mins, args


def solve_chain(problem: ChainProblem) -> ChainSolution:
    """Optimal prefix cuts for ``problem`` (see module docstring); O(k N).

    Raises:
        ValueError: no plan satisfies the memory limits (the caller words the user error).
    """
    k, n = problem.tiers, problem.n
    prefix = [_prefix(problem.weighted_node_time(t)) for t in range(k)]
    pparams = _prefix(problem.param_bytes)
    rmax = _RangeMax(problem.cut_bytes)
    windows = [_feasible_windows(problem, t, rmax, pparams) for t in range(k)]
    boundary_ok = problem.legal.copy()
    boundary_ok[n] = True
    idx = np.arange(n + 1)
    links = [problem.link_costs(t) for t in range(k - 1)]

    # forward[t][c]: best cost of tiers 0..t with tier t ending at cut c.
    # a tier running [a, b) with a < b also pays entry[a] + exit[b] (one session run, layout conversions):
    # the empty range (a = b) and the non-empty ones are minimised apart, so the DP stays exact
    entry = [problem.weighted_entry(t) for t in range(k)]
    exit_ = [problem.weighted_exit(t) for t in range(k)]
    forward = [np.where(idx <= windows[0][1][0], prefix[0] + np.where(idx > 0, entry[0][0] + exit_[0], 0.0), INF)]
    back_ptr: list[np.ndarray] = [np.zeros(n + 1, dtype=np.int64)]
    for t in range(1, k):
        g = np.where(boundary_ok, forward[t - 1] + links[t - 1] - prefix[t], INF)
        mins, args = _window_argmin(g + entry[t], windows[t][0], idx - 1)   # tier t runs [a, b), a < b
        busy = prefix[t] + exit_[t] + mins
        empty = g + prefix[t]                                               # tier t runs nothing (a = b)
        take_empty = empty <= busy
        forward.append(np.where(take_empty, empty, busy))
        back_ptr.append(np.where(take_empty, idx, args))
    # backward[t][c]: best cost of link t-1 plus tiers t..k-1 with tier t starting at cut c.
    backward: list[np.ndarray] = [np.empty(0)] * k
    fwd_ptr: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * k
    last_end = np.where(windows[k - 1][1] >= n,
                        prefix[k - 1][n] - prefix[k - 1] + np.where(idx < n, entry[k - 1] + exit_[k - 1][n], 0.0), INF)
    backward[k - 1] = np.where(boundary_ok, last_end + links[k - 2], INF) if k > 1 else last_end
    fwd_ptr[k - 1] = np.full(n + 1, n, dtype=np.int64)
    for t in range(k - 2, 0, -1):
        h = np.where(boundary_ok, prefix[t] + backward[t + 1], INF)
        mins, args = _window_argmin(h + exit_[t], idx + 1, windows[t][1])   # tier t runs [c, e), c < e
        busy = mins - prefix[t] + entry[t]
        empty = h - prefix[t]                                               # tier t runs nothing (e = c)
        take_empty = empty <= busy
        backward[t] = np.where(boundary_ok, links[t - 1] + np.where(take_empty, empty, busy), INF)
        fwd_ptr[t] = np.where(take_empty, idx, args)

    total = float(forward[k - 1][n])
    if not np.isfinite(total):
        raise ValueError("no plan fits the tiers' memory")
    best_at = np.vstack([forward[b - 1] + backward[b] for b in range(1, k)]) if k > 1 else np.zeros((0, n + 1))
    plans_at = [[_trace(b, c, back_ptr, fwd_ptr, k) if np.isfinite(best_at[b - 1, c]) else None
                 for c in range(n + 1)] for b in range(1, k)]
    cuts = _trace_forward(k - 1, n, back_ptr)
    return ChainSolution(cuts=cuts, latency=total, best_at=best_at, plans_at=plans_at)


def _trace_forward(t: int, c: int, back_ptr: list[np.ndarray]) -> tuple[int, ...]:
    """Cuts c_1..c_t given that tier t ends at c."""
    cuts = []
    while t > 0:
        c = int(back_ptr[t][c])
        cuts.append(c)
        t -= 1
    return tuple(reversed(cuts))


def _trace(b: int, c: int, back_ptr: list[np.ndarray], fwd_ptr: list[np.ndarray], k: int) -> tuple[int, ...]:
    """Full plan with boundary b (before tier b) at cut c."""
    left = _trace_forward(b - 1, c, back_ptr)
    right = [c]
    for t in range(b, k - 1):
        right.append(int(fwd_ptr[t][right[-1]]))
    return left + tuple(right)
