"""recompute_masks: a mask expanded from a per-request input is recomputed on each tier; the small input crosses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitc.core.passes.candidates import compute_candidates
from splitc.core.passes.profile import ProfilePass
from splitc.core.passes.recompute_masks import RecomputeMasksPass
from tests.conftest import make_context

SEQ, HIDDEN = 16, 8


class TwoLayerMasked(nn.Module):
    """Builds a [1, 1, S, S] boolean mask once from a [1, S] padding mask; both layers read it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer0 = nn.Linear(HIDDEN, HIDDEN)
        self.layer1 = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x, mask):
        full = mask[:, None, None, :].bool().expand(1, 1, SEQ, SEQ)
        h = self.layer0(x)[:, None]
        h = F.scaled_dot_product_attention(h, h, h, attn_mask=full)
        h = self.layer1(h)
        return F.scaled_dot_product_attention(h, h, h, attn_mask=full)


def test_the_padding_mask_crosses_instead_of_its_expansion():
    model = TwoLayerMasked().eval()
    gm = torch.fx.symbolic_trace(model)
    ctx = make_context([(1, SEQ, HIDDEN), (1, SEQ)], names=["x", "mask"])
    ctx.example_inputs[1] = torch.ones(1, SEQ)
    ctx.example_inputs[1][0, SEQ // 2:] = 0
    ProfilePass().run(gm, ctx)
    before = compute_candidates(gm)
    after_layer0 = before.index_of("layer1") - 1  # the cut right before layer1
    assert before.cuts[after_layer0].bytes >= SEQ * SEQ  # the bool [1, 1, S, S] crosses

    result = RecomputeMasksPass().run(gm, ctx)
    assert result.modified
    cuts = compute_candidates(gm)
    cut = cuts.cuts[cuts.index_of("layer1") - 1]
    nodes = {n.name: n for n in gm.graph.nodes}
    assert "mask" in cut.crossing
    assert all(tuple(nodes[n].meta["tensor_meta"].shape) != (1, 1, SEQ, SEQ) for n in cut.crossing)
    assert cut.bytes < before.cuts[after_layer0].bytes
    torch.testing.assert_close(gm(*ctx.example_inputs), model(*ctx.example_inputs))
