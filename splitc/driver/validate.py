"""The one validation step: every capability parses and checks its own flags, once, before any tracing.

Bad flags fail here in well under a second (no model is loaded); the parsed settings are
recorded on the compile context, so every later pass reads the same instance
(:meth:`splitc.core.context.CompileContext.settings_for`) instead of parsing the options again.
"""

from __future__ import annotations

from typing import Any

from splitc.compression.settings import CompressionSettings
from splitc.core.accuracy import AccuracyTarget
from splitc.core.loader import InputSettings
from splitc.core.options import CompileOptions
from splitc.errors import SplitcError
from splitc.exits.settings import ExitSettings
from splitc.planning.plan import PlanSettings, check_link_flags
from splitc.privacy.add_noise import NoiseSettings
from splitc.privacy.defence import DefenceSettings

__all__ = ["validate_options"]


def validate_options(options: CompileOptions, *, compile: bool) -> list[Any]:
    """Every capability's settings for ``options``, checked (one-line :class:`SplitcError` on a bad flag).

    Args:
        compile: whether a bundle will be written (``splitc compile``): knobs that train or
            calibrate then need ``--calib``, and only the inference workload is accepted.
            ``splitc plan`` only costs the knobs.
    """
    if compile and options.workload != "inference":
        raise SplitcError(f"compile emits inference bundles; --workload {options.workload} is for 'splitc plan'",
                          "plan the split-learning step with: splitc plan --workload training")
    if compile and options.verify and options.verify_samples < 1:
        raise SplitcError(f"--verify-samples {options.verify_samples} leaves verification nothing to run",
                          "give at least 1 (default 8), or --no-verify to skip verification")
    check_link_flags(options)  # a bandwidth without unit fails here, not after tracing
    return [
        InputSettings.from_options(options),
        AccuracyTarget.from_options(options),
        PlanSettings.from_options(options),
        ExitSettings.from_options(options),
        CompressionSettings.from_options(options, check_calibration=compile),
        NoiseSettings.from_options(options),
        DefenceSettings.from_options(options, check_calibration=compile),
    ]
