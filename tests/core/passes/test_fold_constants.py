import torch
from torch import nn

from splitc.core.passes.fold_constants import FoldConstantsPass
from tests.conftest import make_context


class BiasFromTable(nn.Module):
    """Computes a bias from parameters only (like Swin's relative-position bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(4, 3))
        self.register_buffer("index", torch.tensor([2, 0, 1, 3]))
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        bias = self.table[self.index].sum(0)
        return self.fc(x) + bias


def test_parameter_only_subgraph_becomes_a_buffer():
    model = BiasFromTable().eval()
    gm = torch.fx.symbolic_trace(model)
    ctx = make_context([(2, 3)])
    result = FoldConstantsPass().run(gm, ctx)
    assert result.modified
    kinds = {(n.op, str(n.target)) for n in gm.graph.nodes}
    assert not any("getitem" in t or t == "sum" for _, t in kinds), kinds
    assert any(op == "get_attr" and t.startswith("_splitc_const_") for op, t in kinds)
    x = ctx.example_inputs[0]
    torch.testing.assert_close(gm(x), model(x))


def test_nothing_to_fold_is_a_no_op():
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    assert not FoldConstantsPass().run(gm, make_context([(1, 3)])).modified


# --------------------------------------------------------------------------- constants without weights (issue 18)

from splitc.core.passes.fold_constants import (RefoldConstantsPass, drop_empty_concat_inputs,  # noqa: E402
                                               functionalize_private_inplace)
from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass  # noqa: E402
from splitc.core.passes.profile import ProfilePass  # noqa: E402


class PositionsAndMask(nn.Module):
    """Position ids from arange(x.size(1)) and an all-True mask from ones_like: what a transformer
    builds when called without a mask. Neither depends on the request."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(16, 4)

    def forward(self, x):
        positions = torch.arange(x.size(1))
        mask = torch.ones_like(x[..., 0]).bool()[:, None, :]
        return (x + self.pos(positions)).masked_fill(~mask[..., None].squeeze(1), 0.0)


def _folded_graph(model, shape):
    gm = torch.fx.symbolic_trace(model)
    ctx = make_context([shape])
    FoldConstantsPass().run(gm, ctx)
    ProfilePass().run(gm, ctx)
    FoldStaticShapesPass().run(gm, ctx)
    result = RefoldConstantsPass().run(gm, ctx)
    return gm, ctx, result


def test_position_ids_and_shape_only_masks_fold_once_shapes_are_static():
    model = PositionsAndMask().eval()
    gm, ctx, result = _folded_graph(model, (1, 6, 4))
    assert result.modified
    targets = {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes}
    assert not targets & {"arange", "ones_like"}, targets
    buffers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.startswith("_splitc_const_")]
    assert buffers and all("splitc.out_bytes" in n.meta for n in buffers)  # profiled like any weight
    torch.testing.assert_close(gm(ctx.example_inputs[0]), model(ctx.example_inputs[0]))


class WrittenThroughAView(nn.Module):
    """A zero batch written through a view (torchvision's image batching): never a constant."""

    def forward(self, x):
        batch = torch.zeros(2, 4)
        batch[0].copy_(x[0])
        return batch * 2


def test_a_buffer_written_through_a_view_is_not_folded():
    model = WrittenThroughAView()
    x = torch.randn(1, 4)
    gm = torch.export.export(model, (x,)).module()  # aten.zeros, aten.select, aten.copy_ (fx would bake zeros in)
    FoldConstantsPass().run(gm, make_context([(1, 4)]))
    assert any("zeros" in str(n.target) for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), model(x))


def test_private_inplace_ops_become_functional_and_empty_concat_operands_go():
    class Buckets(nn.Module):
        def forward(self, x):
            b = torch.arange(4) * 2
            b += 1  # T5's relative-position buckets: in place on a private intermediate
            return x + b

    gm = torch.export.export(Buckets(), (torch.zeros(4, dtype=torch.int64),)).module()
    assert functionalize_private_inplace(gm) == 1
    gm.recompile()
    assert Buckets()(torch.zeros(4, dtype=torch.int64)).tolist() == gm(torch.zeros(4, dtype=torch.int64)).tolist()

    class EmptyCat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("empty", torch.tensor([]))

        def forward(self, x):
            return torch.cat([self.empty, x])  # legal in torch for a 1-D empty operand, not in ONNX

    traced = torch.fx.symbolic_trace(EmptyCat())
    assert drop_empty_concat_inputs(traced) == 1
    traced.recompile()
    torch.testing.assert_close(traced(torch.ones(2, 3)), torch.ones(2, 3))
