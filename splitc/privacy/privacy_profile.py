"""``privacy_profile``: the leakage proxy of every candidate cut (an analysis).

When the compile asks for privacy (``--objective privacy``, a ``privacy=w`` weight or
``--max-dcor``: the planning settings' ``needs`` include ``leakage``), runs a
seeded subset of the calibration samples through the graph and stores, for every
legal cut, the distance correlation between the model input and everything that
crosses it (:func:`~splitc.privacy.leakage.profile_privacy`; the maths is in that
module). The planner reads ``ctx.privacy.dcor`` as the privacy term of its objective
and for the ``--max-dcor`` constraint. Never edits the graph; a no-op otherwise.

With ``--privacy-defence`` the planner sees the *defended* proxy where a defence was trained:
the defence's strength search runs at the forced cut (``--split``) or at the two shallowest
cuts that send a computed tensor (:func:`~splitc.privacy.defence.proxy_cuts`), and the dcor
of the defended wire (256 held-out samples, exact) replaces the undefended value there, so
``--objective privacy`` / ``--max-dcor`` may pick a cheap defended cut over a deep undefended
one. The trained graphs are kept (``ctx.defended_cuts``) and reused by ``defend`` when the plan
picks one of those cuts. Caveat (measured on the MNIST stem): the adversarial defence can lower
the attack by 6 dB while dcor does not fall, so this proxy under-credits it.

Writes ``ctx.privacy`` (a :class:`~splitc.privacy.leakage.PrivacyProfile`).
"""

from __future__ import annotations

import numpy as np

from splitc.core.pass_manager import Pass, PassResult
from splitc.privacy.defence import DefenceSettings, defend_cut, proxy_cuts
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
        defended = self._defended_proxy(gm, ctx, profile)
        legal = np.isfinite(profile.dcor)
        deepest = int(np.flatnonzero(legal)[-1])
        return PassResult(gm, modified=False,
                          summary=f"dcor of {int(legal.sum())} legal cuts on {profile.samples} samples: "
                                  f"1.000 at the input, {profile.dcor[deepest]:.3f} at the last cut{defended}")

    @staticmethod
    def _defended_proxy(gm, ctx, profile) -> str:
        """Train the requested defence at :func:`proxy_cuts` and put the defended dcor into ``profile``."""
        settings = ctx.settings_for(DefenceSettings)
        if settings is None or len(ctx.tiers) < 2:
            return ""
        ctx.defended_cuts = {}
        words = []
        for cut in proxy_cuts(ctx):
            outcome = defend_cut(gm, ctx, settings, cut, plan_partitions=False)
            ctx.defended_cuts[cut] = outcome
            if outcome.graph is None or outcome.dcor_after is None:
                profile.notes.append(f"cut {cut}: no --privacy-defence strength met the accuracy target; the "
                                     f"undefended dcor stays")
                continue
            profile.defended[cut] = {"undefended": round(float(profile.dcor[cut]), 6), "dcor": outcome.dcor_after,
                                     "method": settings.method, "strength": outcome.strength}
            profile.dcor[cut] = outcome.dcor_after
            words.append(f"cut {cut} {outcome.dcor_before:.3f} -> {outcome.dcor_after:.3f}")
        if profile.defended:
            profile.notes.append("defended cuts: dcor of the defended wire on 256 held-out samples (exact, not "
                                 "sketched) replaces the proxy there")
        return f"; defended: {', '.join(words)}" if words else ""
