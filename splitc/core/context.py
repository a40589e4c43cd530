"""The mutable state of one compile, shared by its passes.

:class:`CompileContext` carries what passes produce for later passes (candidates, plan,
partitions) and what each capability keeps between its passes. Core types are typed here;
a capability's state is an opaque slot typed by the capability itself (the core never
imports a capability). Settings are parsed once per compile: :meth:`CompileContext.settings_for`
returns the one instance of a capability's ``Settings`` class (the driver's validation step
creates them all before tracing; a test that builds a context by hand gets them on first use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch

from splitc.core.loader import InputSpec
from splitc.core.options import CompileOptions

__all__ = ["CompileContext"]

S = TypeVar("S")


@dataclass
class CompileContext:
    """State shared by the passes of one compile.

    Attributes:
        options: the user's choices.
        tiers: the resolved chain (:class:`splitc.targets.target.Target`, one per tier).
        input_specs: name, shape and dtype of every model input.
        example_inputs: one seeded example per input (tracing, profiling, export).
        candidates: :class:`splitc.core.passes.candidates.Candidates` (candidates pass).
        plan_result: :class:`splitc.core.placement.PlanResult` (plan pass).
        partitions: :class:`splitc.core.passes.cut.Partition` per working tier (cut pass).
        calibration: ``--calib``, loaded and checked (:class:`splitc.core.calibration.CalibrationData`).
        accuracy: the held-out accuracy guard every lossy knob answers to
            (:class:`splitc.core.accuracy.AccuracyGuard`, made on first use).
        planner: what capabilities may ask of the planner (:class:`splitc.core.placement.Planner`);
            the driver sets it.
        exits, compression, privacy, noise: each capability's own state (its module documents the type).
        pass_timings: seconds per pass and per export step.
    """

    options: CompileOptions
    tiers: list[Any]
    input_specs: list[InputSpec]
    example_inputs: list[torch.Tensor]
    candidates: Any = None
    plan_result: Any = None
    partitions: list[Any] = field(default_factory=list)
    calibration: Any = None
    accuracy: Any = None
    planner: Any = None
    exits: Any = None  # splitc.exits.heads.ExitSetup
    compression: Any = None  # splitc.compression.settings.CompressionState
    privacy: Any = None  # splitc.privacy.leakage.PrivacyProfile
    noise: Any = None  # splitc.privacy.add_noise.NoiseSetup
    pass_timings: dict[str, float] = field(default_factory=dict)
    _settings: dict[type, Any] = field(default_factory=dict, repr=False)

    def settings_for(self, cls: type[S], parse: Callable[[CompileOptions], S] | None = None) -> S:
        """The one parsed instance of settings class ``cls`` for this compile (``cls.from_options`` by default)."""
        if cls not in self._settings:
            self._settings[cls] = (parse or cls.from_options)(self.options)  # type: ignore[attr-defined]
        return self._settings[cls]

    def set_settings(self, value: Any) -> None:
        """Record already-validated settings (the driver's validation step)."""
        self._settings[type(value)] = value

    def needs(self, analysis: str) -> bool:
        """Whether any capability's settings ask for ``analysis`` (their ``needs`` set, e.g. ``"leakage"``)."""
        return any(analysis in getattr(s, "needs", ()) for s in self._settings.values() if s is not None)

    def timings_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.pass_timings.items()}
