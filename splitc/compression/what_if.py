"""Compression's contribution to the plan's explanation: the knobs the user did not give.

The plan pass lists, beside the chosen plan, the best plan had the user added a compression
flag (:mod:`splitc.planning.explain`); the driver hands :func:`untried_knobs` to it. Each entry
is the same problem with the wire bytes and coder time of that knob
(:func:`~splitc.compression.settings.compressed_problem`), so the prediction is the planner's
own; the accuracy of a lossy knob is only measured when a compile uses it (with ``--calib``).
"""

from __future__ import annotations

from typing import Any

from splitc.compression.settings import CompressionSettings, compressed_problem

__all__ = ["untried_knobs", "WHAT_IF_BOTTLENECK"]

#: The channel ratio the explanation tries for a bottleneck (the README's compression example).
WHAT_IF_BOTTLENECK = 0.125


def untried_knobs(problem, gm, ctx) -> list[tuple[str, str, Any]]:
    """``(flags to add, note, problem)`` for each wire-compression knob the user did not give.

    Args:
        problem: the problem the planner solved (exits' reach and the given knobs included).

    Returns:
        Up to three entries: ``--transfer-dtype float16`` and ``uint8`` (when the wire is float32)
        and a bottleneck of :data:`WHAT_IF_BOTTLENECK` (with uint8 unless a dtype was given).
    """
    settings = ctx.settings_for(CompressionSettings,
                                lambda o: CompressionSettings.from_options(o, check_calibration=False))
    given = (settings.bottleneck, 1) if isinstance(settings.bottleneck, float) else None
    calib = "" if getattr(ctx.options, "calib", None) else "; needs --calib"
    out = []
    if settings.transfer_dtype == "float32":
        out.append(("+ --transfer-dtype float16", "predicted; accuracy not measured",
                    compressed_problem(problem, gm, ctx.candidates, ctx.tiers, "float16", given)))
        out.append(("+ --transfer-dtype uint8", "predicted; accuracy not measured" + calib,
                    compressed_problem(problem, gm, ctx.candidates, ctx.tiers, "uint8", given)))
    if settings.bottleneck is None:
        dtype = "uint8" if settings.transfer_dtype == "float32" else settings.transfer_dtype
        flags = f"+ --bottleneck {WHAT_IF_BOTTLENECK:g}" + (" --transfer-dtype uint8" if dtype != settings.transfer_dtype
                                                           else "")
        out.append((flags, "predicted; accuracy not measured (trains a bottleneck)" + calib,
                    compressed_problem(problem, gm, ctx.candidates, ctx.tiers, dtype, (WHAT_IF_BOTTLENECK, 1))))
    return out
