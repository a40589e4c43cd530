import torch

from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
from tests.conftest import make_context
from tests.models import INPUT_SHAPES, Attention


def test_unused_getitem_removed_and_outputs_unchanged():
    model = Attention().eval()
    gm = torch.fx.symbolic_trace(model)
    assert "getitem_1" in {n.name for n in gm.graph.nodes}
    ctx = make_context(INPUT_SHAPES[Attention])
    result = EliminateDeadCodePass().run(gm, ctx)
    assert result.modified and "1 dead" in result.summary
    assert "getitem_1" not in {n.name for n in gm.graph.nodes}
    x = ctx.example_inputs[0]
    torch.testing.assert_close(gm(x), model(x))
