"""Measuring the device's link at run time and picking the bandwidth variant it calls for (live re-split).

A bundle compiled with ``--bandwidth-range`` lists in ``plan.variants`` the plan that wins on each
range of the first link's bandwidth (each a complete bundle: ``"."`` or ``variants/v<i>/``). The
client keeps a :class:`LinkMonitor` fed by its own requests, as Edgent does:

* **round trip**: the time of a v2 health request (``GET /v2/health/live``: no payload, no compute),
  measured at start and again every ``rtt_refresh_s``;
* **throughput of recent transfers**: for each of the last ``window`` remote calls (none older than
  ``max_age_s``), the bytes that crossed the link (request and answer tensors) and the time they took
  on it, which is the call's wall time minus the round trip minus the server's own time
  (``splitc_server_us`` of the answer); the estimate is total bytes over total time (a long transfer
  weighs more than a short one). Client-side serialisation counts as link time, so the estimate
  errs low when transfers take little time (a fast link), which is where the choice matters least;
  with several requests in flight at once they share the link and each sees less of it, so the
  estimate is the throughput one request gets, which is what its plan's latency depends on.

:func:`variant_for` maps an estimate to a variant with the manifest's switch points (the ends of the
ranges) and a hysteresis band, so an estimate hovering at a switch point does not flap between two
plans. Where no call has crossed the link recently, the estimate is None and the client stays on its
current variant; a variant that sends nothing (everything on the device) would never measure
again, so the client then runs one request every ``probe_interval_s`` in the nearest variant that
does use the link (its answer is that variant's exact answer).

Example:
    >>> monitor = LinkMonitor(window=4)
    >>> monitor.rtt_s = 0.010
    >>> monitor.observe(125_000, seconds=0.060, server_s=0.0)   # 1 Mbit in 50 ms on the link
    >>> round(monitor.bandwidth_bps() / 1e6, 1)
    20.0
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Mapping, Sequence

__all__ = ["LinkMonitor", "variant_for"]

_MIN_LINK_S = 20e-6  # below this the link time is noise (loopback): counted as this much


class LinkMonitor:
    """Round trip and recent throughput of the link to the remote tiers.

    Args:
        window: remote calls the throughput estimate uses.
        max_age_s: calls older than this are forgotten.
        rtt_refresh_s: how often the client re-measures the round trip.
        probe_interval_s: while the current variant sends nothing, how often a request runs in a
            variant that does (to keep measuring).
    """

    def __init__(self, window: int = 8, max_age_s: float = 10.0, rtt_refresh_s: float = 5.0,
                 probe_interval_s: float = 2.0) -> None:
        self.window, self.max_age_s = window, max_age_s
        self.rtt_refresh_s, self.probe_interval_s = rtt_refresh_s, probe_interval_s
        self.rtt_s: float | None = None
        self.rtt_measured_at = -math.inf
        self.last_observed = -math.inf
        self._samples: deque[tuple[float, int, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, nbytes: int, seconds: float, server_s: float = 0.0) -> None:
        """Record one remote call: ``nbytes`` crossed the link, the call took ``seconds`` wall time of
        which ``server_s`` on the server."""
        if nbytes <= 0:
            return
        on_link = max(seconds - server_s - (self.rtt_s or 0.0), _MIN_LINK_S)
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, nbytes, on_link))
            self.last_observed = now

    def bandwidth_bps(self) -> float | None:
        """Estimated throughput (bit/s) over the recent calls; None when there is none."""
        oldest = time.monotonic() - self.max_age_s
        with self._lock:
            while self._samples and self._samples[0][0] < oldest:
                self._samples.popleft()
            if not self._samples:
                return None
            total_bytes = sum(b for _, b, _ in self._samples)
            total_s = sum(s for _, _, s in self._samples)
        return 8.0 * total_bytes / total_s

    def reset(self) -> None:
        """Forget the throughput samples (after the link changed)."""
        with self._lock:
            self._samples.clear()

    def snapshot(self) -> dict[str, Any]:
        """The current estimates (for logs and results)."""
        return {"rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1e3, 3),
                "bandwidth_bps": self.bandwidth_bps(), "samples": len(self._samples)}


def _distance(bandwidth_bps: float, lo: float, hi: float) -> float:
    if lo <= bandwidth_bps <= hi:
        return 0.0
    return min(abs(math.log(bandwidth_bps / lo)), abs(math.log(bandwidth_bps / hi)))


def variant_for(variants: Sequence[Mapping[str, Any]], bandwidth_bps: float, current: int | None = None,
                hysteresis: float = 0.1) -> int:
    """Index (into ``variants``, the manifest's ``plan.variants``) of the variant for ``bandwidth_bps``.

    The variant whose ``range_bps`` contains the estimate wins (outside the compiled range: the nearest
    end, as :func:`splitc.runtime.runner.select_variant`). The ``current`` variant is kept while the
    estimate is within ``hysteresis`` (relative) of its range.
    """
    if not bandwidth_bps > 0:
        raise ValueError(f"measured bandwidth must be > 0 bit/s, got {bandwidth_bps}")
    if current is not None:
        lo, hi = variants[current]["range_bps"]
        if lo * (1 - hysteresis) <= bandwidth_bps <= hi * (1 + hysteresis):
            return current
    return min(range(len(variants)), key=lambda i: _distance(bandwidth_bps, *variants[i]["range_bps"]))
