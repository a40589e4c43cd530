"""Human-written quantities in, SI base units out (and back).

Target files and command-line flags carry quantities the way spec sheets write
them: ``"20 Mbps"``, ``"68 GB/s"``, ``"8 GiB"``, ``"1.28 TFLOPS"``, ``"15us"``.
Each ``parse_*`` function turns one such value into a float in SI base units
(bits/s, bytes, operations/s, seconds) and raises :class:`SplitcError` naming the
bad value and showing valid examples. Bare numbers are taken in the base unit.
The ``format_*`` functions go the other way for reports and tables.

>>> parse_bandwidth("20 Mbps")
20000000.0
>>> parse_bandwidth("100MB/s")  # bytes per second, times 8
800000000.0
>>> parse_bytes("8 GiB")
8589934592.0
>>> parse_flops("1.28 TFLOPS")
1280000000000.0
>>> parse_duration("300us")
0.0003
>>> format_bandwidth(20e6), format_bytes(102_540_000), format_seconds(850e-6)
('20 Mbps', '97.8 MiB', '850 µs')
"""

from __future__ import annotations

import math
import re

from splitc.errors import SplitcError

__all__ = [
    "parse_bandwidth",
    "parse_link_bandwidth",
    "LINK_BANDWIDTH_RANGE_BPS",
    "parse_bytes",
    "parse_flops",
    "parse_duration",
    "format_bandwidth",
    "format_bytes",
    "format_flops",
    "format_seconds",
]

_NUMBER_UNIT = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[^\d\s].*?)?\s*$"
)

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
_IEC = {"ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}

_BANDWIDTH_EXAMPLES = "valid examples: '20 Mbps', '1.5 Gbps', '250kbps', '100 MB/s', '68 GB/s' or a number of bits/s"
_BYTES_EXAMPLES = "valid examples: '8 GiB', '512 MB', '4096' (bytes)"
_FLOPS_EXAMPLES = "valid examples: '1.28 TFLOPS', '275 TOPS', '472 GFLOP/s' or a number like '5e12'"
_DURATION_EXAMPLES = "valid examples: '20ms', '1.5 s', '300us', '850 µs' or a number of seconds"

_BIT_RATE = re.compile(r"^(?P<p>[kmgtp]?)(?:bps|bits?/s)$")  # matched on the lower-cased unit
_BIT_RATE_SHORT = re.compile(r"^(?P<p>[kKmMgGtTpP]?)b/s$")  # lower-case b only: 'Mb/s'
_BYTE_RATE = re.compile(r"^(?P<p>[kKmMgGtTpP]i?)?(?:B|[Bb]ytes?)/s$")  # capital B: 'MB/s'
_BYTES = re.compile(r"^(?P<p>[kmgtp]i?)?(?:b|bytes?)$")
_FLOPS = re.compile(r"^(?P<p>[kmgtp]?)(?:flops|flop/s|ops|op/s)$")
_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "h": 3600.0,
}


def _split(value: object, what: str, examples: str) -> tuple[float, str]:
    """Split ``value`` into (number, unit text); a bare number has unit ``""``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SplitcError(f"invalid {what} {value!r}: expected a number or a string", hint=examples)
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _NUMBER_UNIT.match(value)
        if not match:
            raise SplitcError(f"invalid {what} {value!r}", hint=examples)
        number, unit = float(match["num"]), match["unit"] or ""
    if not math.isfinite(number) or number < 0:
        raise SplitcError(f"invalid {what} {value!r}: must be a finite non-negative number", hint=examples)
    return number, unit


def _prefix_scale(prefix: str | None) -> float:
    prefix = (prefix or "").lower()
    return _IEC[prefix] if prefix.endswith("i") else _SI[prefix]


def _bandwidth_scale(unit: str) -> float | None:
    """Bits per second per one ``unit``, or None when ``unit`` is not a data rate."""
    if unit == "":
        return 1.0
    bits = _BIT_RATE.match(unit.lower()) or _BIT_RATE_SHORT.match(unit)
    if bits:
        return _SI[bits["p"].lower()]
    byte = _BYTE_RATE.match(unit)
    if byte:
        return 8.0 * _prefix_scale(byte["p"])
    return None


def parse_bandwidth(value: str | float) -> float:
    """Parse a data rate into bits per second.

    ``bps``/``kbps``/``Mbps``/``Gbps`` (any case) and ``Mbit/s`` are bits;
    ``B/s``/``KB/s``/``MB/s``/``GB/s``/``TB/s`` (capital ``B``) are bytes (×8), and
    ``KiB/s``/``MiB/s``/``GiB/s`` are binary bytes. A bare number is bits/s.

    Args:
        value: e.g. ``"20mbps"``, ``"1.5 Gbps"``, ``"100MB/s"``, ``250e3``.

    Returns:
        The rate in bits per second (> 0).
    """
    number, unit = _split(value, "bandwidth", _BANDWIDTH_EXAMPLES)
    scale = _bandwidth_scale(unit)
    if scale is None:
        raise SplitcError(f"invalid bandwidth {value!r}: unknown unit {unit!r}", hint=_BANDWIDTH_EXAMPLES)
    if number == 0:
        raise SplitcError(f"invalid bandwidth {value!r}: must be greater than zero", hint=_BANDWIDTH_EXAMPLES)
    return number * scale


#: The link speeds splitc accepts, in bits/s: 1 kbps (below a slow LoRa or satellite telemetry link) to
#: 10 Tbps (above any single network interface). A value outside is a unit mistake, not a link
#: (``--bandwidth 20`` read as 20 bit/s would make every cut cost hours).
LINK_BANDWIDTH_RANGE_BPS = (1e3, 1e13)


def parse_link_bandwidth(value: str | float, source: str = "--bandwidth", require_unit: bool = True) -> float:
    """Parse the bandwidth of a network link: :func:`parse_bandwidth` plus two checks against unit mistakes.

    A string from the command line must name its unit (``--bandwidth 20`` is refused: 20 bit/s
    or 20 Mbps?), as ``--rtt-ms`` names its own; and the rate must lie in
    :data:`LINK_BANDWIDTH_RANGE_BPS`, which every real link does.

    Args:
        value: e.g. ``"20mbps"``; a bare number (bits/s) only when ``require_unit`` is False.
        source: the flag or file field the value came from, for the error message.
        require_unit: refuse a bare number (command-line flags); target files may give bits/s.

    Returns:
        The rate in bits per second.

    >>> parse_link_bandwidth("20mbps")
    20000000.0
    """
    number, unit = _split(value, "bandwidth", _BANDWIDTH_EXAMPLES)
    if require_unit and unit == "":
        raise SplitcError(f"{source} {value!r} has no unit (as a bare number it would mean {number:g} bit/s)",
                          hint="write the unit, e.g. '20mbps' (megabits/s), '1.5gbps' or '100MB/s' (bytes/s)")
    bps = parse_bandwidth(value)
    low, high = LINK_BANDWIDTH_RANGE_BPS
    if not low <= bps <= high:
        raise SplitcError(f"{source} {value!r} is {format_bandwidth(bps)}, which no real network link has",
                          hint=f"give a rate between {format_bandwidth(low)} and {format_bandwidth(high)} "
                               "with its unit, e.g. '20mbps'")
    return bps


def parse_bytes(value: str | float) -> float:
    """Parse a size into bytes.

    SI prefixes are powers of 1000 (``kB``, ``MB``, ``GB``, ``TB``), IEC prefixes
    powers of 1024 (``KiB``, ``MiB``, ``GiB``, ``TiB``); case is ignored. A bare
    number is bytes.

    Args:
        value: e.g. ``"8 GiB"``, ``"512MB"``, ``"4096"``, ``4096``.

    Returns:
        The size in bytes (>= 0).
    """
    number, unit = _split(value, "size", _BYTES_EXAMPLES)
    if unit == "":
        return number
    match = _BYTES.match(unit.lower())
    if not match:
        raise SplitcError(f"invalid size {value!r}: unknown unit {unit!r}", hint=_BYTES_EXAMPLES)
    return number * _prefix_scale(match["p"])


def parse_flops(value: str | float) -> float:
    """Parse a compute rate into operations per second.

    Accepts ``FLOPS``, ``FLOP/s``, ``OPS``, ``OP/s`` with an optional
    ``k``/``M``/``G``/``T``/``P`` prefix (case is ignored: ``TOPS`` = tera-ops/s).

    Args:
        value: e.g. ``"1.28 TFLOPS"``, ``"275 TOPS"``, ``"5e12"``, ``5e12``.

    Returns:
        Operations per second (>= 0).
    """
    number, unit = _split(value, "compute rate", _FLOPS_EXAMPLES)
    if unit == "":
        return number
    match = _FLOPS.match(unit.lower())
    if not match:
        raise SplitcError(f"invalid compute rate {value!r}: unknown unit {unit!r}", hint=_FLOPS_EXAMPLES)
    return number * _SI[match["p"]]


def parse_duration(value: str | float) -> float:
    """Parse a duration into seconds.

    Args:
        value: e.g. ``"20ms"``, ``"1.5 s"``, ``"300us"``, ``"850 µs"``, ``0.02``.

    Returns:
        The duration in seconds (>= 0); a bare number is seconds.
    """
    number, unit = _split(value, "duration", _DURATION_EXAMPLES)
    if unit == "":
        return number
    scale = _SECONDS.get(unit) or _SECONDS.get(unit.lower())
    if scale is None:
        raise SplitcError(f"invalid duration {value!r}: unknown unit {unit!r}", hint=_DURATION_EXAMPLES)
    return number * scale


def _sig3(x: float) -> str:
    """Three significant digits, never in exponent notation."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _format_scaled(value: float, base: float, units: tuple[str, ...]) -> str:
    """Format with 3 significant digits in the largest unit that keeps value >= 1.

    With ``base`` 1024, values from 1000 to 1023 go up a unit ("0.98 GiB") so
    that at most three digits are shown.
    """
    index = 0
    while index + 1 < len(units) and abs(value) >= base ** (index + 1):
        index += 1
    scaled = value / base**index
    if abs(float(f"{scaled:.3g}")) >= 1000 and index + 1 < len(units):  # keep <= 3 digits
        index, scaled = index + 1, scaled / base
    return f"{_sig3(scaled)} {units[index]}"


def format_bandwidth(bps: float, *, as_bytes: bool = False) -> str:
    """Format a rate given in bits/s, e.g. ``"20 Mbps"`` or (as_bytes) ``"68 GB/s"``.

    Args:
        bps: the rate in bits per second.
        as_bytes: show bytes per second with SI prefixes instead of bits.

    Returns:
        A short string with 3 significant digits.
    """
    if as_bytes:
        return _format_scaled(bps / 8.0, 1000.0, ("B/s", "kB/s", "MB/s", "GB/s", "TB/s"))
    return _format_scaled(bps, 1000.0, ("bps", "kbps", "Mbps", "Gbps", "Tbps"))


def format_bytes(n: float) -> str:
    """Format a size in bytes with binary prefixes, e.g. ``"97.8 MiB"``.

    Args:
        n: the size in bytes.

    Returns:
        A short string with 3 significant digits.
    """
    return _format_scaled(float(n), 1024.0, ("B", "KiB", "MiB", "GiB", "TiB"))


def format_flops(ops_per_s: float) -> str:
    """Format a compute rate, e.g. ``"1.28 TFLOPS"``.

    Args:
        ops_per_s: operations per second.

    Returns:
        A short string with 3 significant digits.
    """
    return _format_scaled(ops_per_s, 1000.0, ("FLOPS", "kFLOPS", "MFLOPS", "GFLOPS", "TFLOPS", "PFLOPS"))


def format_seconds(s: float) -> str:
    """Format a duration, e.g. ``"3.21 ms"``, ``"850 µs"``, ``"1.5 s"``.

    Args:
        s: the duration in seconds.

    Returns:
        A short string with 3 significant digits.
    """
    if s == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= scale * 0.9995:
            return f"{_sig3(s / scale)} {unit}"
    return f"{_sig3(s / 1e-9)} ns"
