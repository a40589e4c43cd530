"""``train_exits``: exit candidates, their heads trained on the calibration data (an analysis).

With ``--exits auto`` or ``--exits node1,node2`` (and ``--calib``), picks the
candidate nodes, caches the frozen backbone's pooled features on the calibration
samples, trains one exit head per candidate (self-distillation from the final
logits, plus cross-entropy when labels exist) and scores every sample with each
head. Also predicts each head's cost on every tier (profiled like any node), so the
plan pass can choose thresholds and cuts together (:func:`splitc.compiler.exits.plan_exits`).
Never edits the graph: ``insert_exits`` attaches the kept heads after the plan.

Writes ``ctx.exits`` (a :class:`~splitc.compiler.exits.ExitSetup`), or nothing with ``--exits none``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from splitc.compiler.exits import ExitHead, check_classifier, pick_candidates, train_exit_candidates
from splitc.compiler.pass_manager import Pass, PassResult
from splitc.errors import SplitcError
from splitc.passes.candidates import COMPUTE_OPS
from splitc.targets.cost_model import node_times

__all__ = ["TrainExitsPass", "profile_head"]


def profile_head(head: ExitHead, tiers) -> tuple[int, np.ndarray]:
    """FLOPs of one head call and its predicted seconds on each tier (same cost model as the backbone)."""
    from splitc.passes.profile import _Profiler  # the profile pass's interpreter: same FLOP counting

    gm = torch.fx.symbolic_trace(head)
    with torch.no_grad():
        _Profiler(gm).propagate(torch.zeros(head.feature_shape))
    nodes = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    flops = int(sum(n.meta.get("splitc.flops", 0) for n in nodes))
    return flops, np.array([float(node_times(nodes, t).sum()) for t in tiers])


class TrainExitsPass(Pass):
    """Train an exit head at every candidate node and score the calibration samples with it."""

    name = "train_exits"
    requires = ("splitc.profile", "candidates")
    provides = ("exit_candidates",)

    def run(self, gm, ctx) -> PassResult:
        requested = tuple(ctx.options.exits)
        if requested in ((), ("none",)):
            return PassResult(gm, modified=False, summary="no exits (--exits none)")
        if ctx.calibration is None:
            raise SplitcError("--exits needs calibration data to train and calibrate the exit heads",
                              "pass --calib calib.npz (inputs 'x', optionally labels 'y'), or --exits none")
        if not 0.0 < ctx.options.accuracy_target <= 1.0:
            raise SplitcError(f"--accuracy-target {ctx.options.accuracy_target:g} is out of range",
                              "give a fraction in (0, 1], e.g. 0.99")
        classes = check_classifier(gm)
        picked = pick_candidates(gm, ctx.candidates, requested, tuple(ctx.options.split))
        if not picked:
            return PassResult(gm, modified=False, summary="no node is a suitable exit candidate; no exits")
        setup = train_exit_candidates(gm, picked, ctx.calibration, classes, ctx.options.accuracy_target,
                                      ctx.options.absolute_accuracy, seed=ctx.options.seed)
        for cand in setup.candidates:
            cand.head_flops, cand.head_time = profile_head(cand.head, ctx.tiers)
        ctx.exits = setup
        names = ", ".join(f"{c.node} ({c.flops_fraction:.0%} of FLOPs)" for c in setup.candidates)
        return PassResult(gm, modified=False, summary=f"{len(setup.candidates)} exit head(s) trained at {names}; "
                                                      f"reference: {setup.reference}")
