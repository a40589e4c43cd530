"""Human-readable views of plans and bundles (the plan table, report.md, ``inspect``)."""

from __future__ import annotations

from typing import Any

from splitc.compiler.plan import PlanResult
from splitc.units import format_bandwidth, format_bytes, format_seconds

__all__ = ["format_plan_table", "format_plan_report", "format_bundle_summary"]


def _ms(seconds: float | None) -> str:
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
    breakdown = " + ".join([*(f"{t} {_ms(c)}" for t, c in zip(plan.tiers, best.compute_s)),
                            *(f"link{i} {_ms(s)}" for i, s in enumerate(best.link_s))])
    where = ", ".join(f"after {a}" if a else "before the first node (raw input)" for a in best.after) or "none"
    lines.append(f"{'forced' if plan.forced else 'chosen'} plan: cut {where}; predicted {_ms(best.latency_s)} ms "
                 f"= {breakdown} (ms)")
    if best.reach:  # early exits: latencies are expectations over requests; each tier's term is already weighted
        lines.append("early exits: expected latency over requests; share of requests reaching each tier: "
                     + ", ".join(f"{t} {r:.1%}" for t, r in zip(plan.tiers, best.reach)))
    for b, rows in enumerate(plan.ranking):
        shown = rows if top is None else rows[:top]
        lines.append("")
        lines.append(f"boundary {b} ({plan.tiers[b]} | {plan.tiers[b + 1]}): {len(rows)} candidates, "
                     f"best {len(shown)} shown (all with --json)")
        header = f"{'rank':>4} {'cut after':<32} {'crossing':>10} {'tensors':>7} {'best total ms':>13}  plan cuts"
        lines.append(header)
        lines.append("-" * len(header))
        for rank, row in enumerate(shown, start=1):
            after = row["after"] or "<input>"
            total = _ms(row["best_latency_s"]) if row["legal"] else "illegal"
            lines.append(f"{rank:>4} {after[:32]:<32} {format_bytes(row['bytes']):>10} {len(row['tensors']):>7} "
                         f"{total:>13}  {row['plan'] if row['plan'] else row['reason']}")
    return "\n".join(lines)


def format_plan_report(manifest: dict[str, Any], plan: PlanResult) -> str:
    """report.md of a bundle: what was chosen and why, and the candidate table."""
    parts = ["# splitc bundle report", "", format_bundle_summary(manifest), "", "## Why this plan", "",
             "Predicted latency of the best plan achievable with each cut position (roofline compute per tier "
             "+ rtt + bytes/bandwidth per link); the chosen plan is rank 1.", "", "```",
             format_plan_table(plan, top=25), "```", ""]
    return "\n".join(parts)


def format_bundle_summary(manifest: dict[str, Any]) -> str:
    """What ``splitc inspect`` prints."""
    model = manifest["model"]
    source = model["source"].get("path") or model["source"].get("spec")
    lines = [f"model: {source} ({model['nodes']} nodes, {model['flops'] / 1e9:.2f} GFLOPs, "
             f"{format_bytes(model['parameter_bytes'])} parameters, traced with {model['trace']['method']})",
             "inputs: " + ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in model["inputs"]),
             f"predicted latency: {_ms(manifest['plan']['predicted']['latency_s'])} ms"
             + (" (forced split)" if manifest["plan"]["forced"] else "")]
    transfers = {t["from_tier"]: t for t in manifest["transfers"]}
    for tier in manifest["tiers"]:
        target = tier["target"]
        part = manifest["partitions"][tier["partition"]] if tier["partition"] is not None else None
        if part:
            what = (f"{part['file']}: nodes {part['nodes']['first']} .. {part['nodes']['last']} "
                    f"({part['nodes']['count']}), {part['flops'] / 1e9:.2f} GFLOPs, "
                    f"{format_bytes(part['parameter_bytes'])} params, predicted {_ms(part.get('predicted_compute_s'))} ms")
        else:
            what = "runs nothing (relays)"
        lines.append(f"tier {tier['index']} {tier['name']} [{target['kind']}, {target['backend']}]: {what}")
        if tier["index"] in transfers:
            t = transfers[tier["index"]]
            names = ", ".join(f"{x['name']} {x['shape']} {x['dtype']} ({x['encoding']['kind']})" for x in t["tensors"])
            lines.append(f"  -> link {t['link']}: {format_bytes(t['bytes'])} per request, predicted "
                         f"{_ms(t.get('predicted_s'))} ms: {names}")
    for e in manifest.get("exits", []):  # early exits (issue 3)
        lines.append(f"exit {e['index']} at {e['node']} (partition {e['partition']}): answers when {e['score']} >= "
                     f"{e['threshold']:.4f}; exit rate {e['exit_rate']['test']:.1%} on held-out samples, pipeline "
                     f"accuracy {e['accuracy']['test']:.4f} ({e['accuracy']['reference']})")
    verification = manifest.get("verification")
    if verification:
        lines.append(f"verified: {'passed' if verification['passed'] else 'FAILED'} on {verification['samples']} "
                     f"sample(s), max abs error {verification['max_abs_error']:.3g}, "
                     f"max relative error {verification['max_rel_error']:.3g}")
    else:
        lines.append("verified: no (compiled with --no-verify)")
    return "\n".join(lines)
