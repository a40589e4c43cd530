import pytest
import torch
from torch import nn

from splitc.errors import SplitcError
from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
from splitc.core.passes.profile import ProfilePass, classify
from tests.conftest import make_context
from tests.models import IMAGE, Attention, Chain, UsesShape


def profiled(model, shapes):
    gm = torch.fx.symbolic_trace(model.eval())
    ctx = make_context(shapes)
    ProfilePass().run(gm, ctx)
    return gm, ctx, {n.name: n for n in gm.graph.nodes}


def test_conv_and_linear_flops_match_formulas():
    gm, _, nodes = profiled(Chain(), [IMAGE])
    # conv1: 3->8, 3x3, 8x8 output: 2 * Cin*k*k * Cout*H*W
    assert nodes["conv1"].meta["splitc.flops"] == 2 * 3 * 9 * 8 * 8 * 8
    assert nodes["conv1"].meta["splitc.flops_source"] == "counted"
    assert nodes["conv2"].meta["splitc.flops"] == 2 * 8 * 9 * 16 * 4 * 4
    assert nodes["fc"].meta["splitc.flops"] == 2 * 16 * 10
    assert nodes["conv1"].meta["splitc.op_class"] == "conv"
    assert nodes["fc"].meta["splitc.op_class"] == "matmul"


def test_bytes_params_and_classes():
    _, _, nodes = profiled(Chain(), [IMAGE])
    conv1 = nodes["conv1"].meta
    assert conv1["splitc.out_bytes"] == 8 * 8 * 8 * 4
    assert conv1["splitc.in_bytes"] == 3 * 8 * 8 * 4
    assert conv1["splitc.param_bytes"] == (8 * 3 * 9 + 8) * 4
    assert nodes["bn1"].meta["splitc.op_class"] == "norm"
    assert nodes["bn1"].meta["splitc.foldable"] is True  # BatchNorm right after a conv folds at export
    assert nodes["relu"].meta["splitc.op_class"] == "elementwise"
    assert nodes["relu"].meta["splitc.flops_source"] == "estimated"
    assert nodes["pool"].meta["splitc.op_class"] == "pool"
    assert nodes["flatten"].meta["splitc.op_class"] == "view"
    assert nodes["flatten"].meta["splitc.flops"] == 0
    assert nodes["x"].meta["tensor_meta"].shape == torch.Size(IMAGE)


def test_attention_flops_counted_inside_leaf_module():
    _, _, nodes = profiled(Attention(), [(1, 5, 6)])
    attn = nodes["attn"].meta
    assert attn["splitc.op_class"] == "attention"
    # in-projection 3*(L*E*E) + scores L*L*E + weighted sum L*L*E + out-projection L*E*E, x2 for FLOPs
    L, E = 5, 16
    assert attn["splitc.flops"] == 2 * (3 * L * E * E + 2 * L * L * E + L * E * E)
    assert attn["splitc.is_tensor"] is False  # (output, weights) tuple


@pytest.mark.parametrize("name,expected", [
    ("conv2d", "conv"), ("convolution", "conv"), ("linear", "matmul"), ("bmm", "matmul"),
    ("scaled_dot_product_attention", "attention"), ("batchnorm2d", "norm"), ("layer_norm", "norm"),
    ("maxpool2d", "pool"), ("cat", "data_movement"), ("permute", "data_movement"), ("flatten", "view"),
    ("getitem", "view"), ("softmax", "reduction"), ("gelu", "elementwise"), ("add", "elementwise"),
])
def test_classify(name, expected):
    assert classify(name) == expected


def test_wrong_input_shape_names_node_and_flag():
    gm = torch.fx.symbolic_trace(Chain().eval())
    ctx = make_context([(1, 4, 8, 8)])
    with pytest.raises(SplitcError) as info:
        ProfilePass().run(gm, ctx)
    message = str(info.value)
    assert "conv1" in message and "--input-shape" in message and "1x4x8x8" in message


def test_shape_arithmetic_folds_to_constants():
    model = UsesShape().eval()
    gm = torch.fx.symbolic_trace(model)
    ctx = make_context([IMAGE])
    ProfilePass().run(gm, ctx)
    before = [n for n in gm.graph.nodes if n.op == "call_function" and "getattr" in str(n.target)]
    assert before, "the traced graph should read x.shape"
    result = FoldStaticShapesPass().run(gm, ctx)
    assert result.modified
    ops = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    assert all(n.meta["splitc.is_tensor"] for n in ops)
    x = ctx.example_inputs[0]
    torch.testing.assert_close(gm(x), model(x))


def test_unused_buffers_count_as_params():
    model = nn.Sequential(nn.BatchNorm1d(4))
    _, _, nodes = profiled(model, [(2, 4)])
    assert nodes["_0"].meta["splitc.param_bytes"] == (4 * 4) * 4 + 8  # weight, bias, mean, var + int64 counter
