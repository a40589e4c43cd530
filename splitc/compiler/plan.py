"""The plan is data: where each tier's partition starts and ends, what crosses each
link, and the predicted latency breakdown. ``plan`` never mutates the graph; the
plan is written into the manifest in full, so a bundle explains itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LinkSpec", "PlanChoice", "PlanResult"]


@dataclass(frozen=True)
class LinkSpec:
    """The network link between tier ``index`` and tier ``index + 1``."""

    index: int
    from_tier: str
    to_tier: str
    bandwidth_bps: float
    rtt_s: float
    source: str  # "flag" or "<tier> default uplink"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "from": self.from_tier, "to": self.to_tier,
                "bandwidth_bps": self.bandwidth_bps, "rtt_s": self.rtt_s, "source": self.source}


@dataclass(frozen=True)
class PlanChoice:
    """One complete placement and its predicted cost.

    Attributes:
        cuts: cut index per tier boundary (see :mod:`splitc.passes.candidates`).
        after: the last node before each cut (None = the cut ships the raw inputs).
        crossing: tensor names crossing each cut.
        crossing_bytes: bytes crossing each cut.
        compute_s: predicted compute seconds per tier.
        link_s: predicted seconds per link (0 when nothing downstream runs).
        memory_bytes: predicted memory per tier.
        latency_s: end-to-end predicted latency (expected over requests when there are exits).
        reach: with early exits, the share of requests reaching each tier (empty without exits).
        metrics: the other objectives of this plan (:meth:`splitc.compiler.objectives.PlanMetrics.row`):
            p50_s, p99_s, usd_per_request, usd_per_million, tier_usd_per_request, dcor; empty when
            not evaluated.
    """

    cuts: tuple[int, ...]
    after: tuple[str | None, ...]
    crossing: tuple[tuple[str, ...], ...]
    crossing_bytes: tuple[int, ...]
    compute_s: tuple[float, ...]
    link_s: tuple[float, ...]
    memory_bytes: tuple[float, ...]
    latency_s: float
    reach: tuple[float, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        extra: dict[str, Any] = {}
        if m.get("usd_per_request") is not None:
            extra["cost"] = {"usd_per_request": m["usd_per_request"], "usd_per_million": m["usd_per_million"],
                             "tier_usd_per_request": m["tier_usd_per_request"]}
        if m.get("dcor") is not None:
            extra["privacy"] = {"dcor": m["dcor"]}
        return {
            "cuts": [{"index": c, "after": a, "tensors": list(t), "bytes": b}
                     for c, a, t, b in zip(self.cuts, self.after, self.crossing, self.crossing_bytes)],
            "predicted": {
                "latency_s": self.latency_s,
                "compute_s": list(self.compute_s),
                "transfer_s": list(self.link_s),
                "memory_bytes": list(self.memory_bytes),
                **({"reach": list(self.reach)} if self.reach else {}),
                **({"p50_s": m["p50_s"], "p99_s": m["p99_s"]} if "p50_s" in m else {}),
            },
            **extra,
        }

    def describe(self) -> str:
        """The cuts in words, for logs and errors."""
        return ", ".join(f"after {a or 'input'}" for a in self.after) or "no cut"


@dataclass
class PlanResult:
    """What the plan step returns.

    Attributes:
        tiers: tier names in chain order.
        links: one :class:`LinkSpec` per link.
        best: the chosen plan.
        forced: whether the cuts came from ``--split``.
        alternatives: next-best distinct plans, best first.
        ranking: per boundary, one row per candidate cut with the best latency achievable there.
        objective: what was optimised and under which constraints (name, weights, slo_s, rps,
            max_dcor, workload, plans evaluated, exhaustive).
        pareto: the plans no other plan beats on every objective (latency, cost and, with a
            privacy profile, leakage), fastest first; the chosen plan is among them.
        variants: with ``--bandwidth-range``, the plans optimal across the range of the first
            link's bandwidth, each with the range where it wins (see passes/plan.py).
    """

    tiers: list[str]
    links: list[LinkSpec]
    best: PlanChoice
    forced: bool
    alternatives: list[PlanChoice] = field(default_factory=list)
    ranking: list[list[dict[str, Any]]] = field(default_factory=list)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "latency"})
    pareto: list[PlanChoice] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, include_ranking: bool = False) -> dict[str, Any]:
        out = {
            "objective": self.objective.get("name", "latency"),
            "objective_settings": dict(self.objective),
            "forced": self.forced,
            "tiers": list(self.tiers),
            "links": [link.to_dict() for link in self.links],
            **self.best.to_dict(),
        }
        if self.pareto:
            out["pareto"] = [p.to_dict() for p in self.pareto]
        if self.variants:
            out["variants"] = [{k: v for k, v in entry.items() if k != "curve"} for entry in self.variants]
        if include_ranking:
            out["ranking"] = self.ranking
        return out
