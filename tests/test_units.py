"""Parsing and formatting of human-written quantities (splitc.units)."""

from __future__ import annotations

import pytest

from splitc.errors import SplitcError
from splitc.units import (
    format_bandwidth,
    format_bytes,
    format_flops,
    format_seconds,
    parse_bandwidth,
    parse_bytes,
    parse_duration,
    parse_flops,
    parse_link_bandwidth,
)


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("20mbps", 20e6),
        ("20 Mbps", 20e6),
        ("20 MBPS", 20e6),
        ("1.5 Gbps", 1.5e9),
        ("250kbps", 250e3),
        ("100 bps", 100.0),
        ("10 Mbit/s", 10e6),
        ("8 Mb/s", 8e6),
        ("100MB/s", 800e6),
        ("68 GB/s", 544e9),
        ("3.35 TB/s", 26.8e12),
        ("1 KB/s", 8e3),
        ("1 MiB/s", 8 * 2**20),
        ("5e6", 5e6),
        (5e6, 5e6),
        (1000, 1000.0),
    ],
)
def test_parse_bandwidth(text: str | float, bps: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("8 GiB", 8 * 2**30),
        ("512MB", 512e6),
        ("4096", 4096),
        (4096, 4096),
        ("10240 MiB", 10240 * 2**20),
        ("1.5 KiB", 1536),
        ("2 kB", 2000),
        ("1 TB", 1e12),
        ("16 gib", 16 * 2**30),
        ("100 B", 100),
    ],
)
def test_parse_bytes(text: str | int, n: float) -> None:
    assert parse_bytes(text) == pytest.approx(n)


@pytest.mark.parametrize(
    ("text", "ops"),
    [
        ("1.28 TFLOPS", 1.28e12),
        ("275 TOPS", 275e12),
        ("472 GFLOP/s", 472e9),
        ("5e12", 5e12),
        (5e12, 5e12),
        ("96 GOPS", 96e9),
        ("1 PFLOPS", 1e15),
        ("3 MFLOPS", 3e6),
    ],
)
def test_parse_flops(text: str | float, ops: float) -> None:
    assert parse_flops(text) == pytest.approx(ops)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1.5 s", 1.5),
        ("300us", 300e-6),
        ("850 µs", 850e-6),
        ("850 μs", 850e-6),  # Greek mu, not the micro sign
        ("12 ns", 12e-9),
        ("2 min", 120.0),
        (0.25, 0.25),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("parse", [parse_bandwidth, parse_bytes, parse_flops, parse_duration])
@pytest.mark.parametrize("bad", ["fast", "-3mbps", "", "-1", "nan", "inf", None, True, [1], float("nan")])
def test_garbage_is_a_user_error(parse, bad) -> None:
    with pytest.raises(SplitcError) as info:
        parse(bad)
    message = str(info.value)
    assert repr(bad) in message  # names the bad value
    assert "valid examples" in message  # shows what would work
    assert "\n" not in message


@pytest.mark.parametrize("bad", ["20 parsecs", "10 Mbq", "0 Mbps", 0, "5 GiB", "   ", "20 Mbps fast"])
def test_bandwidth_rejects_wrong_units_and_zero(bad) -> None:
    with pytest.raises(SplitcError):
        parse_bandwidth(bad)


@pytest.mark.parametrize(
    ("parse", "bad"),
    [(parse_bytes, "8 GB/s"), (parse_flops, "5 Gbps"), (parse_duration, "5 meters"), (parse_duration, "5 m")],
)
def test_wrong_unit_for_the_quantity(parse, bad: str) -> None:
    with pytest.raises(SplitcError, match="unknown unit"):
        parse(bad)


def test_format_examples() -> None:
    assert format_bandwidth(20e6) == "20 Mbps"
    assert format_bandwidth(1.5e9) == "1.5 Gbps"
    assert format_bandwidth(68e9 * 8, as_bytes=True) == "68 GB/s"
    assert format_bytes(102_540_000) == "97.8 MiB"
    assert format_bytes(8 * 2**30) == "8 GiB"
    assert format_bytes(512) == "512 B"
    assert format_seconds(3.21e-3) == "3.21 ms"
    assert format_seconds(850e-6) == "850 µs"
    assert format_seconds(1.5) == "1.5 s"
    assert format_seconds(0) == "0 s"
    assert format_flops(1.28e12) == "1.28 TFLOPS"


def test_format_rounds_up_into_the_next_unit() -> None:
    assert format_seconds(0.99996) == "1 s"
    assert format_seconds(999.96e-6) == "1 ms"
    assert format_bandwidth(999.9e6) == "1 Gbps"
    assert format_bytes(1023.9 * 2**20) == "1 GiB"
    assert format_bytes(1000 * 2**20) == "0.977 GiB"
    assert "e+" not in format_seconds(5000.0)


@pytest.mark.parametrize("bps", [1.0, 250e3, 20e6, 1.5e9, 10e9, 3.3e12])
def test_bandwidth_round_trip(bps: float) -> None:
    assert parse_bandwidth(format_bandwidth(bps)) == pytest.approx(bps, rel=5e-3)
    assert parse_bandwidth(format_bandwidth(bps, as_bytes=True)) == pytest.approx(bps, rel=5e-3)


@pytest.mark.parametrize("n", [1, 512, 4096, 102_540_000, 8 * 2**30, 3e12])
def test_bytes_round_trip(n: float) -> None:
    assert parse_bytes(format_bytes(n)) == pytest.approx(n, rel=5e-3)


@pytest.mark.parametrize("s", [12e-9, 850e-6, 3.21e-3, 0.03, 1.5, 42.0])
def test_seconds_round_trip(s: float) -> None:
    assert parse_duration(format_seconds(s)) == pytest.approx(s, rel=5e-3)


@pytest.mark.parametrize("ops", [236e9, 1.28e12, 989e12, 1.979e15])
def test_flops_round_trip(ops: float) -> None:
    assert parse_flops(format_flops(ops)) == pytest.approx(ops, rel=5e-3)


# -- link bandwidths: a unit is required on the command line, and the rate must be a real link's (issue 16.5)


@pytest.mark.parametrize(("text", "bps"), [("20mbps", 20e6), ("1.5 Gbps", 1.5e9), ("100MB/s", 800e6), ("1kbps", 1e3)])
def test_parse_link_bandwidth(text: str, bps: float) -> None:
    assert parse_link_bandwidth(text) == pytest.approx(bps)


def test_a_bare_number_on_the_command_line_is_refused_naming_what_it_would_mean() -> None:
    with pytest.raises(SplitcError) as info:
        parse_link_bandwidth("20")
    assert "'20' has no unit" in str(info.value) and "20 bit/s" in str(info.value) and "20mbps" in str(info.value)


@pytest.mark.parametrize("bad", ["20bps", "999 bps", "20 Pbps"])
def test_rates_no_real_link_has_are_refused(bad: str) -> None:
    with pytest.raises(SplitcError, match="no real network link"):
        parse_link_bandwidth(bad)


def test_target_files_may_give_bits_per_second_but_not_absurd_rates() -> None:
    assert parse_link_bandwidth(20e6, "uplink bandwidth", require_unit=False) == 20e6
    with pytest.raises(SplitcError, match="uplink bandwidth 20 is 20 bps"):
        parse_link_bandwidth(20, "uplink bandwidth", require_unit=False)


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--bandwidth", "20", "--bandwidth '20' has no unit"),
    ("--bandwidth", "20bps", "no real network link"),
    ("--bandwidth-range", "1:100mbps", "--bandwidth-range '1' has no unit"),
])
def test_cli_refuses_a_bandwidth_without_unit(flag: str, value: str, needle: str, capsys) -> None:
    from tests.cli import run_cli

    code, _, err = run_cli(capsys, "plan", "tests.models:Residual", "-t", "jetson,cloud-gpu", "--input-shape",
                           "1,3,8,8", flag, value)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
