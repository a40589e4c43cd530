"""The call adapter: named inputs, optional arguments at their defaults, structured outputs flattened by name."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from splitc.core.call_adapter import (adapt_call, adapt_model, apply_call_record, flatten_outputs, needs_adapter,
                                      resolve_named_specs, unwrap)
from splitc.core.loader import InputSpec, parameter_fingerprint, trace_model
from splitc.errors import SplitcError


class MaskedEncoder(nn.Module):
    """forward(ids, mask=None, use_cache=True): a text model's calling convention, dict output, a 'cache'."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None, use_cache=True):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None].to(h.dtype)
        out = {"logits": self.fc(h.mean(1)), "hidden": (h, None)}
        if use_cache:
            out["cache"] = SimpleNamespace(layers=[SimpleNamespace(keys=h * 2, values=h * 3)])
        return out


def test_flatten_outputs_names_every_tensor_by_its_path():
    h = torch.ones(1)
    value = {"logits": h, "hidden": (h, None, 3), "cache": SimpleNamespace(layers=[SimpleNamespace(keys=h, values=h)])}
    assert list(flatten_outputs(value)) == ["logits", "hidden.0", "cache.0.key", "cache.0.value"]
    assert list(flatten_outputs((h, [h]))) == ["output_0", "output_1.0"]


def test_named_specs_are_checked_and_put_in_signature_order():
    model = MaskedEncoder()
    specs = [InputSpec("attention_mask", (1, 4), "int64"), InputSpec("input_ids", (1, 4), "int64")]
    assert [s.name for s in resolve_named_specs(model, specs)] == ["input_ids", "attention_mask"]
    with pytest.raises(SplitcError, match="has no argument 'attention_mas'.*did you mean attention_mask"):
        resolve_named_specs(model, [InputSpec("input_ids", (1, 4)), InputSpec("attention_mas", (1, 4))])
    with pytest.raises(SplitcError, match="needs input_ids but no --input gives it"):
        resolve_named_specs(model, [InputSpec("attention_mask", (1, 4))])
    with pytest.raises(SplitcError, match="given twice"):
        resolve_named_specs(model, [InputSpec("input_ids", (1, 4))] * 2)


def test_adapter_takes_the_named_inputs_and_drops_the_cache_by_default():
    model = MaskedEncoder().eval()
    adapter, notes = adapt_call(model, ["input_ids", "attention_mask"])
    assert list(inspect.signature(adapter.forward).parameters) == ["input_ids", "attention_mask"]
    assert adapter.fixed_kwargs == {"use_cache": False} and "use_cache=False" in notes[0]
    ids, mask = torch.randint(0, 50, (1, 4)), torch.tensor([[1, 1, 0, 0]])
    out = adapter(ids, mask)
    assert list(out) == ["logits", "hidden.0"]
    torch.testing.assert_close(out["logits"], model(ids, mask)["logits"])
    kept, notes = adapt_call(model, ["input_ids"], keep_cache=True)
    assert not notes and list(kept(ids)) == ["logits", "hidden.0", "cache.0.key", "cache.0.value"]


def test_adapter_traces_with_fx_to_named_placeholders_and_outputs():
    model = MaskedEncoder().eval()
    specs = [InputSpec("input_ids", (1, 4), "int64"), InputSpec("attention_mask", (1, 4), "int64")]
    adapted, record, _ = adapt_model(model, specs)
    traced = trace_model(adapted, specs)
    gm = traced.graph_module
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["input_ids", "attention_mask"]
    assert traced.output_names == ["logits", "hidden.0"]
    ids, mask = torch.randint(0, 50, (1, 4)), torch.tensor([[1, 1, 1, 0]])
    assert isinstance(gm(ids, mask), tuple)  # flat, in the names' order
    torch.testing.assert_close(gm(ids, mask)[0], model(ids, mask)["logits"])
    # the manifest's record re-creates the same call for 'splitc verify', on the user's weights
    again = apply_call_record(MaskedEncoder().eval(), record)
    again.load_state_dict(adapted.state_dict())
    torch.testing.assert_close(again(ids, mask)["logits"], adapted(ids, mask)["logits"])
    assert parameter_fingerprint(adapted) == parameter_fingerprint(model) and unwrap(adapted) is model


def test_a_model_called_with_its_required_inputs_is_traced_as_it_is():
    model = nn.Sequential(nn.Linear(4, 2))
    assert not needs_adapter(model, ["input"])
    assert adapt_model(model, [InputSpec("input", (1, 4))]) == (model, None, [])
    assert needs_adapter(MaskedEncoder(), ["input_ids", "attention_mask"])  # an optional argument given
