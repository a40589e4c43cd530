"""Human-readable views of a plan: the ranked table, objectives, Pareto front, variants, and ``splitc plan --report``."""

from __future__ import annotations

from typing import Any

from splitc.core.placement import PlanResult
from splitc.planning.explain import cut_label, describe_plan
from splitc.units import format_bandwidth, format_bytes, format_seconds

__all__ = ["format_plan_table", "format_objectives", "format_explanation", "describe_plan", "write_plan_report",
           "format_ms"]


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
    lines.append(f"{'forced' if plan.forced else 'chosen'} plan: {_where(plan.to_dict().get('explanation', {}), best)}; "
                 f"predicted {format_ms(best.latency_s)} ms = {breakdown} (ms)")
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
    explanation = format_explanation(plan.to_dict())
    if explanation:
        lines += ["", *explanation]
    for b, rows in enumerate(plan.ranking):
        shown = rows if top is None else rows[:top]
        lines.append("")
        lines.append(f"boundary {b} ({plan.tiers[b]} | {plan.tiers[b + 1]}): {len(rows)} candidates, "
                     f"best {len(shown)} shown (all with --json)")
        header = f"{'rank':>4} {'cut after':<48} {'crossing':>10} {'tensors':>7} {'best total ms':>13}  plan cuts"
        lines.append(header)
        lines.append("-" * len(header))
        for rank, row in enumerate(shown, start=1):
            after = cut_label(row["after"])
            if row.get("block"):  # the module tree names the cut: "bert.encoder.layer.0 (layer_norm_2)"
                after = f"{row['block']} ({after})"
            total = format_ms(row["best_latency_s"]) if row["legal"] else "illegal"
            crossing = format_bytes(row["bytes"]) if row["tensors"] else "nothing"
            lines.append(f"{rank:>4} {after[:48]:<48} {crossing:>10} {len(row['tensors']):>7} "
                         f"{total:>13}  {row['plan'] if row['plan'] else row['reason']}")
    return "\n".join(lines)


def _figure_words(figure: dict[str, Any]) -> str:
    if figure["compute"] == "none":
        return f"{figure['tier']} runs nothing"
    if figure["compute"] == "predicted":
        return f"{figure['tier']} compute predicted by the cost model"
    return (f"{figure['tier']} compute measured for {figure['measured_nodes']} of {figure['nodes']} nodes "
            f"({figure['measured_by']})")


def _where(explanation: dict[str, Any], best) -> str:
    """The chosen cuts in words, saying so when one tier does all the work."""
    chosen = explanation.get("chosen")
    if not chosen:
        return "cut " + (", ".join(f"after {cut_label(a)}" for a in best.after) or "none")
    return describe_plan(chosen)


def describe_choice(choice: dict[str, Any], tiers: list[str]) -> str:
    """:func:`describe_plan` for a plan in manifest form (``PlanChoice.to_dict()``): a cut that sends no
    tensor is after the last node (its link unused)."""
    cuts = choice["cuts"]
    used = [bool(c["tensors"]) for c in cuts]
    bounds = [0, *[c["index"] for c in cuts]]
    runs = [tiers[t] for t in range(len(tiers))
            if (t < len(cuts) and bounds[t + 1] > bounds[t]) or (t == len(cuts) and (not cuts or used[-1]))]
    entry = {"after": [cut_label(c["after"]) if u else None for c, u in zip(cuts, used)], "runs_on": runs}
    return describe_plan(entry)


def _summary_row(entry: dict[str, Any], mark: str = " ") -> str:
    label = entry["label"] + {"device only": " (device only)", "server only": " (server only)"}.get(entry["kind"], "")
    latency = "no fit" if entry.get("latency_s") is None else f"{entry['latency_s'] * 1e3:.2f}"
    sent = format_bytes(entry["bytes_sent"]) if entry.get("links_used") else "nothing"
    note = f"; {entry['note']}" if entry.get("note") else ""
    return f"{mark} {label:<46} {latency:>10} {sent:>12}  {describe_plan(entry)}{note}"


def format_explanation(plan: dict[str, Any]) -> list[str]:
    """Why this plan, from a plan dict (``PlanResult.to_dict()`` or a manifest's ``plan``): the best plan of
    each kind beside the chosen one, the bandwidths where the choice changes, and a forced split's gap.

    Returns:
        Lines for the plan table, the compile output and report.md (empty without an explanation).
    """
    e = plan.get("explanation") or {}
    if not e.get("kinds"):
        return []
    chosen = e["chosen"]
    header = f"  {'best plan of each kind (predicted)':<46} {'latency ms':>10} {'sent/request':>12}  where"
    lines = ["why this plan: the chosen plan (*) beside the best plan of each kind", header, "-" * (len(header) + 30)]
    same = [k["kind"] != "compression" and k["cuts"] == chosen["cuts"] for k in e["kinds"]]
    if not any(same):
        lines.append(_summary_row(chosen, "*"))
    lines += [_summary_row(k, "*" if match else " ") for k, match in zip(e["kinds"], same)]
    optimum = e.get("optimum")
    if optimum and optimum.get("latency_s") is not None and chosen.get("latency_s") is not None:
        gap = chosen["latency_s"] - optimum["latency_s"]
        lines.append(f"forced split: predicted {chosen['latency_s'] * 1e3:.2f} ms; the optimum ({describe_plan(optimum)}) "
                     f"is {optimum['latency_s'] * 1e3:.2f} ms" +
                     ("; the forced split is optimal" if gap <= 1e-12 else
                      f"; gap {gap * 1e3:.2f} ms ({gap / optimum['latency_s']:.0%} slower)"))
    links = plan.get("links") or []
    if "switches" in e and links:
        words = [f"{s['direction']} {format_bandwidth(s['bandwidth_bps'])} the optimum becomes {describe_plan(s['plan'])}"
                 for s in e["switches"]]
        floor = e.get("link_floor_s")
        if floor is not None and not chosen.get("links_used") and not any(s["direction"] == "above"
                                                                          for s in e["switches"]):
            words.append(f"no faster link changes it: a plan using link 0 takes at least {floor * 1e3:.2f} ms even at "
                         f"unlimited bandwidth (its round trip is {links[0]['rtt_s'] * 1e3:g} ms)")
        lines.append(f"what would change it (link 0 is {format_bandwidth(links[0]['bandwidth_bps'])} now): "
                     + ("; ".join(words) if words else "no other plan is optimal at any bandwidth"))
    return lines


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _plan_row(choice, chosen: bool = False) -> str:
    m = choice.metrics
    where = ", ".join(cut_label(a) if sent else "-" for a, sent in zip(choice.after, choice.crossing)) or "-"
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
        header = (f"  {'cut(s) after (- = link unused)':<44} {'mean ms':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'$/M req':>11} {'dcor':>6}")
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
            where = describe_choice(v["plan"], plan.tiers)
            lines.append(f"  {lo} .. {hi}: {where} ({format_ms(v['plan']['predicted']['latency_s'])} ms at "
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
                           "label": ", ".join(cut_label(a) for a in choice.after)})
        files.append(plot_pareto(points, folder / "pareto.png", chosen=0,
                                 evaluated=plan.objective.get("plans_evaluated")))
    if plan.variants:
        files.append(plot_bandwidth_variants(_variant_curves(plan), folder / "variants.png"))
    return files


def _variant_curves(plan: PlanResult) -> list[dict[str, Any]]:
    """Each variant's predicted latency across the whole range (computed by the planner), for the plot."""
    return [{"label": ", ".join(cut_label(c["after"]) for c in v["plan"]["cuts"]),
             "bandwidths_bps": v["curve"]["bandwidth_bps"], "latency_s": v["curve"]["latency_s"],
             "range_bps": tuple(v["range_bps"])}
            for v in plan.variants if v.get("plan") is not None and "curve" in v]
