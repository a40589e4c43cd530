"""Human-readable views of a bundle: report.md and what ``splitc inspect`` prints."""

from __future__ import annotations

from typing import Any

from splitc.core.accuracy import AccuracyTarget, Verdict
from splitc.core.placement import PlanResult
from splitc.planning.report import format_ms, format_plan_table
from splitc.units import format_bytes

__all__ = ["format_plan_report", "format_bundle_summary", "accuracy_lines", "verification_lines"]


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
             f"predicted latency: {format_ms(manifest['plan']['predicted']['latency_s'])} ms"
             + (" (forced split)" if manifest["plan"]["forced"] else "")]
    transfers = {t["from_tier"]: t for t in manifest["transfers"]}
    for tier in manifest["tiers"]:
        target = tier["target"]
        indices = tier.get("partitions", [] if tier["partition"] is None else [tier["partition"]])
        whats = []
        for index in indices:  # a tier cut into segments around its exits runs several partitions, in order
            part = manifest["partitions"][index]
            whats.append(f"{part['file']}: nodes {part['nodes']['first']} .. {part['nodes']['last']} "
                         f"({part['nodes']['count']}), {part['flops'] / 1e9:.2f} GFLOPs, "
                         f"{format_bytes(part['parameter_bytes'])} params, predicted "
                         f"{format_ms(part.get('predicted_compute_s'))} ms")
        what = "; then ".join(whats) if whats else "runs nothing (relays)"
        lines.append(f"tier {tier['index']} {tier['name']} [{target['kind']}, {target['backend']}]: {what}")
        if tier["index"] in transfers:
            t = transfers[tier["index"]]
            names = ", ".join(f"{x['name']} {x['shape']} {x['dtype']} ({x['encoding']['kind']})" for x in t["tensors"])
            lines.append(f"  -> link {t['link']}: {format_bytes(t['bytes'])} per request, predicted "
                         f"{format_ms(t.get('predicted_s'))} ms: {names}")
            if t.get("defence"):  # --privacy-defence (privacy/defence.py)
                d = t["defence"]
                lines.append(f"     defence: {d['method']} strength {d['strength']:g} ({d['requested']}), trained on "
                             f"{d['trained_on']['samples']} samples of {d['trained_on']['source']}; held-out accuracy "
                             f"{d['held_out_accuracy']:.4f}")
    for e in manifest.get("exits", []):  # early exits (issue 3)
        lines.append(f"exit {e['index']} at {e['node']} (partition {e['partition']}): answers when {e['score']} >= "
                     f"{e['threshold']:.4f}; exit rate {e['exit_rate']['test']:.1%} on held-out samples, pipeline "
                     f"accuracy {e['accuracy']['test']:.4f} ({e['accuracy']['reference']})")
    lines += accuracy_lines(manifest)
    lines += verification_lines(manifest)
    return "\n".join(lines)


def accuracy_lines(manifest: dict[str, Any]) -> list[str]:
    """Every accuracy verdict of the compile (``manifest["accuracy"]``), each with its rule and all its numbers."""
    accuracy = manifest.get("accuracy")
    if not accuracy:
        return []
    target = AccuracyTarget.from_dict(accuracy)
    lines = [f"accuracy ({target.describe()}; {accuracy.get('metric', 'top-1')} on "
             f"{accuracy.get('held_out_samples', 0)} held-out samples, original "
             + (f"{accuracy['reference_accuracy']:.4f}" if accuracy.get("reference_accuracy") is not None else "-")
             + "):"]
    for v in accuracy.get("verdicts", []):
        verdict = Verdict(v["step"], v["accuracy"], v["required"], v["margin"], v.get("margin_rule", "margin"),
                          AccuracyTarget(v.get("accuracy_target", target.value),
                                         v.get("target_kind", target.kind) == "absolute"),
                          v.get("reference_accuracy"), v.get("samples", 0))
        lines.append(f"  {verdict.line()}")
    return lines


def verification_lines(manifest: dict[str, Any]) -> list[str]:
    """The compile-time verification: its verdict and one line per check."""
    verification = manifest.get("verification")
    if not verification:
        return ["verified: no (compiled with --no-verify): 'splitc verify' can still compare it with the original "
                "model, but a compressed bundle's numerics cannot be checked without reference values"]
    status = verification.get("status", "passed" if verification["passed"] else "failed")
    lines = [f"verified: {status.upper()} on {verification['samples']} sample(s)"
             + (f" ({verification['inputs']})" if verification.get("inputs") else "")
             + f", max abs error {verification['max_abs_error']:.3g}, max relative error "
               f"{verification['max_rel_error']:.3g}"]
    for check in verification.get("checks", []):
        state = check["status"] if check["status"] == "passed" else check["status"].upper()
        lines.append(f"  {check['name']}: {state}: {check['detail']}")
    return lines
