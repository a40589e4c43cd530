"""Cutting at every legal position reproduces the original model exactly."""

import pytest
import torch

from splitc.core.pass_manager import PassManager
from splitc.core.placement import PlanChoice, PlanResult
from splitc.core.passes.candidates import CandidatesPass
from splitc.core.passes.cut import CutPass
from splitc.core.samples import run_partitions
from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
from splitc.core.passes.fold_constants import FoldConstantsPass
from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
from splitc.core.passes.profile import ProfilePass
from tests.conftest import make_context
from tests.models import INPUT_SHAPES, MultiOutput, Residual


def analysed(model_cls, targets=("jetson", "cloud-gpu")):
    model = model_cls().eval()
    gm = torch.fx.symbolic_trace(model)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    ctx = make_context(INPUT_SHAPES[model_cls], targets=targets, names=names)
    passes = [EliminateDeadCodePass(), FoldConstantsPass(), ProfilePass(), FoldStaticShapesPass(), CandidatesPass()]
    gm = PassManager(passes).run(gm, ctx)
    return model, gm, ctx


def force(ctx, cuts):
    n = len(ctx.candidates.nodes)
    choice = PlanChoice(tuple(cuts), (None,) * len(cuts), ((),) * len(cuts), (0,) * len(cuts),
                        (0.0,) * (len(cuts) + 1), (0.0,) * len(cuts), (0.0,) * (len(cuts) + 1), 0.0)
    ctx.plan_result = PlanResult([t.name for t in ctx.tiers], [], choice, forced=True)
    assert all(0 <= c <= n for c in cuts)


@pytest.mark.parametrize("model_cls", list(INPUT_SHAPES))
def test_every_legal_two_tier_cut_composes(model_cls):
    model, gm, ctx = analysed(model_cls)
    names = [s.name for s in ctx.input_specs]
    want = model(*ctx.example_inputs)
    want = want if isinstance(want, tuple) else (want,)
    for cut in ctx.candidates.cuts:
        if not cut.legal:
            continue
        force(ctx, [cut.index])
        CutPass().run(gm, ctx)  # raises if the partitions do not compose
        values = run_partitions(ctx.partitions, names, ctx.example_inputs)
        from splitc.core.graph import model_output_names
        for name, expected in zip(model_output_names(gm), want):
            torch.testing.assert_close(values[name], expected, rtol=1e-5, atol=1e-6)
        # a partition's outputs are exactly what crosses its cut and was produced there
        if 0 < cut.index < len(ctx.candidates.nodes):
            first = ctx.partitions[0]
            assert set(first.outputs) == set(cut.crossing) - set(names)


def test_three_tiers_with_empty_middle_tier_relays():
    _, gm, ctx = analysed(Residual, targets=("jetson", "edge", "cloud-gpu"))
    k = ctx.candidates.index_of("a")
    force(ctx, [k, k])
    CutPass().run(gm, ctx)
    assert [p.tier_index for p in ctx.partitions] == [0, 2]
    assert set(ctx.partitions[1].inputs) == {"relu", "a"}


def test_early_output_is_relayed_not_reemitted():
    _, gm, ctx = analysed(MultiOutput)
    force(ctx, [ctx.candidates.index_of("c2")])
    CutPass().run(gm, ctx)
    first, second = ctx.partitions
    assert "sigmoid" in first.outputs
    assert "sigmoid" not in second.outputs and "sigmoid" not in second.inputs  # second never reads it


def test_weights_copied_only_where_used():
    _, gm, ctx = analysed(Residual)
    force(ctx, [ctx.candidates.index_of("relu")])
    CutPass().run(gm, ctx)
    first, second = ctx.partitions
    assert set(first.graph_module.state_dict()) == {"stem.weight", "stem.bias"}
    assert "stem.weight" not in second.graph_module.state_dict()
