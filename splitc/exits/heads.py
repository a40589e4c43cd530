"""Early exits: candidate heads, their training, threshold calibration and the joint choice with the plan.

An exit is an internal classifier attached to one node of the backbone (BranchyNet,
Shallow-Deep Networks, SPINN): a parameter-free pooling (average pooling to a small
grid ``s x s`` with ``s`` in {4, 2, 1} dividing the feature map, so shallow exits keep
some spatial layout; global average pooling is ``s = 1``) followed by a two-layer MLP
giving class scores. Its *score* is ``max_softmax`` = the largest softmax probability;
a request leaves at the first exit whose score is ``>=`` its threshold.

Steps (all on the calibration data of ``--calib``):

1. candidates: ``--exits node1,node2`` or, with ``auto``, up to :data:`AUTO_CANDIDATES`
   "cut-like" nodes (a single float tensor crosses the cut after them) spread over
   the network's FLOPs;
2. features: one pass of the frozen backbone caches the *pooled* features of every
   candidate and the final logits (the teacher), so training is an MLP on vectors;
3. training on the ``train`` split: self-distillation (KL to the final logits at
   temperature 2) plus cross-entropy when labels exist;
4. thresholds (:func:`choose_exits`): a search over a grid of thresholds per exit
   ("never" included, which removes the exit), every setting scored by the planner
   (``ctx.planner.scorer``) under the compile's objective and constraints -- expected
   latency, cost, leakage or their weighted sum, with ``--slo-ms`` (p50 or p99),
   ``--max-dcor`` and memory -- subject to accuracy ``>= target`` on the ``calibrate``
   split. An exit may sit anywhere: the tier running its node is cut into segments
   there (:mod:`splitc.core.passes.cut`), so an exit inside a device-only plan saves the
   device's compute;
5. the reported accuracy and exit rates are measured on the ``test`` split, never
   on samples used for training or for choosing thresholds.

Accuracy target (``--accuracy-target A``): by default *relative*: the exit-enabled
pipeline's accuracy must be ``>= A x`` the full model's accuracy on the same samples.
The reference is the labels when ``calib.npz`` has ``y``, else the full model's own
predictions (accuracy = agreement, the full model scores 1). With
``--absolute-accuracy`` the target is the accuracy itself.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from splitc.core.accuracy import AccuracyTarget, Verdict, binomial_margin
from splitc.core.determinism import derive_seed, seeded
from splitc.core.graph import model_output_names
from splitc.core.passes.profile import FLOPS, IS_TENSOR
from splitc.core.progress import progress
from splitc.core.samples import run_samples
from splitc.errors import SplitcError

__all__ = ["ExitHead", "ExitConfidence", "ExitCandidate", "ExitSetup", "ChosenExit", "SCORE",
           "check_classifier", "pick_candidates", "train_exit_candidates", "choose_exits", "exits_manifest",
           "position_reach", "node_reach", "plan_exits", "inserted_problem", "outcome", "AUTO_CANDIDATES", "SPLITS",
           "EXHAUSTIVE_COMBINATIONS"]

log = logging.getLogger("splitc")

SCORE = "max_softmax"
AUTO_CANDIDATES = 4
#: calibration data splits: heads train on 'train', thresholds are chosen on 'calibrate',
#: accuracy and exit rates are reported on 'test'.
SPLITS = {"train": 0.4, "calibrate": 0.4, "test": 0.2}
#: thresholds must meet the target on the calibrate split with this many binomial standard
#: errors (sqrt(A (1 - A) / n)) to spare, so that they hold on unseen requests. On the MNIST
#: example, 0 lost up to 1.3 points on the 1,000 unseen test digits where ~1 was allowed,
#: 0.5 still 1.1; 1.0 kept every split within the target (benchmarks/exits.py).
MARGIN_SE = 1.0
_AUTO_FRACTIONS = (0.1, 0.3, 0.5, 0.7)  # where in the FLOPs auto candidates are placed
_GRID = 40  # thresholds tried per exit


class ExitHead(nn.Module):
    """Pooling to ``pool x pool`` (4-D features), token mean (3-D) or nothing (2-D), then a 2-layer MLP."""

    def __init__(self, feature_shape: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        if len(feature_shape) == 4:
            channels, height, width = feature_shape[1:]
            self.grid = next(s for s in (4, 2, 1) if height % s == 0 and width % s == 0 and channels * s * s <= 2048)
            features = channels * self.grid * self.grid
        elif len(feature_shape) in (2, 3):
            self.grid, features = 0, feature_shape[-1]
        else:
            raise ValueError(f"exit features must be 2-D, 3-D or 4-D, got {list(feature_shape)}")
        self.tokens = len(feature_shape) == 3  # decided here: fx cannot branch on x.dim() of a Proxy
        hidden = int(min(128, max(32, features // 2)))
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Parameter-free part: what feature caching stores."""
        if self.grid:
            x = F.adaptive_avg_pool2d(x, self.grid)
        elif self.tokens:  # [B, tokens, hidden] (a transformer's hidden state): mean over tokens
            x = x.mean(dim=1)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(x))


class ExitConfidence(nn.Module):
    """The exit score: max softmax probability per sample, shape ``[batch]``."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1).amax(dim=-1)


@dataclass
class ExitCandidate:
    """One place an exit may go, with its trained head and its scores on every calibration sample."""

    node: str
    position: int  # compute-node index of ``node``; the exit fires at cut ``position + 1``
    flops_fraction: float  # share of the model's FLOPs up to and including ``node``
    head: ExitHead
    head_flops: int = 0
    head_time: np.ndarray = field(default_factory=lambda: np.zeros(0))  # seconds per tier
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [S]
    prediction: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [S]


@dataclass
class ChosenExit:
    """An exit kept in the bundle."""

    candidate: ExitCandidate
    threshold: float
    beta_calibrate: float
    beta_test: float = 0.0


@dataclass
class ExitSetup:
    """Everything the exit analysis produced (``ctx.exits``)."""

    candidates: list[ExitCandidate]
    reference: str  # "labels" or "agreement"
    target: AccuracyTarget
    splits: dict[str, np.ndarray]
    truth: np.ndarray  # [S] the reference class per sample
    full_prediction: np.ndarray  # [S] the full model's class
    classes: int
    chosen: list[ChosenExit] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    tensor_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # node -> (logits, confidence) in the graph
    inserted: bool = False  # insert_exits ran: the kept exits are graph nodes; a re-plan keeps them
    head_files: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> {"file", "sha256"} in the bundle


def check_classifier(gm: torch.fx.GraphModule) -> int:
    """The number of classes; a one-line error when the model does not end in ``[batch, classes]`` scores."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = []
    torch.fx.node.map_arg(output.args[0], values.append)
    metas = [v.meta.get("tensor_meta") for v in values]
    if len(values) != 1 or metas[0] is None or len(metas[0].shape) != 2 or metas[0].shape[1] < 2 \
            or not metas[0].dtype.is_floating_point:
        got = ", ".join(f"{v.name} {list(m.shape) if m is not None else '?'}" for v, m in zip(values, metas))
        raise SplitcError(f"--exits needs a classifier whose only output is class scores [batch, classes]; "
                          f"this model returns {got}", "compile it with --exits none")
    return int(metas[0].shape[1])


def _exit_feature_ok(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return (node.meta.get(IS_TENSOR, False) and meta is not None and meta.dtype.is_floating_point
            and len(meta.shape) in (2, 3, 4) and meta.shape[0] == 1)


def pick_candidates(gm: torch.fx.GraphModule, candidates, requested: tuple[str, ...],
                    forced_split: tuple[str, ...] = ()) -> list[tuple[str, int, float]]:
    """``(node, position, flops_fraction)`` of the exit candidates, in graph order.

    Args:
        requested: node names (``--exits a,b``) or ``("auto",)``.
        forced_split: ``--split`` nodes; with ``auto`` each one that gives a feature map is a
            candidate too (an exit right before a cut also saves the transfer).
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = [by_name[name] for name in candidates.nodes]
    flops = np.cumsum([n.meta.get(FLOPS, 0) for n in nodes], dtype=np.float64)
    fraction = flops / max(flops[-1], 1.0)
    if requested != ("auto",):
        picked = []
        for name in requested:
            if name not in by_name or by_name[name].op not in ("call_module", "call_function", "call_method"):
                import difflib
                close = difflib.get_close_matches(name, candidates.nodes, n=4)
                raise SplitcError(f"--exits node '{name}' is not a node of the traced graph",
                                  f"did you mean: {', '.join(close)}?" if close else "run 'splitc plan' to list nodes")
            if not _exit_feature_ok(by_name[name]):
                meta = by_name[name].meta.get("tensor_meta")
                raise SplitcError(f"--exits node '{name}' does not produce a float feature map of batch 1 "
                                  f"(shape {list(meta.shape) if meta is not None else 'not a tensor'})",
                                  "pick a node whose output is [1, C], [1, T, C] or [1, C, H, W]")
            position = candidates.index_of(name) - 1
            cut = candidates.cuts[position + 1]
            if position + 1 < len(nodes) and not cut.legal:  # the tier holding the exit is cut there (a segment)
                raise SplitcError(f"--exits node '{name}': the tier's partition cannot be cut after it ({cut.reason})",
                                  "pick a neighbouring node")
            picked.append((name, position, float(fraction[position])))
        return sorted(set(picked), key=lambda p: p[1])
    eligible = [i for i, n in enumerate(nodes[:-1])
                if _exit_feature_ok(n) and candidates.cuts[i + 1].legal and candidates.cuts[i + 1].crossing == (n.name,)
                and 0.0 < fraction[i] < 0.9]
    picked: dict[int, None] = {}
    for goal in _AUTO_FRACTIONS:  # nearest eligible node to each goal, at least 5% of FLOPs from the others
        free = [i for i in eligible if all(abs(fraction[i] - fraction[j]) >= 0.05 for j in picked)]
        if free:
            best = min(free, key=lambda i: abs(fraction[i] - goal))
            if abs(fraction[best] - goal) < 0.15:
                picked[best] = None
    for name in forced_split:
        if name in candidates.nodes and _exit_feature_ok(by_name[name]):
            picked[candidates.index_of(name) - 1] = None
    return [(nodes[i].name, i, float(fraction[i])) for i in sorted(picked) if i < len(nodes) - 1]


def _backbone_pass(gm, heads: dict[str, ExitHead], inputs: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features per candidate and final logits for every sample (the one sample runner, pooled as it goes)."""
    output = model_output_names(gm)[0]
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in [*heads, output]}

    def sink(name: str, value: torch.Tensor) -> None:  # [B, 1, ...] per batch: pool at once, keep little
        value = value.flatten(0, 1)
        chunks[name].append(heads[name].pool(value) if name in heads else value)

    run_samples(gm, inputs, set(chunks), sink, batch=100)
    return {k: torch.cat(chunks[k]) for k in heads}, torch.cat(chunks[output])


def _train_head(head: ExitHead, feats: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                epochs: int) -> float:
    """Train ``head.mlp`` on cached features (call inside :func:`~splitc.core.determinism.seeded`)."""
    optimizer = torch.optim.Adam(head.mlp.parameters(), lr=3e-3, weight_decay=1e-4)
    soft = torch.softmax(teacher / 2.0, dim=1)
    head.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for batch in torch.randperm(len(feats)).split(128):
            logits = head.mlp(feats[batch])
            loss = 4.0 * F.kl_div(F.log_softmax(logits / 2.0, dim=1), soft[batch], reduction="batchmean")
            if labels is not None:
                loss = loss + F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    return float(loss.detach())


def train_exit_candidates(gm: torch.fx.GraphModule, picked: list[tuple[str, int, float]], calib, classes: int,
                          target: AccuracyTarget, seed: int = 0, epochs: int = 60) -> ExitSetup:
    """Cache features, train one head per candidate (backbone frozen) and score every calibration sample.

    Each head is initialised and trained inside :func:`~splitc.core.determinism.seeded` (seed derived
    from ``seed`` and its node), on one thread (tiny matmuls: faster than syncing several), so the same
    compile gives the same heads and thresholds.
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    heads = {}
    for name, _, _ in picked:
        with seeded(derive_seed(seed, "exit-head", name)):
            heads[name] = ExitHead(tuple(by_name[name].meta["tensor_meta"].shape), classes)
    start = time.perf_counter()
    feats, logits = _backbone_pass(gm, heads, calib.inputs)
    if logits.shape != (calib.samples, classes):
        raise SplitcError(f"the model returned scores of shape {list(logits.shape)} on the calibration data; "
                          f"expected [{calib.samples}, {classes}]")
    full = logits.argmax(1).numpy()
    if calib.labels is not None and calib.labels.max() >= classes:
        raise SplitcError(f"labels 'y' in '{calib.source}' go up to {int(calib.labels.max())} but the model "
                          f"has {classes} classes")
    truth = calib.labels if calib.labels is not None else full
    splits = calib.split(SPLITS, seed=seed)
    log.info("[exits] cached features of %d candidate(s) on %d samples (%.2fs); splits: %s", len(picked),
             calib.samples, time.perf_counter() - start, ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    train = torch.from_numpy(splits["train"])
    labels = torch.from_numpy(calib.labels)[train] if calib.labels is not None else None
    out = []
    for name, position, fraction in progress(picked, "[exits] training heads", unit="head"):
        head = heads[name]
        with seeded(derive_seed(seed, "exit-train", name), threads=1):
            loss = _train_head(head, feats[name][train], logits[train], labels, epochs)
        with torch.no_grad():
            scores = torch.softmax(head.mlp(feats[name]), dim=1)
        conf, pred = scores.max(1)
        out.append(ExitCandidate(name, position, fraction, head, confidence=conf.numpy().astype(np.float64),
                                 prediction=pred.numpy()))
        test = splits["test"]
        log.debug("[exits] head at %s: loss %.3f, alone %.3f on test", name, loss,
                  np.mean(pred.numpy()[test] == truth[test]))
    return ExitSetup(out, "labels" if calib.labels is not None else "agreement", target, splits, truth, full, classes)


def outcome(setup: ExitSetup, thresholds: list[float], index: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(accuracy, unconditional exit rate per candidate, full-model accuracy) on samples ``index``."""
    exit_at = np.full(len(index), -1)
    for e, cand in enumerate(setup.candidates):
        take = (exit_at < 0) & (cand.confidence[index] >= thresholds[e])
        exit_at[take] = e
    truth = setup.truth[index]
    pred = setup.full_prediction[index].copy()
    for e, cand in enumerate(setup.candidates):
        pred[exit_at == e] = cand.prediction[index][exit_at == e]
    beta = np.array([np.mean(exit_at == e) for e in range(len(setup.candidates))])
    return float(np.mean(pred == truth)), beta, float(np.mean(setup.full_prediction[index] == truth))


def required_accuracy(setup: ExitSetup, full_accuracy: float) -> float:
    return setup.target.required(full_accuracy)


def position_reach(n: int, positions: list[int], betas: list[float]) -> np.ndarray:
    """``reach[i]`` for cut/node index i in 0..n: share of requests still running after the exits before i.

    ``betas`` are unconditional (shares of all requests); an exit at node ``p`` acts from cut ``p + 1``.
    """
    reach = np.ones(n + 1)
    for p, b in zip(positions, betas):
        reach[p + 1:] -= b
    return np.clip(reach, 0.0, 1.0)


def node_reach(setup: ExitSetup | None, candidates) -> np.ndarray:
    """``[n+1]`` share of requests still running at each position of the graph *after* ``insert_exits``.

    Each kept exit acts right after its confidence node, with its exit rate on the calibrate split;
    all ones without exits.
    """
    n = len(candidates.nodes)
    if setup is None or not setup.chosen or not setup.tensor_names:
        return np.ones(n + 1)
    positions = [candidates.index_of(setup.tensor_names[c.candidate.node][1]) - 1 for c in setup.chosen]
    return position_reach(n, positions, [c.beta_calibrate for c in setup.chosen])


def _weighted(problem, setup: ExitSetup, active: list[int], betas: np.ndarray):
    """The planner problem with reach weights and the active exits' head costs (on the tier holding the node)."""
    import dataclasses

    node_time = problem.node_time.copy()
    positions = [setup.candidates[e].position for e in active]
    reach = position_reach(problem.n, positions, [betas[e] for e in active])
    for e in active:
        node_time[:, setup.candidates[e].position] += setup.candidates[e].head_time
    return dataclasses.replace(problem, node_time=node_time, reach=reach)


#: joint threshold settings tried exhaustively (every combination of every exit's grid) up to this many;
#: beyond, coordinate descent (a few rounds over one exit at a time)
EXHAUSTIVE_COMBINATIONS = 512


@dataclass
class _Trial:
    thresholds: list[float]
    assessment: Any  # splitc.core.placement.Assessment
    active: list[int]
    betas: np.ndarray
    weighted: Any


def _trial(problem, setup: ExitSetup, thresholds: list[float], index: np.ndarray, assess: Callable) -> _Trial:
    """Score one threshold setting: its exit rates on ``index``, the reach-weighted problem, the planner's verdict."""
    _, betas, _ = outcome(setup, thresholds, index)
    active = [e for e, t in enumerate(thresholds) if np.isfinite(t) and betas[e] > 0]  # an exit never taken only costs
    weighted = _weighted(problem, setup, active, betas)
    return _Trial(list(thresholds), assess(weighted), active, betas, weighted)


def choose_exits(problem, setup: ExitSetup, assess: Callable, grid: int = _GRID,
                 exhaustive_limit: int = EXHAUSTIVE_COMBINATIONS) -> tuple[Any, Any]:
    """Thresholds (and so which exits stay) that give the best plan under the compile's objective and constraints.

    Every setting is scored by ``assess`` -- the planner's :meth:`~splitc.core.placement.Planner.scorer`:
    the plan it would choose for the problem weighted by the setting's reach, and a key on a fixed
    scale (constraint violation, then the objective). Exits may sit anywhere (a tier holding an
    exit is cut into segments there), so any setting is consistent with any cuts and the plan for a
    given setting is exact where the planner is. Settings are searched exhaustively when there are
    at most ``exhaustive_limit`` combinations, else by coordinate descent from "no exit".

    Args:
        problem: the planner's :class:`~splitc.core.placement.ChainProblem` without exits.
        setup: trained candidates (``head_time`` filled in).
        assess: ``problem -> Assessment``.
        grid: thresholds per exit (quantiles of its confidence on the calibrate split; "never" added).

    Returns:
        The weighted problem of the chosen exits and its assessment; fills ``setup.chosen`` and ``setup.summary``.

    Raises:
        SplitcError: the target is above what the full model reaches (says what is reachable).
    """
    import itertools

    cal, test = setup.splits["calibrate"], setup.splits["test"]
    _, _, full_cal = outcome(setup, [np.inf] * len(setup.candidates), cal)
    _, _, full_test = outcome(setup, [np.inf] * len(setup.candidates), test)
    need = required_accuracy(setup, full_cal)
    margin = MARGIN_SE * binomial_margin(need, len(cal))
    if need > full_cal + 1e-12:
        what = "accuracy" if setup.reference == "labels" else "agreement with the full model"
        raise SplitcError(f"--accuracy-target {setup.target.value:g} cannot be met: the full model's {what} on the "
                          f"held-out calibration samples is {full_cal:.4f}, the most any exit setting reaches",
                          f"ask for at most {full_cal:.4f}" + ("" if setup.target.absolute else " (relative: at most 1)"))
    grids = [np.unique(np.concatenate([[np.inf], np.quantile(c.confidence[cal], np.linspace(0, 1, grid))]))
             for c in setup.candidates]

    def allowed(thresholds: list[float]) -> bool:
        return outcome(setup, thresholds, cal)[0] >= need + margin - 1e-12

    best = _trial(problem, setup, [np.inf] * len(setup.candidates), cal, assess)
    combinations = math.prod(len(g) for g in grids)
    if combinations <= exhaustive_limit:
        for values in itertools.product(*grids):
            trial = list(map(float, values))
            if allowed(trial):
                candidate = _trial(problem, setup, trial, cal, assess)
                if candidate.assessment.key < best.assessment.key:
                    best = candidate
    else:
        for _ in range(3):
            improved = False
            for e, values in enumerate(grids):
                for value in values:
                    trial = best.thresholds[:e] + [float(value)] + best.thresholds[e + 1:]
                    if trial == best.thresholds or not allowed(trial):
                        continue
                    candidate = _trial(problem, setup, trial, cal, assess)
                    if candidate.assessment.key < best.assessment.key:
                        best, improved = candidate, True
            if not improved:
                break
    thr = [t if e in best.active else np.inf for e, t in enumerate(best.thresholds)]
    if thr != best.thresholds:  # an exit no calibration sample takes: drop it
        best = _trial(problem, setup, thr, cal, assess)
    _record(setup, best, need, margin, full_cal, full_test, combinations <= exhaustive_limit)
    return best.weighted, best.assessment


def _record(setup: ExitSetup, best: _Trial, need: float, margin: float, full_cal: float, full_test: float,
            exhaustive: bool) -> None:
    """Fill ``setup.chosen`` and ``setup.summary`` (the manifest's ``exit_calibration``) and log the verdict."""
    cal, test = setup.splits["calibrate"], setup.splits["test"]
    thr = best.thresholds
    acc_cal, _, _ = outcome(setup, thr, cal)
    acc_test, beta_test, _ = outcome(setup, thr, test)
    setup.chosen = [ChosenExit(setup.candidates[e], float(thr[e]), float(best.betas[e]), float(beta_test[e]))
                    for e in best.active]
    values = best.assessment.values
    setup.summary = {
        "reference": setup.reference, "target": setup.target.value, "target_kind": setup.target.kind,
        "required_accuracy_calibrate": need, "safety_margin_calibrate": margin, "required_accuracy_test": required_accuracy(setup, full_test),
        "full_model_accuracy": {"calibrate": full_cal, "test": full_test},
        "accuracy": {"calibrate": acc_cal, "test": acc_test},
        "samples": {k: int(len(v)) for k, v in setup.splits.items()},
        "candidates": [{"node": c.node, "flops_fraction": c.flops_fraction,
                        "alone_accuracy_test": float(np.mean(c.prediction[test] == setup.truth[test]))}
                       for c in setup.candidates],
        "met_on_test": bool(acc_test >= required_accuracy(setup, full_test) - 1e-12),
        "search": {"exhaustive": exhaustive, "objective_key": [float(k) for k in best.assessment.key],
                   "planned": {k: (None if v is None else float(v)) for k, v in values.items()}},
    }
    verdict = Verdict("exit thresholds (calibrate split)", acc_cal, need, margin,
                      f"{MARGIN_SE:g} binomial standard error(s) on {len(cal)} samples", setup.target, full_cal, len(cal))
    log.info("[exits] %s", verdict.line())
    setup.summary["verdict"] = verdict.to_dict()
    if not setup.summary["met_on_test"]:
        log.warning("[exits] the exit-enabled accuracy on the held-out test split (%.4f) is below the target (%.4f); "
                    "the thresholds were chosen on %d samples: give more calibration data", acc_test,
                    required_accuracy(setup, full_test), len(cal))


def exits_manifest(setup: ExitSetup | None, partitions, names: dict[str, tuple[str, str]],
                   model_output: str) -> list[dict[str, Any]]:
    """The manifest's ``exits`` list, in chain order.

    Args:
        names: exit node -> (logits tensor name, confidence tensor name) in the graph.
        model_output: the manifest name of the model output an exit answers.
    """
    if setup is None:
        return []
    out = []
    for i, chosen in enumerate(setup.chosen):
        node = chosen.candidate.node
        logits, confidence = names[node]
        part = next(p for p in partitions if logits in p.outputs)
        out.append({
            "index": i, "node": node, "partition": part.index, "tier_index": part.tier_index,
            "outputs": {"logits": logits, "confidence": confidence}, "answers": {model_output: logits},
            "score": SCORE, "threshold": chosen.threshold,
            "exit_rate": {"calibrate": chosen.beta_calibrate, "test": chosen.beta_test},
            "head": {"pooling_grid": chosen.candidate.head.grid, "flops": int(chosen.candidate.head_flops),
                     "feature_shape": list(chosen.candidate.head.feature_shape),
                     **({"weights": setup.head_files[node]} if node in setup.head_files else {})},
            "accuracy": {"test": setup.summary["accuracy"]["test"], "reference": setup.reference},
        })
    return out


def inserted_problem(problem, candidates, setup: ExitSetup):
    """The problem of a graph that already holds the kept exits (a re-plan after ``insert_exits``).

    The head nodes are part of the graph (their times are in ``problem``); each exit acts after
    its confidence node with its calibrate exit rate. Nothing is chosen again.
    """
    import dataclasses

    return dataclasses.replace(problem, reach=node_reach(setup, candidates))


def plan_exits(problem, gm, ctx) -> Any:
    """Choose the exits' thresholds jointly with the cuts; returns the reach-weighted problem for the plan pass.

    The exits' contribution to the plan pass (a :data:`~splitc.core.placement.ProblemAdjuster`, handed in
    by the driver). Each threshold setting is scored by ``ctx.planner.scorer`` under the compile's
    objective and constraints (latency, cost, privacy, weights, ``--slo-ms`` on p50 or p99,
    ``--max-dcor``, memory), with ``--split`` cuts when forced. Once ``insert_exits`` has run (a
    capability re-plans, e.g. a rejected bottleneck), the kept exits are only re-weighted.

    Args:
        problem: the plan pass's problem without exits.
        gm: the profiled graph (unused: the trained candidates carry what is needed).
        ctx: the compile context (``ctx.exits`` trained, ``ctx.options.split`` maybe forced).
    """
    setup = getattr(ctx, "exits", None)
    if setup is None:
        return problem
    if setup.inserted:
        return inserted_problem(problem, ctx.candidates, setup)
    try:
        assess = ctx.planner.scorer(ctx, problem)
    except ValueError:  # no plan fits memory: the plan pass words that error
        return problem
    weighted, assessment = choose_exits(problem, setup, assess)
    kept = {c.candidate.node for c in setup.chosen}
    dropped = [c.node for c in setup.candidates if c.node not in kept]
    log.info("[exits] kept %s; %s", ", ".join(f"{c.candidate.node} (threshold {c.threshold:.4f}, exit rate "
                                                  f"{c.beta_calibrate:.1%})" for c in setup.chosen) or "no exit",
             f"not worth their cost under the objective: {', '.join(dropped)}" if dropped else "all candidates kept")
    return weighted if setup.chosen else problem


