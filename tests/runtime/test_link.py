"""The link monitor (round trip, throughput of recent transfers) and the variant choice at switch points."""

from __future__ import annotations

import time

import pytest

from splitc.runtime.link import LinkMonitor, variant_for

VARIANTS = [{"range_bps": [1e5, 30e6]}, {"range_bps": [30e6, 111e6]}, {"range_bps": [111e6, 1e9]}]


def test_throughput_is_bytes_over_link_time():
    monitor = LinkMonitor(window=3)
    assert monitor.bandwidth_bps() is None
    monitor.rtt_s = 0.020
    monitor.observe(250_000, seconds=0.130, server_s=0.010)  # 100 ms on the link -> 20 Mbit/s
    assert monitor.bandwidth_bps() == pytest.approx(20e6)
    monitor.observe(125_000, seconds=0.030, server_s=0.0)  # 10 ms -> 100 Mbit/s; together 375 kB in 110 ms
    assert monitor.bandwidth_bps() == pytest.approx(8 * 375_000 / 0.110)
    for _ in range(3):  # the window forgets the oldest calls
        monitor.observe(125_000, seconds=0.030)
    assert monitor.bandwidth_bps() == pytest.approx(100e6)
    monitor.observe(0, seconds=1.0)  # nothing crossed: no sample
    assert monitor.snapshot()["samples"] == 3


def test_old_samples_expire():
    monitor = LinkMonitor(max_age_s=0.05)
    monitor.observe(1000, seconds=0.001)
    assert monitor.bandwidth_bps() is not None
    time.sleep(0.1)
    assert monitor.bandwidth_bps() is None


@pytest.mark.parametrize("bandwidth, current, expected", [
    (5e6, None, 0), (60e6, None, 1), (500e6, None, 2),
    (1e3, None, 0), (5e9, None, 2),                         # outside the compiled range: the nearest end
    (32e6, 0, 0), (29e6, 1, 1),                             # within 10 % of the current range: stay
    (40e6, 0, 1), (20e6, 1, 0), (130e6, 1, 2),
])
def test_variant_for_switch_points(bandwidth, current, expected):
    assert variant_for(VARIANTS, bandwidth, current) == expected


def test_variant_for_refuses_nonsense():
    with pytest.raises(ValueError, match="must be > 0"):
        variant_for(VARIANTS, 0.0)
