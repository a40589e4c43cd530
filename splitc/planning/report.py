"""Human-readable views of a plan: the ranked table, objectives, Pareto front, variants, and ``splitc plan --report``."""

from __future__ import annotations

from typing import Any

from splitc.core.placement import PlanResult
from splitc.units import format_bandwidth, format_bytes, format_seconds

__all__ = ["format_plan_table", "format_objectives", "write_plan_report", "format_ms"]


def format_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def format_plan_table(plan: PlanResult, top: int | None = 15) -> str:
    """The ranked candidate table, one block per tier boundary.

    Each row is a cut position and the best end-to-end latency any plan achieves
    with that cut, with the compute / link breakdown of that plan.
    """
    lines = [f"tiers: {' -> '.join(plan.tiers)}"]
    for link in plan.links:
        lines.append(f"link {link.index}: {link.from_tier} -> {link.to_tier}: {format_bandwidth(link.bandwidth_bps)}, "
                     f"rtt {format_seconds(link.rtt_s)} ({link.source})")
    best = plan.best
    breakdown = " + ".join([*(f"{t} {format_ms(c)}" for t, c in zip(plan.tiers, best.compute_s)),
                            *(f"link{i} {format_ms(s)}" for i, s in enumerate(best.link_s))])
    where = ", ".join(f"after {a}" if a else "before the first node (raw input)" for a in best.after) or "none"
    lines.append(f"{'forced' if plan.forced else 'chosen'} plan: cut {where}; predicted {format_ms(best.latency_s)} ms "
                 f"= {breakdown} (ms)")
    if plan.figures:  # which compute figures are measured (splitc profile --model) and which predicted
        lines.append("figures: " + "; ".join(_figure_words(f) for f in plan.figures)
                     + "; links, per-run costs and layout conversions at cuts predicted")
    if best.reach:  # early exits: latencies are expectations over requests; each tier's term is already weighted
        lines.append("early exits: expected latency over requests; share of requests reaching each tier: "
                     + ", ".join(f"{t} {r:.1%}" for t, r in zip(plan.tiers, best.reach)))
        spread = best.metrics.get("latency_distribution") or []
        if len(spread) > 1:  # exits make the per-request latency multimodal: where requests end, and when
            lines.append("latency distribution (warm): " + ", ".join(
                f"{d['share']:.1%} end {'at the end' if i == len(spread) - 1 else 'after ' + str(d['after'])} "
                f"({plan.tiers[d['tier']]}) in {format_ms(d['latency_s'])} ms" for i, d in enumerate(spread)))
    lines.extend(format_objectives(plan))
    for b, rows in enumerate(plan.ranking):
        shown = rows if top is None else rows[:top]
        lines.append("")
        lines.append(f"boundary {b} ({plan.tiers[b]} | {plan.tiers[b + 1]}): {len(rows)} candidates, "
                     f"best {len(shown)} shown (all with --json)")
        header = f"{'rank':>4} {'cut after':<48} {'crossing':>10} {'tensors':>7} {'best total ms':>13}  plan cuts"
        lines.append(header)
        lines.append("-" * len(header))
        for rank, row in enumerate(shown, start=1):
            after = row["after"] or "<input>"
            if row.get("block"):  # the module tree names the cut: "bert.encoder.layer.0 (layer_norm_2)"
                after = f"{row['block']} ({after})"
            total = format_ms(row["best_latency_s"]) if row["legal"] else "illegal"
            lines.append(f"{rank:>4} {after[:48]:<48} {format_bytes(row['bytes']):>10} {len(row['tensors']):>7} "
                         f"{total:>13}  {row['plan'] if row['plan'] else row['reason']}")
    return "\n".join(lines)


def _figure_words(figure: dict[str, Any]) -> str:
    if figure["compute"] == "none":
        return f"{figure['tier']} runs nothing"
    if figure["compute"] == "predicted":
        return f"{figure['tier']} compute predicted by the cost model"
    return (f"{figure['tier']} compute measured for {figure['measured_nodes']} of {figure['nodes']} nodes "
            f"({figure['measured_by']})")


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _plan_row(choice, chosen: bool = False) -> str:
    m = choice.metrics
    where = ", ".join(a or "<input>" for a in choice.after) or "-"
    dcor = "-" if m.get("dcor") is None else f"{m['dcor']:.3f}"
    return (f"{'*' if chosen else ' '} {where[:44]:<44} {format_ms(choice.latency_s):>9} {format_ms(m.get('p50_s')):>8} "
            f"{format_ms(m.get('p99_s')):>8} {_usd(m.get('usd_per_million')):>11} {dcor:>6}")


def format_objectives(plan: PlanResult, limit: int = 12) -> list[str]:
    """Objective, cost and privacy of the chosen plan, the Pareto front and bandwidth variants (plan table lines)."""
    o, m = plan.objective, plan.best.metrics
    if not m:
        return []
    weights = ", ".join(f"{k}={v:g}" for k, v in o.get("weights", {}).items() if v)
    lines = [f"objective: {o.get('name', 'latency')} ({weights}); {o.get('rps', 0):g} requests/s; SLO "
             + (f"{o.get('slo_applies_to', 'p50')} <= {o['slo_s'] * 1e3:g} ms" if o.get("slo_s") else "none")
             + (f"; leakage dcor <= {o['max_dcor']:g}" if o.get("max_dcor") is not None else "")
             + (f"; workload {o['workload']}" if o.get("workload", "inference") != "inference" else "")
             + f"; {o.get('plans_evaluated', 1)} plan(s) evaluated"
             + ("" if o.get("exhaustive", True) else " (restricted to the DP's best cuts per boundary)")]
    cost = m.get("usd_per_request")
    if cost is not None:
        per_tier = ", ".join(f"{t} {_usd(v * 1e6)}" for t, v in zip(plan.tiers, m["tier_usd_per_request"]))
        lines.append(f"cost: ${_usd(m['usd_per_million'])} per million requests ({per_tier}); p50 "
                     f"{format_ms(m['p50_s'])} ms, p99 {format_ms(m['p99_s'])} ms")
    for entry in o.get("indifference", []):
        if entry.get("rps") is None:
            lines.append(f"cost indifference ({entry['tier']}'s partition): "
                         + (entry.get("note") or f"{entry['faas']} is cheaper than {entry['vm']} at every rate"))
        else:
            lines.append(f"cost indifference ({entry['tier']}'s partition): {entry['faas']} is cheaper below "
                         f"{entry['rps']:.4g} requests/s, {entry['vm']} above (at {o.get('rps', 0):g} requests/s "
                         f"reaching it: {'VM' if o.get('rps', 0) > entry['rps'] else 'FaaS'} side)")
    if m.get("dcor") is not None:
        lines.append(f"privacy: distance correlation input vs first used link {m['dcor']:.3f} (1 = raw input)")
    if plan.pareto:
        lines.append("")
        lines.append(f"Pareto front: {len(plan.pareto)} plan(s) no other plan beats on every objective "
                     f"(* = chosen){'' if len(plan.pareto) <= limit else f'; fastest {limit} shown'}")
        header = f"  {'cut(s) after':<44} {'mean ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'$/M req':>11} {'dcor':>6}"
        lines += [header, "-" * len(header)]
        lines += [_plan_row(p, p.cuts == plan.best.cuts) for p in plan.pareto[:limit]]
    if plan.variants:
        lines.append("")
        lines.append(f"bandwidth variants of link 0 ({plan.links[0].from_tier} -> {plan.links[0].to_tier}):")
        for v in plan.variants:
            lo, hi = (format_bandwidth(b) for b in v["range_bps"])
            if v["plan"] is None:
                lines.append(f"  {lo} .. {hi}: {v['reason']}")
                continue
            where = ", ".join(c["after"] or "<input>" for c in v["plan"]["cuts"])
            lines.append(f"  {lo} .. {hi}: cut after {where} ({format_ms(v['plan']['predicted']['latency_s'])} ms at "
                         f"{format_bandwidth(v['plan']['evaluated_at_bps'])})")
    return lines


def write_plan_report(plan: PlanResult, folder) -> list:
    """plan.md, plan.json and PNG plots (Pareto front; bandwidth variants) in ``folder``; returns the paths."""
    import json
    from pathlib import Path

    from splitc.planning.plots import plot_bandwidth_variants, plot_pareto

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "plan.md", folder / "plan.json"]
    files[0].write_text("# splitc plan\n\n```\n" + format_plan_table(plan, top=25) + "\n```\n", encoding="utf-8")
    payload = plan.to_dict(include_ranking=True)
    payload["alternatives"] = [a.to_dict() for a in plan.alternatives]
    files[1].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if plan.pareto or plan.alternatives:
        seen, points = set(), []
        for choice in [plan.best, *plan.pareto, *plan.alternatives]:
            if choice.cuts in seen or not choice.metrics:
                continue
            seen.add(choice.cuts)
            points.append({"latency_s": choice.latency_s, "usd_per_million": choice.metrics.get("usd_per_million"),
                           "dcor": choice.metrics.get("dcor"), "pareto": any(p.cuts == choice.cuts for p in plan.pareto),
                           "label": ", ".join(a or "input" for a in choice.after)})
        files.append(plot_pareto(points, folder / "pareto.png", chosen=0))
    if plan.variants:
        files.append(plot_bandwidth_variants(_variant_curves(plan), folder / "variants.png"))
    return files


def _variant_curves(plan: PlanResult) -> list[dict[str, Any]]:
    """Each variant's predicted latency across the whole range (computed by the planner), for the plot."""
    return [{"label": ", ".join(c["after"] or "input" for c in v["plan"]["cuts"]),
             "bandwidths_bps": v["curve"]["bandwidth_bps"], "latency_s": v["curve"]["latency_s"],
             "range_bps": tuple(v["range_bps"])}
            for v in plan.variants if v.get("plan") is not None and "curve" in v]
