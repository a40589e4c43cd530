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
