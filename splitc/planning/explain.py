"""Why this plan: the best plan of each kind beside the chosen one, and what would change the choice.

A plan that runs everything on one tier is often the honest optimum (a fast device, a slow
uplink), but alone it reads like a failure to split. :func:`explain_plan` puts it in context,
all from the same cost model and the same problem the planner solved:

* **kinds** -- the best plan of each kind: everything on one tier (device only, and each server
  tier alone, the raw input shipped to it), the best plan with a cut inside the network ("mid
  cut"), and the best plan with each compression knob the user did not give (handed in by the
  driver as :data:`WhatIf` functions; predicted only: their accuracy is measured only when a
  compile uses them);
* **switches** -- the bandwidths of the device uplink (link 0) below and above which another
  plan becomes the optimum, and which plan. For a fixed first cut the rest of the optimal plan
  does not depend on link 0 (its cost depends only on that cut), so the latency of the best plan
  with first cut ``c`` is a line ``A_c + W_c / bandwidth`` and the switch points are exact
  crossings of the lower envelope of those lines (no re-solving, O(N));
* **optimum** -- for a forced ``--split``: the optimum under the same problem and the gap.

Example:
    >>> from splitc.planning.report import format_explanation   # doctest: +SKIP
    >>> print("\\n".join(format_explanation(plan_result.to_dict())))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from splitc.core.placement import ChainProblem, evaluate_cuts
from splitc.planning.chain import solve_chain
from splitc.units import LINK_BANDWIDTH_RANGE_BPS

__all__ = ["WhatIf", "explain_plan", "plan_summary", "bandwidth_switches", "cut_label", "describe_plan"]

#: A capability's "what if the user had given this flag" problems: ``(problem, gm, ctx) -> [(label, note,
#: problem)]`` (compression: the wire bytes of the knobs not given). The driver hands them to the plan pass.
WhatIf = Callable[[ChainProblem, Any, Any], Sequence[tuple[str, str, ChainProblem]]]


def cut_label(after: str | None) -> str:
    """The one name of a cut position: the node it follows, or ``input`` (the raw input is sent)."""
    return after or "input"


def describe_plan(entry: dict[str, Any]) -> str:
    """A plan summary in words: ``cut after layer3_5_relu_2``, ``all on cloud-gpu-t4 (cut after input)``
    or ``all on jetson-orin-nano (no link used)``."""
    where = ", ".join(f"after {a}" for a in entry["after"] if a)
    if len(entry["runs_on"]) == 1:
        return f"all on {entry['runs_on'][0]} " + (f"(cut {where})" if where else "(no link used)")
    return f"cut {where}"


def _wire(problem: ChainProblem) -> np.ndarray:
    return np.asarray(problem.cut_bytes if problem.wire_bytes is None else problem.wire_bytes, dtype=np.float64)


def plan_summary(problem: ChainProblem, candidates, tiers, cuts: Sequence[int], kind: str, label: str,
                 note: str = "") -> dict[str, Any]:
    """One plan as the explanation lists it: cuts, where work runs, predicted latency, bytes sent per request.

    Args:
        tiers: the tier names, in chain order.
        kind: ``device only``, ``server only``, ``mid cut``, ``compression`` or ``chosen``/``optimum``.
        label: the kind in words (e.g. ``all on jetson-orin-nano``).
    """
    cuts = tuple(int(c) for c in cuts)
    ev = evaluate_cuts(problem, cuts)
    wire = _wire(problem)
    bounds = (0, *cuts, problem.n)
    running = [tiers[t] for t in range(len(tiers)) if bounds[t + 1] > bounds[t]]
    sent = [float(wire[c]) for c in cuts if c < problem.n]  # a link after the last working tier is unused
    return {"kind": kind, "label": label, "cuts": list(cuts),
            "after": [cut_label(candidates.cuts[c].after) if c < problem.n else None for c in cuts],
            "runs_on": running, "latency_s": float(ev["total"]) if ev["fits"] and ev["legal"] else None,
            "bytes_sent": int(round(sum(sent))), "links_used": len(sent), "fits": bool(ev["fits"]),
            **({"note": note} if note else {})}


def _one_tier_plans(problem: ChainProblem, candidates, tiers) -> list[dict[str, Any]]:
    n, k = problem.n, problem.tiers
    out = []
    for t in range(k):
        cuts = (0,) * t + (n,) * (k - 1 - t)
        kind = "device only" if t == 0 else "server only"
        entry = plan_summary(problem, candidates, tiers, cuts, kind, f"all on {tiers[t]}")
        if not entry["fits"]:
            entry["note"] = f"the whole model does not fit {tiers[t]}'s memory"
        elif entry["latency_s"] is None:
            entry["note"] = "the raw input cannot be sent (an illegal cut)"
        out.append(entry)
    return out


def _best_mid_cut(problem: ChainProblem, candidates, tiers, solution) -> dict[str, Any] | None:
    """The best plan with at least one cut strictly inside the network (two tiers or more do work)."""
    best, plan = np.inf, None
    for b, row in enumerate(solution.best_at):
        inner = np.asarray(row[1:problem.n], dtype=np.float64)
        if not len(inner) or not np.isfinite(inner).any():
            continue
        c = int(np.argmin(inner)) + 1
        if inner[c - 1] < best and solution.plans_at[b][c] is not None:
            best, plan = float(inner[c - 1]), solution.plans_at[b][c]
    if plan is None:
        return None
    return plan_summary(problem, candidates, tiers, plan, "mid cut", "best mid cut")


def bandwidth_switches(problem: ChainProblem, candidates, tiers, solution, chosen: Sequence[int],
                       bandwidth_bps: float) -> list[dict[str, Any]]:
    """The nearest bandwidths of link 0 below and above ``bandwidth_bps`` where the optimum changes.

    Exact for the latency objective (see the module docstring): with ``x = 1 / bandwidth`` the
    best plan with first cut ``c`` costs ``A_c + W_c x``, and the chosen plan stays optimal until
    another line crosses it: on a faster link (smaller ``x``) a plan sending more bytes (larger
    ``W``, less compute before the cut) overtakes, on a slower one a plan sending fewer. Only
    rates inside :data:`~splitc.units.LINK_BANDWIDTH_RANGE_BPS` are reported.

    Returns:
        Up to two entries ``{"direction": "below"|"above", "bandwidth_bps", "plan": plan_summary}``.
    """
    if problem.tiers < 2:
        return []
    best = np.asarray(solution.best_at[0], dtype=np.float64)
    wire = _wire(problem)
    reach = np.ones(problem.n + 1) if problem.reach is None else np.asarray(problem.reach, dtype=np.float64)
    slope = np.where(np.arange(problem.n + 1) < problem.n, 8.0 * wire * reach, 0.0)
    x0 = 1.0 / bandwidth_bps
    feasible = np.isfinite(best)
    intercept = np.where(feasible, best - slope * x0, np.inf)
    c0 = int(chosen[0])
    a0, w0 = intercept[c0], slope[c0]
    low, high = LINK_BANDWIDTH_RANGE_BPS
    out = []
    for direction, side in (("below", feasible & (slope < w0 * (1 - 1e-9))),
                            ("above", feasible & (slope > w0 * (1 + 1e-9) + 1e-12))):
        if not side.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = np.where(side, (intercept - a0) / (w0 - slope), np.nan)  # x where the two lines meet
        if direction == "below":  # slower link: x grows past x0
            cross = np.where(cross > x0 * (1 + 1e-12), cross, np.inf)
            x = float(np.min(cross))
            ok = np.isfinite(x) and 1.0 / x >= low
        else:  # faster link: x falls below x0
            cross = np.where((cross < x0 * (1 - 1e-12)) & (cross > 0), cross, -np.inf)
            x = float(np.max(cross))
            ok = np.isfinite(x) and 1.0 / x <= high
        if not ok:
            continue
        ties = np.flatnonzero(np.isclose(cross, x, rtol=1e-9, atol=0.0))
        # at the crossing several plans may tie: beyond it the one with the extreme slope wins
        c = int(ties[np.argmin(slope[ties])] if direction == "below" else ties[np.argmax(slope[ties])])
        out.append(_switch(problem, candidates, tiers, solution, c, direction, 1.0 / x))
    return out


def _link_floor(problem: ChainProblem, solution, bandwidth_bps: float) -> float | None:
    """The best latency of a plan that uses link 0, were its bandwidth unlimited (round trip and compute only)."""
    best = np.asarray(solution.best_at[0][:problem.n], dtype=np.float64)
    if not np.isfinite(best).any():
        return None
    wire = _wire(problem)[:problem.n]
    reach = np.ones(problem.n) if problem.reach is None else np.asarray(problem.reach[:problem.n], dtype=np.float64)
    return float(np.min(best - 8.0 * wire * reach / bandwidth_bps))


def _switch(problem, candidates, tiers, solution, c: int, direction: str, bandwidth: float) -> dict[str, Any]:
    plan = solution.plans_at[0][c]
    varied = problem.bandwidth.copy()
    varied[0] = bandwidth
    at = dataclasses.replace(problem, bandwidth=varied)
    entry = plan_summary(at, candidates, tiers, plan, "switch", "")
    return {"direction": direction, "bandwidth_bps": float(bandwidth), "plan": entry}


def explain_plan(problem: ChainProblem, candidates, tiers: Sequence[str], chosen: Sequence[int], *,
                 forced: bool, bandwidth_bps: float | None, latency_objective: bool,
                 what_ifs: Sequence[tuple[str, str, ChainProblem]] = (), solution=None) -> dict[str, Any]:
    """The explanation of a plan (stored as ``plan.explanation`` in the manifest and ``plan.json``).

    Args:
        problem: the problem the planner solved (after every capability's adjustment).
        tiers: tier names.
        chosen: the chosen cuts.
        forced: the cuts came from ``--split`` (then the optimum and the gap are given).
        bandwidth_bps: link 0's bandwidth (None for a single tier).
        latency_objective: the plan minimises latency alone (bandwidth switches are only exact then).
        what_ifs: ``(label, note, problem)`` for knobs the user did not give.
        solution: ``solve_chain(problem)`` when already computed.

    Returns:
        ``{"chosen": plan, "kinds": [plan, ...], "switches": [...], "optimum": plan (forced only)}``.
    """
    tiers = list(tiers)
    out: dict[str, Any] = {"chosen": plan_summary(problem, candidates, tiers, chosen, "chosen", "chosen plan")}
    if problem.tiers < 2:
        return out
    if solution is None:
        try:
            solution = solve_chain(problem)
        except ValueError:  # nothing fits (a forced split was checked on its own)
            return out
    kinds = _one_tier_plans(problem, candidates, tiers)
    mid = _best_mid_cut(problem, candidates, tiers, solution)
    if mid is not None:
        kinds.append(mid)
    for label, note, alt in what_ifs:
        try:
            best = solve_chain(alt)
        except ValueError:
            continue
        kinds.append(plan_summary(alt, candidates, tiers, best.cuts, "compression", label, note))
    out["kinds"] = kinds
    if forced:
        out["optimum"] = plan_summary(problem, candidates, tiers, solution.cuts, "optimum", "optimum")
    elif latency_objective and bandwidth_bps:
        out["switches"] = bandwidth_switches(problem, candidates, tiers, solution, chosen, bandwidth_bps)
        floor = _link_floor(problem, solution, bandwidth_bps)
        if floor is not None:
            out["link_floor_s"] = floor
    return out
