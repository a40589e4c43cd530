"""Monetary cost of a plan: what a request costs on each tier, by the tier's price model.

Every tier has a price model (``Target.price["model"]``, validated in
:mod:`splitc.targets.target`). Given the seconds a partition keeps its tier busy per
request (``busy_s``, the planner's predicted compute time on that tier) and the rate of
requests reaching the tier (``rate = rps * reach``: with early exits only a share of
requests gets past each exit), each model yields a *spend rate* ``S`` in USD per second;
per request of the tier it is ``S / rate`` and per request of the whole plan ``S / rps``
(so a plan's cost is the sum over tiers, already weighted by reach)::

    free    S = 0                                           (a device the user owns)
    energy  S = rate * watts * busy_s / 3.6e6 * usd_per_kwh  (marginal energy at TDP)
    vm      S = n * usd_per_hour / 3600,  n = max(1, ceil(rate * busy_s / u))
    faas    S = rate * [gb * bill(busy_s) * usd_per_gb_second + usd_per_request
                        + p_cold * gb * bill(cold_start_s) * usd_per_gb_second]

VM (IaaS): one instance serves at most ``1 / busy_s`` requests/s. Whole instances are
provisioned so that none is busier than the target utilisation ``u`` (price field
``target_utilisation``, default 0.7): Poisson arrivals queue, and for an M/D/1 server
the mean wait is ``u / (2 (1 - u)) * busy_s`` -- 1.2 service times at 0.7, 4.5 at 0.9.
Scaling is per whole instance, so one request an hour pays a whole instance-hour:
that is what FaaS avoids. A tier that runs nothing (``busy_s == 0``) costs nothing.

FaaS: duration is billed in steps (``billing_granularity``, 1 ms on AWS Lambda) on the
configured memory ``memory_mb`` (``gb = memory_mb / 1024``, AWS's convention), plus a
fee per request. CPU is allocated in proportion to memory,
``vcpus = min(memory_mb / mb_per_vcpu, max_vcpus)`` (:func:`faas_vcpus`); a FaaS
target's peak FLOP/s describe the configured size, so ``busy_s`` is the time *at*
``memory_mb``. The partition must fit in ``memory_mb`` (times the target's usable
fraction, as the planner's memory check). Cold starts (:func:`cold_start`): with
Poisson arrivals at ``rate`` and idle instances reclaimed after ``keep_alive`` (default
5 min), a request is cold when the gap since the previous one exceeds the keep-alive,
``p_cold = exp(-rate * keep_alive)``. That is a single-warm-instance approximation:
it ignores the cold starts of extra instances when concurrency ``rate * busy_s``
exceeds one. A cold request adds ``cold_start_s`` of latency (expected added latency
``p_cold * cold_start_s``) and the init time is billed (AWS bills the INIT phase of
on-demand functions since August 2025).

Cost indifference point (:func:`indifference_rps`): FaaS costs a constant ``c_F`` per
request (falling slightly with rate through ``p_cold``); a VM costs ``n P / (3600 r)``,
a sawtooth that falls as ``1/r`` and jumps at every extra instance, never below its
fully loaded floor ``P busy_s / (3600 u)``. The first crossing therefore lies on the
first tooth (one instance, ``r <= u / busy_s``), at ``r* = P / (3600 c_F)`` when cold
starts are negligible; if FaaS is cheaper at the end of the first tooth, it is cheaper
at every rate. Above ``r*`` the VM is cheaper except just after instance steps, where
the sawtooth can rise above ``c_F`` again -- the function returns the first crossing.

>>> from splitc.targets.target import TargetRegistry
>>> registry = TargetRegistry.with_builtins()
>>> vm, faas = registry.resolve("c6i-large"), registry.resolve("lambda")
>>> float(tier_cost(vm, 0.05, rate_rps=10.0)[0]) * 1e6  # $0.085/h, 1 instance, 10 req/s  # doctest: +ELLIPSIS
2.361...
>>> round(indifference_rps(vm, 0.1, faas, 0.05), 2)  # VM cheaper from ~2.77 req/s
2.77
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from splitc.errors import SplitcError
from splitc.units import format_bytes

if TYPE_CHECKING:
    from splitc.targets.target import Target

__all__ = [
    "DEFAULT_VM_UTILISATION",
    "DEFAULT_KEEP_ALIVE_S",
    "DEFAULT_BILLING_GRANULARITY_S",
    "ColdStart",
    "TierCost",
    "PlanCost",
    "cold_start",
    "tier_cold_start",
    "faas_vcpus",
    "vm_instances",
    "tier_cost",
    "tier_plan_cost",
    "plan_cost",
    "plan_usd_per_request",
    "indifference_rps",
]

#: Busy share up to which one VM instance is loaded before another is added.
DEFAULT_VM_UTILISATION = 0.7
#: Idle seconds before a FaaS provider reclaims a warm instance (low end of AWS's observed 5-15 min).
DEFAULT_KEEP_ALIVE_S = 300.0
#: FaaS duration billing step (AWS Lambda: 1 ms).
DEFAULT_BILLING_GRANULARITY_S = 1e-3

_MIB = 2**20
_MB_PER_GB = 1024.0  # AWS bills memory_mb / 1024 GB
_EPS = 1e-9  # slack so that float noise (3 * 0.001 = 0.0030000000000000005) does not add a step
_AWS_DEFAULT_CONCURRENCY = 1000
_RPS_HINT = "pass a positive request rate, e.g. --rps 10"


# --------------------------------------------------------------------------- cold starts


@dataclass(frozen=True)
class ColdStart:
    """Cold starts of a FaaS tier under Poisson arrivals (arrays broadcast from the inputs).

    Attributes:
        share: share of requests that find no warm instance, ``exp(-rate * keep_alive)``.
        mean_added_s: expected latency added per request, ``share * cold_start_s``.
        cold_start_s: latency of one cold start.
    """

    share: np.ndarray
    mean_added_s: np.ndarray
    cold_start_s: float

    def added_at_quantile(self, q: float) -> np.ndarray:
        """Latency added at quantile ``q`` of the latency distribution.

        Cold requests are the slowest ones (a cold start dwarfs the spread of warm
        latencies), so quantile ``q`` is hit exactly when more than ``1 - q`` of the
        requests are cold: the p50 is unaffected while ``share < 0.5``, the p99 while
        ``share < 0.01``.

        Args:
            q: the quantile, in (0, 1).

        Returns:
            ``cold_start_s`` where ``share > 1 - q``, else 0.
        """
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {q}")
        return np.where(self.share > 1.0 - q, self.cold_start_s, 0.0)


def cold_start(rate_rps: np.ndarray | float, keep_alive_s: float, cold_start_s: float) -> ColdStart:
    """Share of cold requests and added latency, single-warm-instance approximation.

    With Poisson arrivals at ``rate_rps`` the gap before a request is exponential, so
    the request finds the (single) instance reclaimed with probability
    ``exp(-rate * keep_alive)``. Extra instances started under concurrency, and their
    own cold starts, are not modelled.

    Args:
        rate_rps: requests per second reaching the function (>= 0), scalar or array.
        keep_alive_s: idle seconds before a warm instance is reclaimed.
        cold_start_s: latency added by a cold start.

    Returns:
        A :class:`ColdStart` with arrays shaped like ``rate_rps``.
    """
    rate = np.asarray(rate_rps, dtype=np.float64)
    share = np.exp(-rate * keep_alive_s)
    return ColdStart(share=share, mean_added_s=share * cold_start_s, cold_start_s=float(cold_start_s))


def tier_cold_start(target: Target, rate_rps: np.ndarray | float) -> ColdStart | None:
    """Cold starts of a tier at the rate reaching it, with its price fields and defaults.

    Args:
        target: any tier.
        rate_rps: requests per second reaching it (>= 0), scalar or array.

    Returns:
        A :class:`ColdStart` for a ``faas`` tier (keep-alive from its ``keep_alive``
        price field, default :data:`DEFAULT_KEEP_ALIVE_S`); None for other models,
        which have no cold starts while serving (VMs are assumed long-running).
    """
    if target.price.get("model") != "faas":
        return None
    price = target.price
    return cold_start(rate_rps, price.get("keep_alive_s", DEFAULT_KEEP_ALIVE_S), price["cold_start_s"])


# --------------------------------------------------------------------------- per-model spend


def faas_vcpus(target: Target, memory_mb: float | None = None) -> float:
    """vCPUs a FaaS function gets at ``memory_mb`` (default: the configured size).

    CPU is allocated in proportion to memory up to a cap; compute-bound time scales
    roughly as ``1 / vcpus`` (memory-bound parts less), which is why a FaaS target's
    peaks describe its configured ``memory_mb``.

    Args:
        target: a target with a ``faas`` price model.
        memory_mb: the memory setting; None = the target's ``memory_mb``.

    Returns:
        ``min(memory_mb / mb_per_vcpu, max_vcpus)``.
    """
    price = _price_of(target, "faas")
    mb = price["memory_mb"] if memory_mb is None else float(memory_mb)
    return min(mb / price["mb_per_vcpu"], price["max_vcpus"])


def vm_instances(busy_s: np.ndarray | float, rate_rps: np.ndarray | float,
                 utilisation: float = DEFAULT_VM_UTILISATION) -> np.ndarray:
    """Whole VM instances needed so that none is busier than ``utilisation``.

    Args:
        busy_s: seconds one request keeps an instance busy (0 = the tier runs nothing).
        rate_rps: requests per second reaching the tier.
        utilisation: target busy share of an instance, in (0, 1].

    Returns:
        ``max(1, ceil(rate * busy_s / utilisation))``, and 0 where ``busy_s == 0``.
    """
    busy = np.asarray(busy_s, dtype=np.float64)
    load = np.asarray(rate_rps, dtype=np.float64) * busy / utilisation
    return np.where(busy > 0, np.maximum(1.0, np.ceil(load - _EPS)), 0.0)


@dataclass(frozen=True)
class _Spend:
    """Arrays of one tier's cost for many (busy, rate) pairs; see :class:`TierCost`."""

    usd_per_s: np.ndarray
    instances: np.ndarray
    utilisation: np.ndarray
    gb_seconds: np.ndarray
    cold_share: np.ndarray
    cold_latency_s: np.ndarray


def _billed(seconds: np.ndarray, step: float) -> np.ndarray:
    """Durations rounded up to the billing step (no rounding when the step is 0)."""
    if step <= 0:
        return seconds
    return np.ceil(seconds / step - _EPS) * step


def _spend(target: Target, busy: np.ndarray, rate: np.ndarray, memory: np.ndarray | None,
           infeasible: str) -> _Spend:
    """Spend rate (USD/s) and its breakdown for one tier; arrays broadcast together."""
    model = target.price.get("model")
    zeros = np.zeros(np.broadcast(busy, rate).shape)
    if model == "free":
        return _Spend(zeros, zeros, zeros, zeros, zeros, zeros)
    if model == "energy":
        price = target.price
        usd = rate * price["watts"] * busy / 3.6e6 * price["usd_per_kwh"]
        return _Spend(usd, zeros, zeros, zeros, zeros, zeros)
    if model == "vm":
        u = target.price.get("target_utilisation", DEFAULT_VM_UTILISATION)
        n = vm_instances(busy, rate, u) + zeros
        with np.errstate(divide="ignore", invalid="ignore"):
            utilisation = np.where(n > 0, rate * busy / np.where(n > 0, n, 1.0), 0.0)
        return _Spend(n * target.price["usd_per_hour"] / 3600.0, n, utilisation, zeros, zeros, zeros)
    if model == "faas":
        return _faas_spend(target, busy, rate, memory, infeasible, zeros)
    raise SplitcError(f"target '{target.name}': unknown price model {model!r}",
                      hint="valid models: free, energy, vm, faas")


def _faas_spend(target: Target, busy: np.ndarray, rate: np.ndarray, memory: np.ndarray | None,
                infeasible: str, zeros: np.ndarray) -> _Spend:
    price = target.price
    step = price.get("billing_granularity_s", DEFAULT_BILLING_GRANULARITY_S)
    gb = price["memory_mb"] / _MB_PER_GB
    cold = tier_cold_start(target, rate)
    used = busy > 0  # a tier that runs nothing is not deployed: no fee, no cold start
    billed = _billed(busy, step)
    gb_s = np.where(used, gb * (billed + cold.share * float(_billed(np.float64(price["cold_start_s"]), step))), 0.0)
    per_request = gb_s * price["usd_per_gb_second"] + np.where(used, price["usd_per_request"], 0.0)
    usd = rate * per_request
    if memory is not None:
        usd = np.where(_faas_fits(target, memory, infeasible), usd, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        utilisation = np.where(used, busy / np.where(used, billed, 1.0), 0.0)
    return _Spend(usd + zeros, rate * busy + zeros, utilisation + zeros, gb_s + zeros,
                  np.where(used, cold.share, 0.0) + zeros, np.where(used, cold.mean_added_s, 0.0) + zeros)


def _faas_fits(target: Target, memory: np.ndarray, infeasible: str) -> np.ndarray:
    """Whether each partition fits the configured function memory; raises unless ``infeasible == "inf"``."""
    price = target.price
    usable = target.usable_memory_fraction
    limit = min(price["memory_mb"] * _MIB, target.memory_bytes) * usable
    fits = memory <= limit
    if infeasible == "inf" or bool(np.all(fits)):
        return fits
    worst = float(np.max(memory))
    most = price["max_memory_mb"] * _MIB * usable
    if worst > most:
        raise SplitcError(
            f"target '{target.name}': the partition needs {format_bytes(worst)}, more than a function can hold "
            f"({format_bytes(most)} usable at the maximum memory setting of {price['max_memory_mb']:g} MB)",
            hint="move the cut so that less of the model runs on the FaaS tier, or use a VM tier")
    raise SplitcError(
        f"target '{target.name}': the partition needs {format_bytes(worst)} but memory_mb "
        f"{price['memory_mb']:g} leaves {format_bytes(limit)} usable",
        hint=f"raise memory_mb in a --targets-file copy of the target (up to {price['max_memory_mb']:g})")


# --------------------------------------------------------------------------- public API


def _check_rate(rate: np.ndarray, what: str = "request rate") -> None:
    if rate.size == 0 or not np.all(np.isfinite(rate)) or np.any(rate <= 0):
        bad = rate[~(np.isfinite(rate) & (rate > 0))] if rate.size else rate
        shown = f"{float(bad.flat[0])!r}" if bad.size else "nothing"
        raise SplitcError(f"{what} must be a positive finite number of requests/s, got {shown}", hint=_RPS_HINT)


def _check_busy(busy: np.ndarray) -> None:
    if not np.all(np.isfinite(busy)) or np.any(busy < 0):
        raise ValueError("busy seconds must be finite and >= 0")


def _price_of(target: Target, model: str) -> dict[str, Any]:
    if target.price.get("model") != model:
        raise SplitcError(f"target '{target.name}' has a {target.price.get('model')!r} price model, not {model!r}",
                          hint=f"pick a target whose price model is '{model}' (see 'splitc targets')")
    return target.price


def tier_cost(target: Target, busy_s: np.ndarray | float, rate_rps: np.ndarray | float,
              memory_bytes: np.ndarray | float | None = None, *, infeasible: str = "raise") -> np.ndarray:
    """USD per request *reaching the tier*, for many partitions at once.

    Args:
        target: the tier.
        busy_s: seconds one request keeps the tier busy (its partition's compute time), >= 0;
            scalar or array.
        rate_rps: requests per second reaching the tier (``rps * reach``), > 0; broadcasts
            with ``busy_s``.
        memory_bytes: the partition's memory, checked against a FaaS tier's configured
            memory; None = not checked.
        infeasible: ``"raise"`` (SplitcError when a partition does not fit) or ``"inf"``
            (cost ``inf`` for those entries, for a planner masking plans).

    Returns:
        A float array of the broadcast shape (at least 1-D).

    Raises:
        SplitcError: a rate that is not positive and finite, an unknown price model, or
            (``infeasible="raise"``) a partition above a FaaS tier's memory.
    """
    busy = np.atleast_1d(np.asarray(busy_s, dtype=np.float64))
    rate = np.atleast_1d(np.asarray(rate_rps, dtype=np.float64))
    _check_rate(rate)
    _check_busy(busy)
    memory = None if memory_bytes is None else np.asarray(memory_bytes, dtype=np.float64)
    return _spend(target, busy, rate, memory, infeasible).usd_per_s / rate


def tier_plan_cost(target: Target, busy_s: np.ndarray | float, reach: np.ndarray | float, rps: float,
                   memory_bytes: np.ndarray | float | None = None, *, infeasible: str = "raise") -> np.ndarray:
    """USD per request *of the plan* spent on one tier (already weighted by reach), vectorised.

    Unlike ``reach * tier_cost(...)`` this is defined when no request reaches the tier
    (``reach == 0``): a VM holding a partition still costs its instance.

    Args:
        target: the tier.
        busy_s: seconds one request reaching the tier keeps it busy, >= 0 (0 = runs nothing).
        reach: share of the plan's requests reaching the tier, in [0, 1]; broadcasts with ``busy_s``.
        rps: requests per second entering the plan, > 0.
        memory_bytes: the partition's memory (FaaS memory check); None = not checked.
        infeasible: ``"raise"`` or ``"inf"``, as in :func:`tier_cost`.

    Returns:
        A float array of the broadcast shape (at least 1-D).
    """
    _check_rate(np.asarray([rps], dtype=np.float64), "--rps")
    busy = np.atleast_1d(np.asarray(busy_s, dtype=np.float64))
    shares = np.atleast_1d(np.asarray(reach, dtype=np.float64))
    _check_busy(busy)
    if np.any(~np.isfinite(shares)) or np.any(shares < 0) or np.any(shares > 1):
        raise SplitcError(f"reach must be shares in [0, 1], got {shares.tolist()[:5]}")
    memory = None if memory_bytes is None else np.asarray(memory_bytes, dtype=np.float64)
    return _spend(target, busy, rps * shares, memory, infeasible).usd_per_s / rps


@dataclass(frozen=True)
class TierCost:
    """One tier's share of a plan's cost.

    Attributes:
        tier: target name.
        model: price model.
        reach: share of the plan's requests that reach the tier.
        rate_rps: requests per second reaching it (``rps * reach``).
        busy_s: seconds one request keeps it busy.
        usd_per_request: USD per request *of the plan* (already weighted by reach).
        usd_per_tier_request: USD per request reaching the tier (None when none reach it).
        instances: VM instances provisioned; for FaaS the expected concurrent executions
            (Little's law, ``rate * busy_s``); 0 otherwise.
        utilisation: VM: busy share of each instance; FaaS: busy / billed duration; else 0.
        gb_seconds: FaaS GB-seconds billed per tier request (cold init included), else 0.
        cold_share: FaaS share of cold requests, else 0.
        cold_latency_s: FaaS expected latency added per tier request by cold starts.
        notes: one line on how the figure arises.
    """

    tier: str
    model: str
    reach: float
    rate_rps: float
    busy_s: float
    usd_per_request: float
    usd_per_tier_request: float | None
    instances: float
    utilisation: float
    gb_seconds: float
    cold_share: float
    cold_latency_s: float
    notes: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PlanCost:
    """Monetary cost of one plan at a request rate.

    Attributes:
        rps: requests per second entering the plan.
        tiers: per-tier costs, in chain order.
        usd_per_request: total USD per request of the plan.
        usd_per_million: the same per million requests.
        cold_latency_s: expected latency added per plan request by FaaS cold starts.
    """

    rps: float
    tiers: tuple[TierCost, ...]
    usd_per_request: float
    usd_per_million: float
    cold_latency_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"rps": self.rps, "usd_per_request": self.usd_per_request,
                "usd_per_million": self.usd_per_million, "cold_latency_s": self.cold_latency_s,
                "tiers": [t.to_dict() for t in self.tiers]}


def _note(target: Target, spend: _Spend, busy: float, rate: float) -> str:
    model = target.price["model"]
    if busy == 0:
        return "runs nothing: not deployed, no cost"
    if model == "free":
        return "owned device: no marginal cost"
    if model == "energy":
        return f"{target.price['watts']:g} W x {busy:.4g} s at ${target.price['usd_per_kwh']:g}/kWh"
    if model == "vm":
        u = target.price.get("target_utilisation", DEFAULT_VM_UTILISATION)
        return (f"{int(spend.instances[0])} x ${target.price['usd_per_hour']:g}/h instance(s), "
                f"{100 * spend.utilisation[0]:.0f}% busy (target {100 * u:.0f}%)")
    share = float(spend.cold_share[0])
    cold = "<0.01%" if share < 1e-4 else f"{100 * share:.2g}%"
    note = (f"{spend.gb_seconds[0]:.4g} GB-s/request at {target.price['memory_mb']:g} MB, "
            f"{cold} cold, concurrency {rate * busy:.3g}")
    if rate * busy > _AWS_DEFAULT_CONCURRENCY:
        note += f" (above AWS's default limit of {_AWS_DEFAULT_CONCURRENCY} concurrent executions)"
    return note


def _per_tier(values: Sequence[float] | np.ndarray | None, k: int, what: str, default: float) -> np.ndarray:
    if values is None or len(values) == 0:
        return np.full(k, default)
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (k,):
        raise ValueError(f"{what} has {array.size} values for {k} tiers")
    return array


def plan_cost(tiers: Sequence[Target], compute_s: Sequence[float], reach: Sequence[float] | None,
              rps: float, memory_bytes: Sequence[float] | None = None) -> PlanCost:
    """Cost of one plan, tier by tier (fields of :class:`~splitc.core.placement.PlanChoice`).

    Args:
        tiers: the chain's targets.
        compute_s: predicted busy seconds per tier (0 = the tier runs nothing).
        reach: share of requests reaching each tier; None or empty = all of them.
        rps: requests per second entering the plan (``--rps``).
        memory_bytes: memory per tier (FaaS memory check); None = not checked.

    Returns:
        The :class:`PlanCost`.

    Raises:
        SplitcError: ``rps`` not positive and finite, a reach outside [0, 1], an unknown
            price model, or a partition too big for a FaaS tier.
    """
    rate_check = np.asarray([rps], dtype=np.float64)
    _check_rate(rate_check, "--rps")
    k = len(tiers)
    busy = _per_tier(compute_s, k, "compute_s", 0.0)
    shares = _per_tier(reach, k, "reach", 1.0)
    if np.any(~np.isfinite(shares)) or np.any(shares < 0) or np.any(shares > 1):
        raise SplitcError(f"reach must be shares in [0, 1], got {shares.tolist()}")
    _check_busy(busy)
    memory = None if memory_bytes is None else _per_tier(memory_bytes, k, "memory_bytes", 0.0)
    parts = []
    for t, target in enumerate(tiers):
        rate = float(rps * shares[t])
        spend = _spend(target, busy[t:t + 1], np.array([rate]),
                       None if memory is None else memory[t:t + 1], "raise")
        usd_s = float(spend.usd_per_s[0])
        parts.append(TierCost(
            tier=target.name, model=target.price["model"], reach=float(shares[t]), rate_rps=rate,
            busy_s=float(busy[t]), usd_per_request=usd_s / rps,
            usd_per_tier_request=usd_s / rate if rate > 0 else None,
            instances=float(spend.instances[0]), utilisation=float(spend.utilisation[0]),
            gb_seconds=float(spend.gb_seconds[0]), cold_share=float(spend.cold_share[0]),
            cold_latency_s=float(spend.cold_latency_s[0]), notes=_note(target, spend, float(busy[t]), rate)))
    total = sum(p.usd_per_request for p in parts)
    cold = sum(p.reach * p.cold_latency_s for p in parts)
    return PlanCost(rps=float(rps), tiers=tuple(parts), usd_per_request=total,
                    usd_per_million=total * 1e6, cold_latency_s=cold)


def plan_usd_per_request(tiers: Sequence[Target], compute_s: np.ndarray, reach: np.ndarray | None,
                         rps: float, memory_bytes: np.ndarray | None = None) -> np.ndarray:
    """USD per plan request for many plans at once (the planner's cost objective).

    Args:
        tiers: the chain's ``k`` targets.
        compute_s: ``[P, k]`` busy seconds of each plan on each tier.
        reach: ``[P, k]`` (or ``[k]``) share of requests reaching each tier; None = 1.
        rps: requests per second entering the plan.
        memory_bytes: ``[P, k]`` memory per tier; a FaaS partition that does not fit
            makes that plan's cost ``inf`` (masked, not raised).

    Returns:
        ``[P]`` USD per request.
    """
    busy = np.atleast_2d(np.asarray(compute_s, dtype=np.float64))
    shares = np.ones_like(busy) if reach is None else np.broadcast_to(np.asarray(reach, np.float64), busy.shape)
    memory = None if memory_bytes is None else np.broadcast_to(np.asarray(memory_bytes, np.float64), busy.shape)
    total = np.zeros(busy.shape[0])
    for t, target in enumerate(tiers):
        total += tier_plan_cost(target, busy[:, t], shares[:, t], rps,
                                None if memory is None else memory[:, t], infeasible="inf")
    return total


def indifference_rps(vm_target: Target, vm_busy_s: float, faas_target: Target, faas_busy_s: float,
                     memory_bytes: float | None = None) -> float:
    """Request rate above which the VM is cheaper than FaaS for the same partition.

    The VM's per-request cost is a sawtooth in the rate (whole instances); the first
    crossing lies on its first tooth (see the module docstring), found by a log-spaced
    scan for the first sign change and refined with Brent's method (the cold-start term
    makes the FaaS cost rate-dependent, so there is no closed form in general).

    Args:
        vm_target: a target with a ``vm`` price model.
        vm_busy_s: the partition's seconds per request on it (> 0).
        faas_target: a target with a ``faas`` price model.
        faas_busy_s: the partition's seconds per request on it (> 0).
        memory_bytes: the partition's memory (FaaS memory check); None = not checked.

    Returns:
        The first rate (requests/s) where both cost the same; ``math.inf`` when FaaS is
        cheaper at every rate.
    """
    _price_of(vm_target, "vm")
    _price_of(faas_target, "faas")
    if not (vm_busy_s > 0 and faas_busy_s > 0 and math.isfinite(vm_busy_s) and math.isfinite(faas_busy_s)):
        raise ValueError("busy seconds must be finite and > 0 on both tiers")
    first_tooth = vm_target.price.get("target_utilisation", DEFAULT_VM_UTILISATION) / vm_busy_s

    def gap(rate: np.ndarray | float) -> np.ndarray:
        vm = tier_cost(vm_target, vm_busy_s, rate)
        return vm - tier_cost(faas_target, faas_busy_s, rate, memory_bytes)

    # VM cost grows as 1/rate towards 0 and FaaS cost is bounded, so the far left is positive.
    rates = np.geomspace(first_tooth * 1e-12, first_tooth, 4097)
    gaps = gap(rates)
    below = np.flatnonzero(gaps <= 0)
    if below.size == 0:
        return math.inf
    i = int(below[0])
    if gaps[i] == 0 or i == 0:
        return float(rates[i])
    from scipy.optimize import brentq  # here, not at import: scipy.optimize costs ~0.3 s of every 'splitc plan'

    return float(brentq(lambda r: float(gap(r)[0]), rates[i - 1], rates[i], xtol=1e-12, rtol=1e-12))
