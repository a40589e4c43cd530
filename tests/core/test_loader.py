import pytest
import torch

from splitc.core.loader import (InputSpec, infer_input_specs, load_model, parameter_fingerprint,
                                    parse_input_shape, trace_model)
from splitc.errors import SplitcError
from tests.models import Chain, DataDependent, ShapeBranch, TwoInputs


def test_pickled_module(tmp_path):
    path = tmp_path / "m.pt"
    model = Chain().eval()
    torch.save(model, path)
    loaded = load_model(str(path))
    assert loaded.source["kind"] == "file" and len(loaded.source["sha256"]) == 64
    assert parameter_fingerprint(loaded.module) == parameter_fingerprint(model)


def test_factory_is_seeded_and_reproducible():
    a = load_model("tests.models:chain", seed=3).module
    b = load_model("tests.models:chain", seed=3).module
    assert parameter_fingerprint(a) == parameter_fingerprint(b)
    assert load_model("torchvision.models:resnet18").source == {"kind": "factory", "spec": "torchvision.models:resnet18", "seed": 0}


def test_exported_program_gives_input_shape(tmp_path):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(Chain().eval(), (torch.randn(1, 3, 8, 8),)), path)
    loaded = load_model(str(path))
    specs = infer_input_specs(loaded, [], [])
    assert specs == [InputSpec("x", (1, 3, 8, 8), "float32")]


@pytest.mark.parametrize("content,match", [
    (b"not a pickle at all", "cannot read model file"),
    (b"", "cannot read model file"),
])
def test_corrupt_file(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(SplitcError, match=match):
        load_model(str(path))


def test_state_dict_is_explained(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(Chain().state_dict(), path)
    with pytest.raises(SplitcError, match="state_dict"):
        load_model(str(path))


def test_torchscript_archive_is_explained(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(Chain().eval()), path)
    with pytest.raises(SplitcError, match="TorchScript"):
        load_model(str(path))


@pytest.mark.parametrize("spec,match", [
    ("missing.pt", "does not exist"),
    ("no_such_package.mod:make", "cannot import"),
    ("torchvision.models:no_such_model", "has no attribute"),
    ("just-a-word", "cannot interpret model"),
])
def test_bad_specs(spec, match):
    with pytest.raises(SplitcError, match=match):
        load_model(spec)


def test_input_shape_inferred_from_first_layer():
    specs = infer_input_specs(load_model("torchvision.models:resnet18"), [], [])
    assert specs == [InputSpec("x", (1, 3, 224, 224), "float32")]


def test_input_shape_count_must_match_inputs():
    loaded = load_model("tests.models:TwoInputs")
    with pytest.raises(SplitcError, match="takes 2 input"):
        infer_input_specs(loaded, [(2, 8)], [])
    specs = infer_input_specs(loaded, [(2, 8), (2, 4)], ["float32"])
    assert [s.name for s in specs] == ["x", "y"]


@pytest.mark.parametrize("text", ["", "a,b", "1,-3", "0,3"])
def test_bad_input_shape(text):
    with pytest.raises(SplitcError, match="--input-shape"):
        parse_input_shape(text)


def test_export_fallback_is_used_and_said():
    traced = trace_model(ShapeBranch().eval(), [InputSpec("x", (1, 4))])
    assert traced.method == "torch.export"
    assert "symbolic_trace failed" in traced.notes[0]


def test_untraceable_names_the_construct():
    with pytest.raises(SplitcError) as info:
        trace_model(DataDependent().eval(), [InputSpec("x", (1, 4))])
    message = str(info.value)
    assert "symbolic_trace" in message and "torch.export" in message
    assert "models.py" in message and "if y.sum() > 0" in message


# --------------------------------------------------------------------------- issue 18 and 16 (items 4, 6)

import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

from torch import nn  # noqa: E402

from splitc.core.loader import InputSettings, make_example_inputs, parse_named_input, pt2_pytree_types  # noqa: E402
from splitc.core.options import CompileOptions  # noqa: E402
from splitc.core.tracing import is_library_file  # noqa: E402


class TextNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, tokens, mask=None):
        h = self.embed(tokens)
        return self.fc(h.mean(1) if mask is None else (h * mask[..., None]).sum(1))


def test_named_inputs_parse_once_with_one_line_errors():
    assert parse_named_input("input_ids:1x64:int64") == InputSpec("input_ids", (1, 64), "int64")
    assert parse_named_input("pixel_values:1,3,8,8") == InputSpec("pixel_values", (1, 3, 8, 8), "float32")
    for text, match in [("ids", "invalid --input"), ("1d:1x4", "invalid input name"), ("x:1x4:int65", "unknown dtype"),
                        ("x:1x0", "invalid --input shape")]:
        with pytest.raises(SplitcError, match=match):
            parse_named_input(text)
    with pytest.raises(SplitcError, match="given twice"):
        InputSettings.from_options(CompileOptions(targets=("jetson",), inputs=("x:1x4", "x:1x4")))


def test_named_inputs_select_optional_arguments():
    loaded = load_model("tests.core.test_loader:TextNet")
    specs = infer_input_specs(loaded, [], [], [parse_named_input("mask:1x6"), parse_named_input("tokens:1x6:int64")])
    assert [s.name for s in specs] == ["tokens", "mask"]
    with pytest.raises(SplitcError, match="cannot be combined"):
        infer_input_specs(loaded, [(1, 6)], [], [parse_named_input("tokens:1x6:int64")])
    # positional shapes beyond the required ones map to the next parameters, as a Python call would
    assert [s.name for s in infer_input_specs(loaded, [(1, 6), (1, 6)], ["int64", "float32"])] == ["tokens", "mask"]


def test_assumed_input_shape_is_a_warning_and_recorded(caplog):
    """Issue 16 item 4: a 224x224 guess is said where -q does not hide it (WARNING) and kept in the spec."""
    with caplog.at_level(logging.INFO, logger="splitc"):
        (spec,) = infer_input_specs(load_model("torchvision.models:resnet18"), [], [])
    assert spec.shape == (1, 3, 224, 224) and "224x224" in spec.assumed and "--input-shape" in spec.assumed
    assert spec.to_dict()["assumed"] == spec.assumed
    assert any(r.levelno == logging.WARNING and "assumed" in r.getMessage() for r in caplog.records)
    (tokens,) = infer_input_specs(load_model("tests.core.test_loader:TextNet"), [], [])
    assert (tokens.shape, tokens.dtype) == ((1, 128), "int64") and "Embedding" in tokens.assumed
    (given,) = infer_input_specs(load_model("torchvision.models:resnet18"), [(1, 3, 32, 32)], [])
    assert given.assumed is None and "assumed" not in given.to_dict()


def test_model_class_defined_in_main_is_explained(tmp_path):
    """Issue 16 item 6: the real cause (the class must be importable here) and the three fixes."""
    script = textwrap.dedent(f"""
        import torch
        class TextNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 2)
            def forward(self, x):
                return self.fc(x)
        torch.save(TextNet(), r"{tmp_path / 'textnet.pt'}")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    with pytest.raises(SplitcError) as info:
        load_model(str(tmp_path / "textnet.pt"))
    text = info.value.one_line()
    assert "class TextNet was defined in the script that saved it (__main__)" in text
    assert "must be importable where splitc runs" in text
    assert "module" in text and "package.module:factory" in text and ".pt2" in text


def test_model_class_in_a_module_that_is_gone_is_explained(tmp_path, monkeypatch):
    (tmp_path / "gone_models_xyz.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_models_xyz

    torch.save(gone_models_xyz.Net(2, 2), tmp_path / "net.pt")
    monkeypatch.delitem(sys.modules, "gone_models_xyz")
    (tmp_path / "gone_models_xyz.py").unlink()
    with pytest.raises(SplitcError, match="module 'gone_models_xyz', which is not importable here"):
        load_model(str(tmp_path / "net.pt"))


def test_pt2_names_a_pytree_type_it_cannot_import(tmp_path):
    """A .pt2 whose output type is defined in a package not installed here: one line, no traceback."""
    (tmp_path / "mypkg_out_xyz.py").write_text(textwrap.dedent("""
        import dataclasses, torch
        @dataclasses.dataclass
        class Out:
            y: torch.Tensor
        torch.utils._pytree.register_dataclass(Out, serialized_type_name="mypkg_out_xyz.Out")
        class Net(torch.nn.Module):
            def forward(self, x):
                return Out(x * 2)
    """))
    script = ("import sys, torch; sys.path.insert(0, '.'); import mypkg_out_xyz as m; "
              "torch.export.save(torch.export.export(m.Net(), (torch.ones(1, 2),)), 'out.pt2')")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    (tmp_path / "mypkg_out_xyz.py").unlink()
    assert "mypkg_out_xyz.Out" in pt2_pytree_types(tmp_path / "out.pt2")
    with pytest.raises(SplitcError, match=r"use mypkg_out_xyz.Out, which is not registered .* \(No module named"):
        load_model(str(tmp_path / "out.pt2"))


def test_pt2_exported_with_kwargs_and_a_dict_output_is_flat_and_named(tmp_path):
    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(4, 4)

        def forward(self, x, scale):
            return {"y": self.block(x) * scale, "z": x.sum(-1)}

    path = tmp_path / "m.pt2"
    x, scale = torch.randn(1, 4), torch.full((1, 1), 2.0)
    torch.export.save(torch.export.export(DictOut().eval(), (), {"x": x, "scale": scale}), path)
    loaded = load_model(str(path))
    traced = trace_model(loaded.module, loaded.input_specs)
    assert traced.output_names == ["y", "z"]
    assert all(n.meta.get("splitc.module_path") == "block" for n in traced.graph_module.graph.nodes
               if n.op == "call_function" and "linear" in str(n.target))
    out = traced.graph_module(x, scale)
    assert isinstance(out, tuple) and len(out) == 2


class IdsWithShapeBranch(nn.Module):
    """fx fails on the shape branch; torch.export then runs the embedding on the (float) example input."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, ids):
        if ids.shape[-1] > 2:
            ids = ids[:, :2]
        return self.embed(ids).sum(1)


def test_trace_failures_get_a_hint_that_fits_and_torch_stays_quiet(capfd):
    with pytest.raises(SplitcError, match="reads integer ids: pass --input-dtype int64"):
        trace_model(IdsWithShapeBranch(), [InputSpec("ids", (1, 4))])
    with pytest.raises(SplitcError, match="branches on tensor values: use torch.where / torch.cond"):
        trace_model(DataDependent().eval(), [InputSpec("x", (1, 4))])
    assert len(capfd.readouterr().err.splitlines()) < 3  # no partial-graph dump from torch.export


def test_export_bookkeeping_is_not_in_the_graph():
    gm = trace_model(ShapeBranch().eval(), [InputSpec("x", (1, 4))]).graph_module
    names = [str(n.target) for n in gm.graph.nodes]
    assert not any("_guards_fn" in t or "_assert" in t for t in names), names


def test_optional_arguments_left_at_their_defaults_are_not_inputs():
    class WithOptional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, attn_mask=None, is_causal=False):
            assert attn_mask is None
            return self.fc(x)

    traced = trace_model(WithOptional(), [InputSpec("x", (1, 4))])
    assert traced.method == "symbolic_trace"
    assert [n.name for n in traced.graph_module.graph.nodes if n.op == "placeholder"] == ["x"]


def test_torchvision_frames_are_model_code_not_torch():
    import torchvision

    assert not is_library_file(str(Path(torchvision.__file__).parent / "models" / "detection" / "ssd.py"))
    assert is_library_file(torch.__file__)


def test_mask_inputs_are_padding_masks():
    ids, mask, types = make_example_inputs([InputSpec("input_ids", (1, 16), "int64"),
                                            InputSpec("attention_mask", (1, 16), "int64"),
                                            InputSpec("token_type_ids", (1, 16), "int64")])
    valid = int(mask.sum())
    assert valid >= 1 and mask[0, :valid].eq(1).all() and mask[0, valid:].eq(0).all()
    assert types.eq(0).all()
