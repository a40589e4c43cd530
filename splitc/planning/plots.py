"""PNG plots of a plan report: the Pareto front and the plans chosen across bandwidths.

Both functions take plain lists of dicts (what the planner also writes to the manifest),
so a report can be re-plotted from a manifest alone. They draw on a bare
:class:`matplotlib.figure.Figure`, which renders with the Agg backend when saved as PNG:
no display, no pyplot global state (safe in tests and worker threads).

Pareto plot: the planner's front is over three objectives (latency, cost, privacy
leakage as distance correlation). Each panel shows one 2-D projection against latency;
points flagged ``pareto`` are coloured, dominated ones grey. A 3-D front point can be
dominated in a 2-D projection, so the connecting line in each panel is the staircase of
the front points that are also non-dominated in that panel's two objectives: the
trade-off curve one reads off that panel.

Bandwidth plot: each plan's predicted latency against the first link's bandwidth (log
axis), drawn thin across the whole sweep and thick over the range where it is the
optimum; the bandwidths where the optimum switches are vertical lines.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from splitc.errors import SplitcError
from splitc.units import format_bandwidth

__all__ = ["plot_pareto", "plot_bandwidth_variants"]

_GREY = "0.7"
_FRONT = "tab:blue"
_CHOSEN = "tab:red"


# --------------------------------------------------------------------------- validation


def _records(items: Any, what: str, required: Sequence[str]) -> list[Mapping[str, Any]]:
    """A non-empty list of mappings that have every required key."""
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or not items:
        raise SplitcError(f"nothing to plot: {what} must be a non-empty list, got {items!r}"[:200],
                          hint=f"pass one dict per {what[:-1]} with keys {', '.join(required)}")
    for i, item in enumerate(items):
        missing = [k for k in required if not isinstance(item, Mapping) or k not in item]
        if missing:
            raise SplitcError(f"{what}[{i}] lacks key(s) {', '.join(missing)}",
                              hint=f"each entry needs {', '.join(required)}")
    return list(items)


def _finite(value: Any, where: str, *, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (positive and number <= 0):
        kind = "positive finite" if positive else "finite"
        raise SplitcError(f"{where} must be a {kind} number, got {value!r}")
    return number


def _output(path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise SplitcError(f"plot path {out} must end in .png", hint="e.g. plan/pareto.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- Pareto


def _staircase(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points non-dominated in (x, y), both minimised, sorted by x."""
    order = np.lexsort((y, x))
    keep, best = [], math.inf
    for i in order:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=int)


def _chosen_index(points: list[Mapping[str, Any]], chosen: int | str | None) -> int | None:
    if chosen is None:
        return None
    if isinstance(chosen, str):
        labels = [str(p.get("label", "")) for p in points]
        if chosen not in labels:
            raise SplitcError(f"chosen plan {chosen!r} is not among the points' labels",
                              hint=f"labels: {', '.join(labels[:8])}")
        return labels.index(chosen)
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(points):
        raise SplitcError(f"chosen must be a point index in [0, {len(points)}) or a label, got {chosen!r}")
    return chosen


def _panel(ax: Axes, x: np.ndarray, y: np.ndarray, front: np.ndarray, labels: list[str],
           chosen: int | None, ylabel: str) -> None:
    """One latency-vs-objective scatter with the front highlighted, labelled and connected."""
    ax.scatter(x[~front], y[~front], s=18, color=_GREY, label="dominated", zorder=2)
    ax.scatter(x[front], y[front], s=30, color=_FRONT, label="Pareto front", zorder=3)
    members = np.flatnonzero(front)
    if members.size:
        stairs = members[_staircase(x[members], y[members])]
        ax.step(x[stairs], y[stairs], where="post", color=_FRONT, linewidth=1.2, zorder=2)
    for i in members:
        if labels[i]:
            ax.annotate(labels[i], (x[i], y[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if chosen is not None:
        ax.scatter([x[chosen]], [y[chosen]], s=160, marker="*", color=_CHOSEN, zorder=4,
                   label=f"chosen: {labels[chosen]}" if labels[chosen] else "chosen")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _column(points: list[Mapping[str, Any]], key: str) -> np.ndarray:
    """One objective as floats; None, inf and nan become nan: not drawn (not evaluated, infeasible)."""
    values = []
    for i, p in enumerate(points):
        value = p.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise SplitcError(f"points[{i}].{key} must be a number or None, got {value!r}")
        values.append(math.nan if value is None or not math.isfinite(value) else float(value))
    return np.array(values)


def _objective_panel(ax: Axes, latency_ms: np.ndarray, y: np.ndarray, front: np.ndarray, labels: list[str],
                     chosen: int | None, ylabel: str, title: str, missing: str) -> None:
    """A panel over the points that have both values; a note instead when none has."""
    keep = np.flatnonzero(np.isfinite(latency_ms) & np.isfinite(y))
    if keep.size == 0:
        ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    sub_chosen = int(np.flatnonzero(keep == chosen)[0]) if chosen is not None and chosen in keep else None
    _panel(ax, latency_ms[keep], y[keep], front[keep], [labels[i] for i in keep], sub_chosen, ylabel)
    hidden = len(y) - keep.size
    ax.set_title(title + (f" ({hidden} plan(s) without a finite value not shown)" if hidden else ""))


def plot_pareto(points: Sequence[Mapping[str, Any]], path: str | Path, chosen: int | str | None = None,
                evaluated: int | None = None) -> Path:
    """Latency vs cost and latency vs privacy leakage of the given plans.

    Args:
        points: one dict per plan: ``latency_s``, ``usd_per_million``, ``dcor`` (None when
            privacy was not evaluated), ``pareto`` (bool: on the 3-objective front) and
            optionally ``label`` (e.g. its cuts). A value that is None or not finite (an
            infeasible plan) leaves that point out of the panels that need it.
        path: the ``.png`` file to write (parent folders are created).
        chosen: the chosen plan, as an index into ``points`` or its label; None = not marked.
        evaluated: how many plans the planner evaluated, when ``points`` are only some of them
            (the title then says how many are shown of how many, as the plan table does).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SplitcError: no points, a missing key, a value that is not a number, no point with a
            finite latency, or an unknown ``chosen``.
    """
    points = _records(points, "points", ("latency_s", "usd_per_million", "pareto"))
    latency_ms = _column(points, "latency_s") * 1e3
    if not np.isfinite(latency_ms).any():
        raise SplitcError("nothing to plot: no point has a finite latency_s", hint="pass the feasible plans")
    cost, dcor = _column(points, "usd_per_million"), _column(points, "dcor")
    front = np.array([bool(p["pareto"]) for p in points])
    labels = [str(p.get("label") or "") for p in points]
    index = _chosen_index(points, chosen)
    out = _output(path)

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    cost_ax, privacy_ax = fig.subplots(1, 2)
    _objective_panel(cost_ax, latency_ms, cost, front, labels, index, "cost (USD per million requests)",
                     "latency vs cost", "cost not evaluated")
    _objective_panel(privacy_ax, latency_ms, dcor, front, labels, index,
                     "leakage: distance correlation (lower = more private)", "latency vs privacy leakage",
                     "privacy not evaluated\n(no distance correlation per cut)")
    shown = f"{len(points)} plans" if evaluated is None else f"{len(points)} of {evaluated} evaluated plans shown"
    fig.suptitle(f"{shown}, {int(front.sum())} on the Pareto front")
    fig.savefig(out, dpi=120)
    return out


# --------------------------------------------------------------------------- bandwidth variants


def _variant_arrays(i: int, v: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, float, float]:
    where = f"variants[{i}]"
    bw = np.array([_finite(b, f"{where}.bandwidths_bps", positive=True) for b in v["bandwidths_bps"]])
    lat = np.array([_finite(s, f"{where}.latency_s") for s in v["latency_s"]])
    if bw.size == 0 or bw.size != lat.size:
        raise SplitcError(f"{where}: bandwidths_bps and latency_s must be equally long and non-empty "
                          f"(got {bw.size} and {lat.size})")
    bounds = v["range_bps"]
    if np.shape(bounds) != (2,):
        raise SplitcError(f"{where}.range_bps must be (lo, hi), got {bounds!r}")
    lo = _finite(bounds[0], f"{where}.range_bps[0]", positive=True)
    hi = _finite(bounds[1], f"{where}.range_bps[1]", positive=True)
    if lo > hi:
        raise SplitcError(f"{where}.range_bps has lo {lo:g} above hi {hi:g}")
    order = np.argsort(bw)
    return bw[order], lat[order], lo, hi


def plot_bandwidth_variants(variants: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Predicted latency of each variant plan against the first link's bandwidth.

    Args:
        variants: one dict per plan: ``label``, ``bandwidths_bps`` and ``latency_s`` (the
            sweep, equally long), ``range_bps`` = ``(lo, hi)`` where the plan is optimal.
        path: the ``.png`` file to write (parent folders are created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SplitcError: no variants, a missing key, mismatched or non-positive values.
    """
    variants = _records(variants, "variants", ("label", "bandwidths_bps", "latency_s", "range_bps"))
    out = _output(path)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    starts: list[float] = []
    for i, v in enumerate(variants):
        bw, lat, lo, hi = _variant_arrays(i, v)
        (line,) = ax.plot(bw, lat * 1e3, linewidth=0.8, linestyle="--", alpha=0.6)
        inside = (bw >= lo) & (bw <= hi)
        ax.plot(bw[inside], lat[inside] * 1e3, linewidth=2.5, color=line.get_color(),
                label=f"{v['label']}  ({format_bandwidth(lo)} - {format_bandwidth(hi)})")
        starts.append(lo)
    # the optimum switches where a plan's range begins, except the lowest one (the sweep's start)
    thresholds = sorted(set(starts))[1:]
    for t in thresholds:
        ax.axvline(t, color="0.3", linestyle=":", linewidth=1)
        ax.annotate(format_bandwidth(t), (t, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    textcoords="offset points", xytext=(2, -4), va="top", fontsize=7)
    ax.set_xscale("log")
    low, high = ax.dataLim.y0, ax.dataLim.y1
    if low > 0 and high / low > 20:  # slow links can be 100x slower: keep the fast end readable
        ax.set_yscale("log")
    ax.set_xlabel("first-link bandwidth (bit/s)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{len(variants)} plan(s) optimal across the range, {len(thresholds)} switch point(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(out, dpi=120)
    return out
