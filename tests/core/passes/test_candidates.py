"""Cut candidates: checked against a brute-force liveness computation on every tiny model."""

import pytest
import torch

from splitc.core.graph import COMPUTE_OPS
from splitc.core.passes.candidates import compute_candidates
from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
from splitc.core.passes.profile import ProfilePass
from tests.conftest import make_context
from tests.models import INPUT_SHAPES, Attention, BranchConcat, Chain, MultiOutput, Residual


def prepared(model_cls):
    gm = torch.fx.symbolic_trace(model_cls().eval())
    ctx = make_context(INPUT_SHAPES[model_cls])
    EliminateDeadCodePass().run(gm, ctx)
    ProfilePass().run(gm, ctx)
    FoldStaticShapesPass().run(gm, ctx)
    return gm


def brute_force_crossing(gm, k):
    """Values defined before cut k and read at or after it (the output node reads last)."""
    order = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    before = set(order[:k]) | {n for n in gm.graph.nodes if n.op == "placeholder"}
    after = set(order[k:]) | {n for n in gm.graph.nodes if n.op == "output"}
    return {v.name for v in before if any(u in after for u in v.users)}


@pytest.mark.parametrize("model_cls", list(INPUT_SHAPES))
def test_crossing_sets_match_brute_force(model_cls):
    gm = prepared(model_cls)
    candidates = compute_candidates(gm)
    assert len(candidates.cuts) == len(candidates.nodes) + 1
    for cut in candidates.cuts:
        assert set(cut.crossing) == brute_force_crossing(gm, cut.index), cut
        nodes = {n.name: n for n in gm.graph.nodes}
        assert cut.bytes == sum(nodes[n].meta["splitc.out_bytes"] for n in cut.crossing if cut.legal) or not cut.legal


def test_chain_carries_one_tensor_per_cut():
    candidates = compute_candidates(prepared(Chain))
    assert all(len(c.crossing) == 1 for c in candidates.cuts)
    assert candidates.cuts[0].crossing == ("x",) and candidates.cuts[0].after is None
    assert candidates.cuts[-1].crossing == ("fc",)


def test_residual_cut_carries_skip_tensor():
    candidates = compute_candidates(prepared(Residual))
    inside = candidates.cuts[candidates.index_of("a")]
    assert set(inside.crossing) == {"relu", "a"}  # the block input (skip) and the branch
    after_add = candidates.cuts[candidates.index_of("relu_2")]
    assert after_add.crossing == ("relu_2",)


def test_branch_concat_carries_every_branch():
    candidates = compute_candidates(prepared(BranchConcat))
    cut = candidates.cuts[candidates.index_of("b1")]
    assert set(cut.crossing) == {"relu", "b1"}
    widest = max(candidates.cuts, key=lambda c: len(c.crossing))
    assert len(widest.crossing) == 3


def test_early_model_output_stays_live_to_the_end():
    candidates = compute_candidates(prepared(MultiOutput))
    assert all("sigmoid" in c.crossing for c in candidates.cuts[candidates.index_of("sigmoid"):])


def test_tuple_valued_node_makes_cut_illegal():
    candidates = compute_candidates(prepared(Attention))
    cut = candidates.cuts[candidates.index_of("attn")]
    assert not cut.legal and "attn" in cut.reason
    assert candidates.cuts[candidates.index_of("getitem")].legal


def test_dead_code_would_keep_a_tuple_live():
    gm = torch.fx.symbolic_trace(Attention().eval())
    ctx = make_context(INPUT_SHAPES[Attention])
    ProfilePass().run(gm, ctx)
    FoldStaticShapesPass().run(gm, ctx)
    candidates = compute_candidates(gm)  # without eliminate_dead_code: the unused getitem_1 reads 'attn'
    assert not candidates.cuts[candidates.index_of("getitem")].legal


def test_cuts_are_named_after_the_blocks_they_follow():
    from splitc.core.loader import InputSpec, trace_model

    model = torch.nn.Sequential()
    model.add_module("stem", torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    model.add_module("block", torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    gm = trace_model(model, [InputSpec("x", (1, 4))]).graph_module
    ProfilePass().run(gm, make_context([(1, 4)]))
    candidates = compute_candidates(gm)
    assert candidates.index_of("stem") == 2 and candidates.index_of("block.0") == 3
    assert [c.block for c in candidates.cuts] == ["", "stem.0", "stem", "block.0", "block"]
    assert "stem" in candidates.names()


def test_a_value_of_data_dependent_shape_never_crosses():
    from splitc.core.detectors import DYNAMIC_SHAPE

    gm = prepared(Chain)
    node = next(n for n in gm.graph.nodes if n.op == "call_module")
    node.meta[DYNAMIC_SHAPE] = True
    cut = compute_candidates(gm).cuts[1]
    assert not cut.legal and "data-dependent shape" in cut.reason
