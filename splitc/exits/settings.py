"""``--exits``: which early exits to train, checked once (see :mod:`splitc.exits.heads` for what they are)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from splitc.errors import SplitcError

__all__ = ["ExitSettings"]


@dataclass(frozen=True)
class ExitSettings:
    """The ``--exits`` request.

    Attributes:
        requested: ``()`` (no exits), ``("auto",)`` (candidates chosen jointly with the plan) or node names.
    """

    requested: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: Any) -> "ExitSettings":
        """Raises :class:`SplitcError` when exits are asked for without calibration data."""
        requested = tuple(getattr(options, "exits", ()) or ())
        if requested in ((), ("none",)):
            return cls(())
        if "auto" in requested and len(requested) > 1:
            raise SplitcError(f"--exits {','.join(requested)} mixes 'auto' with node names", "give auto or nodes, not both")
        if not getattr(options, "calib", None):
            raise SplitcError("--exits needs calibration data to train and calibrate the exit heads",
                              "pass --calib calib.npz (inputs 'x', optionally labels 'y'), or --exits none")
        return cls(requested)

    @property
    def enabled(self) -> bool:
        return bool(self.requested)
