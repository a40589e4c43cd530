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

    def to_dict(self) -> dict[str, Any]:
        return {
            "cuts": [{"index": c, "after": a, "tensors": list(t), "bytes": b}
                     for c, a, t, b in zip(self.cuts, self.after, self.crossing, self.crossing_bytes)],
            "predicted": {
                "latency_s": self.latency_s,
                "compute_s": list(self.compute_s),
                "transfer_s": list(self.link_s),
                "memory_bytes": list(self.memory_bytes),
                **({"reach": list(self.reach)} if self.reach else {}),
            },
        }


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
    """

    tiers: list[str]
    links: list[LinkSpec]
    best: PlanChoice
    forced: bool
    alternatives: list[PlanChoice] = field(default_factory=list)
    ranking: list[list[dict[str, Any]]] = field(default_factory=list)

    def to_dict(self, include_ranking: bool = False) -> dict[str, Any]:
        out = {
            "objective": "latency",
            "forced": self.forced,
            "tiers": list(self.tiers),
            "links": [link.to_dict() for link in self.links],
            **self.best.to_dict(),
        }
        if include_ranking:
            out["ranking"] = self.ranking
        return out
