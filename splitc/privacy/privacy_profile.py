"""``privacy_profile``: the leakage proxy of every candidate cut (an analysis).

When the compile asks for privacy (``--objective privacy``, a ``privacy=w`` weight or
``--max-dcor``: the planning settings' ``needs`` include ``leakage``), runs a
seeded subset of the calibration samples through the graph and stores, for every
legal cut, the distance correlation between the model input and everything that
crosses it (:func:`~splitc.privacy.leakage.profile_privacy`; the maths is in that
module). The planner reads ``ctx.privacy.dcor`` as the privacy term of its objective
and for the ``--max-dcor`` constraint. Never edits the graph; a no-op otherwise.

Writes ``ctx.privacy`` (a :class:`~splitc.privacy.leakage.PrivacyProfile`).
"""

from __future__ import annotations

import numpy as np

from splitc.core.pass_manager import Pass, PassResult
from splitc.privacy.leakage import profile_privacy
from splitc.errors import SplitcError

__all__ = ["PrivacyProfilePass"]


class PrivacyProfilePass(Pass):
    """Distance correlation between the input and each candidate cut's wire tensors."""

    name = "privacy_profile"
    requires = ("splitc.profile", "candidates")
    provides = ("privacy",)

    def run(self, gm, ctx) -> PassResult:
        if not ctx.needs("leakage"):
            return PassResult(gm, modified=False, summary="skipped (privacy not requested)")
        if ctx.calibration is None:
            raise SplitcError("privacy needs calibration data: the leakage of each cut is measured on real inputs",
                              "pass --calib calib.npz (inputs 'x' of the kind the model will see)")
        profile = profile_privacy(gm, ctx.candidates, ctx.calibration.inputs, seed=ctx.options.seed)
        ctx.privacy = profile
        legal = np.isfinite(profile.dcor)
        deepest = int(np.flatnonzero(legal)[-1])
        return PassResult(gm, modified=False,
                          summary=f"dcor of {int(legal.sum())} legal cuts on {profile.samples} samples: "
                                  f"1.000 at the input, {profile.dcor[deepest]:.3f} at the last cut")
