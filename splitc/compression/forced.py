"""What a compression knob the user gave explicitly does when it misses the accuracy target: it fails.

``--bottleneck 0.125``, ``--transfer-dtype uint8``, ``--quantize int8`` and ``--prune 0.3`` are
requests, not hints: shipping a bundle without them (exit 0, 6,272 bytes instead of 784 on the
wire) would hide that the request was not met. So a miss is a :class:`~splitc.errors.SplitcError`
(exit 2, nothing written) whose one line carries the verdict -- the rule and all its numbers
(:meth:`splitc.core.accuracy.Verdict.line`) -- and what to relax, including the
``--accuracy-target`` that would have accepted this result. Only ``--bottleneck auto`` may fall
back (to no bottleneck), and it says so.
"""

from __future__ import annotations

import math

from splitc.core.accuracy import Verdict
from splitc.errors import SplitcError

__all__ = ["accepting_target", "missed"]


def accepting_target(verdict: Verdict) -> float | None:
    """The largest ``--accuracy-target`` (3 decimals, same reading: relative or absolute) that ``verdict`` meets.

    Returns:
        None when no positive target would (the knob destroyed the accuracy).
    """
    kept = float(verdict.accuracy) - verdict.margin
    if verdict.target.absolute:
        value = kept
    elif verdict.reference:
        value = kept / verdict.reference
    else:
        return None
    value = math.floor(value * 1000 + 1e-9) / 1000
    return value if value > 0 else None


def missed(verdict: Verdict, relax: str) -> SplitcError:
    """The compile error for an explicitly given knob that missed the target.

    Args:
        verdict: the missed verdict (its line states the rule and every number).
        relax: the knob's own ways to relax, e.g. ``"a larger ratio (--bottleneck 0.25)"``.
    """
    target = accepting_target(verdict)
    options = [f"--accuracy-target {target:g}{' --absolute-accuracy' if verdict.target.absolute else ''} would "
               "accept it"] if target is not None and target < verdict.target.value else []
    options.append(relax)
    return SplitcError(f"{verdict.line()}; nothing was written", "relax: " + ", or ".join(options))
