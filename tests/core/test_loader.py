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
