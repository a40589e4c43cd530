"""``train_exits``: exit candidates, their heads trained on the calibration data (an analysis).

With ``--exits auto`` or ``--exits node1,node2`` (and ``--calib``), picks the
candidate nodes, caches the frozen backbone's pooled features on the calibration
samples, trains one exit head per candidate (self-distillation from the final
logits, plus cross-entropy when labels exist) and scores every sample with each
head. Also predicts each head's cost on every tier (profiled like any node), so the
plan pass can choose thresholds and cuts together (:func:`splitc.exits.heads.plan_exits`).
Never edits the graph: ``insert_exits`` attaches the kept heads after the plan.

Writes ``ctx.exits`` (a :class:`~splitc.exits.heads.ExitSetup`), or nothing with ``--exits none``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from splitc.core.accuracy import AccuracyTarget
from splitc.core.passes.profile import profile_graph
from splitc.exits.settings import ExitSettings
from splitc.exits.heads import ExitHead, check_classifier, pick_candidates, train_exit_candidates
from splitc.core.pass_manager import Pass, PassResult
from splitc.core.graph import COMPUTE_OPS
from splitc.targets.cost_model import node_times
from splitc.core.passes.profile import FLOPS

__all__ = ["TrainExitsPass", "profile_head"]


def profile_head(head: ExitHead, tiers) -> tuple[int, np.ndarray]:
    """FLOPs of one head call and its predicted seconds on each tier (same cost model as the backbone)."""

    gm = torch.fx.symbolic_trace(head)
    profile_graph(gm, [torch.zeros(head.feature_shape)])
    nodes = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    flops = int(sum(n.meta.get(FLOPS, 0) for n in nodes))
    return flops, np.array([float(node_times(nodes, t).sum()) for t in tiers])


class TrainExitsPass(Pass):
    """Train an exit head at every candidate node and score the calibration samples with it."""

    name = "train_exits"
    requires = ("splitc.profile", "candidates")
    provides = ("exit_candidates",)

    def run(self, gm, ctx) -> PassResult:
        requested = ctx.settings_for(ExitSettings).requested
        if not requested:
            return PassResult(gm, modified=False, summary="no exits (--exits none)")
        classes = check_classifier(gm)
        picked = pick_candidates(gm, ctx.candidates, requested, tuple(ctx.options.split))
        if not picked:
            return PassResult(gm, modified=False, summary="no node is a suitable exit candidate; no exits")
        setup = train_exit_candidates(gm, picked, ctx.calibration, classes, ctx.settings_for(AccuracyTarget),
                                      seed=ctx.options.seed)
        for cand in setup.candidates:
            cand.head_flops, cand.head_time = profile_head(cand.head, ctx.tiers)
        ctx.exits = setup
        names = ", ".join(f"{c.node} ({c.flops_fraction:.0%} of FLOPs)" for c in setup.candidates)
        return PassResult(gm, modified=False, summary=f"{len(setup.candidates)} exit head(s) trained at {names}; "
                                                      f"reference: {setup.reference}")
