"""``prune``: structured channel pruning of the sending partition (``--prune RATIO``).

Whole output channels are removed (structured pruning): dense ONNX Runtime / TensorRT
kernels run no faster on unstructured zeros, so only removing channels shrinks the
FLOPs and -- when the last layer before the cut loses channels -- the boundary tensor.

* Library: torch-pruning (``pip install 'splitc[compression]'``): its DependencyGraph
  traces the *whole* model, so when a layer of the first partition loses output
  channels every coupled layer (BatchNorm, residual adds, the receiver's first
  convolutions) loses the matching input channels; layers outside the first partition
  are ``ignored_layers`` and keep their own output channels. Importance: L2 magnitude;
  ``RATIO`` of the channels of every prunable layer of the sending partition goes.
* Recovery: a short distillation fine-tune (KL to the original model's softmax at
  temperature 2, plus cross-entropy with labels) of the whole model on the training
  split of ``--calib``, BatchNorm statistics frozen (eval mode).
* Then the graph is profiled again (new FLOPs and bytes), the candidates rebuilt, the
  chosen cuts re-evaluated with the new costs, and the partitions cut again.
* Accuracy on the held-out split must meet ``--accuracy-target`` (with the paired
  margin, see :mod:`splitc.core.accuracy`); otherwise the compile fails with the numbers
  and what to relax (:mod:`splitc.compression.forced`): ``--prune`` is a request.

Runs after ``cut`` (the plan says which nodes form the sending partition) and before
``insert_bottleneck`` (which trains on the pruned boundary tensor).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from splitc.compression.forced import missed
from splitc.compression.settings import CompressionSettings, adjust_problem, state_of
from splitc.core.accuracy import predictions
from splitc.core.samples import WholeGraph, run_chain
from splitc.core.pass_manager import Pass, PassResult
from splitc.core.progress import progress
from splitc.core.passes.candidates import CandidatesPass
from splitc.core.passes.cut import CutPass
from splitc.core.passes.profile import ProfilePass
from splitc.errors import SplitcError

__all__ = ["PrunePass", "FINE_TUNE_EPOCHS"]

log = logging.getLogger("splitc")

FINE_TUNE_EPOCHS = 20
TEMPERATURE = 2.0


class PrunePass(Pass):
    """Remove ``--prune`` of the output channels of the sending partition's layers, then fine-tune."""

    name = "prune"
    requires = ("partitions",)
    provides = ("pruned",)

    def run(self, gm, ctx) -> PassResult:
        settings = ctx.settings_for(CompressionSettings)
        if settings.prune <= 0:
            return PassResult(gm, modified=False, summary="off")
        try:
            import torch_pruning as tp
        except ImportError:
            raise SplitcError("--prune needs the torch-pruning package, which is not installed",
                              "pip install 'splitc[compression]' (or torch-pruning)") from None
        first = next((p for p in ctx.partitions if p.tier_index == 0), None)
        if first is None or len(ctx.partitions) < 2:
            log.warning("--prune %g has no effect: no partition sends anything (the plan runs the model on one "
                        "tier)", settings.prune)
            return PassResult(gm, modified=False, summary="nothing to prune (no sending partition)")
        state = state_of(ctx, gm)
        names = [s.name for s in ctx.input_specs]
        state.guard.ensure_reference(gm)
        teacher = run_chain([WholeGraph(gm, names)], names, state.calib.batch(state.train))[state.model_outputs[0]]
        # prune a copy: the traced graph shares its modules with the loaded model, which stays the
        # untouched reference
        gm = copy.deepcopy(gm)
        before = (first.flops, _boundary_bytes(ctx))
        sending = {n.target for n in first.graph_module.graph.nodes if n.op == "call_module"}
        ignored = [m for name, m in gm.named_modules()
                   if name and name not in sending and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear,
                                                                      torch.nn.ConvTranspose2d))]
        example = [x.clone() for x in ctx.example_inputs]
        pruner = tp.pruner.MetaPruner(gm, example[0] if len(example) == 1 else tuple(example),
                                      importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=settings.prune, ignored_layers=ignored)
        pruner.step()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small model, few samples: see insert_bottleneck's measurement
        try:
            _fine_tune(gm, state, teacher, ctx.options.seed)
        finally:
            torch.set_num_threads(threads)
        full = WholeGraph(gm, names)
        values = run_chain([full], names, state.calib.batch(state.test))
        acc = state.guard.measure(predictions(values[state.model_outputs[0]]))
        verdict = state.guard.judge(f"--prune {settings.prune:g} (after fine-tuning)", acc)
        if not verdict.met:  # a ratio the user gave is a request: missing it fails the compile
            raise missed(verdict, f"prune less (e.g. --prune {settings.prune / 2:g})")
        _recut(gm, ctx)
        state.accuracy["prune"] = acc
        first = next(p for p in ctx.partitions if p.tier_index == 0)
        after = (first.flops, _boundary_bytes(ctx))
        state.pruning = {"ratio": settings.prune, "sending_flops_before": int(before[0]),
                         "sending_flops_after": int(after[0]), "boundary_bytes_before": int(before[1]),
                         "boundary_bytes_after": int(after[1]), "held_out_accuracy": float(acc)}
        return PassResult(gm, True, f"sending partition {before[0] / 1e6:.2f} -> {after[0] / 1e6:.2f} MFLOPs, boundary "
                                    f"{before[1]} -> {after[1]} bytes; held-out accuracy {acc:.4f} "
                                    f"(original {state.reference_accuracy:.4f})")


def _boundary_bytes(ctx) -> int:
    cut = ctx.plan_result.best.cuts[0]
    return int(ctx.candidates.cuts[cut].bytes)


def _fine_tune(gm, state, teacher: torch.Tensor, seed: int) -> None:
    """Distil the original model's outputs ``teacher`` into the pruned one (BatchNorm statistics frozen)."""
    torch.manual_seed(seed)
    inputs = [torch.as_tensor(np.asarray(a)) for a in state.calib.batch(state.train)]
    labels = torch.from_numpy(state.calib.labels[state.train]) if state.calib.labels is not None else None
    for p in gm.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(list(gm.parameters()), lr=1e-3)
    soft = F.softmax(teacher / TEMPERATURE, dim=-1)
    gm.eval()
    start = time.perf_counter()
    for _ in progress(range(FINE_TUNE_EPOCHS), "[prune] fine-tuning the pruned model", unit="epoch", every=5):
        for batch in torch.randperm(len(inputs[0])).split(64):
            out = gm(*[x[batch] for x in inputs])
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = F.kl_div(F.log_softmax(out / TEMPERATURE, dim=-1), soft[batch],
                            reduction="batchmean") * TEMPERATURE ** 2
            if labels is not None:
                loss = loss + F.cross_entropy(out, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    log.info("[prune] fine-tuned %d epochs, final loss %.4f (%.1fs)", FINE_TUNE_EPOCHS, loss.item(),
             time.perf_counter() - start)


def _recut(gm, ctx) -> None:
    """Profile the (pruned) graph again, rebuild candidates, re-cost the chosen cuts, cut again."""
    ProfilePass().run(gm, ctx)
    CandidatesPass().run(gm, ctx)
    problem = adjust_problem(ctx.planner.base_problem(gm, ctx), gm, ctx)
    ctx.plan_result = dataclasses.replace(
        ctx.plan_result, best=ctx.planner.choice(problem, ctx.candidates, tuple(ctx.plan_result.best.cuts)))
    CutPass().run(gm, ctx)
