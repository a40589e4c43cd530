"""Models as users have them: transformers, timm, torchvision detection and segmentation (issue 18).

Every family compiles to 2 and 3 forced tiers (cuts named by module path, as a user reads them
off ``splitc plan``) and is verified in ONNX Runtime against PyTorch at compile time. All models
are tiny, built from configs with random weights (``tests/hf_zoo.py``); nothing is downloaded.
The fast tests cover each mechanism once (named inputs, a decoder's cache, constant folding and
recomputed masks on the wire, the detector adapter, a text model's calibration data, trace
failures); the ``slow`` matrix runs every family.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("timm")

from splitc.core.loader import InputSpec, trace_model  # noqa: E402
from splitc.core.options import CompileOptions  # noqa: E402
from splitc.driver.pipeline import compile_model  # noqa: E402
from splitc.errors import SplitcError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TWO, THREE = ("jetson", "cloud-gpu"), ("jetson", "edge", "cloud-gpu")
IDS, MASK = "input_ids:1x64:int64", "attention_mask:1x64:int64"
HIDDEN = 64 * 64 * 4  # the tiny BERT's hidden state [1, 64, 64] float32


def _compile(tmp_path: Path, spec: str, split: tuple[str, ...], targets=TWO, shapes=None, dtypes=None,
             **options) -> dict:
    options.setdefault("emit", ("none",))
    out = tmp_path / f"bundle{len(targets)}"
    result = compile_model(spec, CompileOptions(targets=targets, split=split, **options), out, shapes, dtypes)
    manifest = result.manifest
    assert manifest["verification"]["passed"], manifest["verification"]
    assert len(manifest["partitions"]) == len(targets)
    assert len(manifest["transfers"]) == len(targets) - 1
    candidates = result.prepared.ctx.candidates  # each cut right after the block it names
    assert [c["index"] for c in manifest["plan"]["cuts"]] == [candidates.index_of(name) for name in split]
    return manifest


def _wire(manifest: dict) -> list[list[tuple[list[int], str]]]:
    return [[(t["shape"], t["dtype"]) for t in transfer["tensors"]] for transfer in manifest["transfers"]]


# --------------------------------------------------------------------------- fast: one test per mechanism


def test_bert_links_carry_the_hidden_state_alone(tmp_path):
    """input_ids only: position ids and the all-True [1, 1, S, S] mask are constants, folded into the
    partitions; every link of a 3-tier split ships exactly the [1, 64, 64] hidden state (scope 5)."""
    m = _compile(tmp_path, "tests.hf_zoo:bert", ("bert.embeddings", "bert.encoder.layer.0"), THREE,
                 shapes=[(1, 64)], dtypes=["int64"])
    assert _wire(m) == [[([1, 64, 64], "float32")]] * 2
    assert [t["bytes"] for t in m["transfers"]] == [HIDDEN, HIDDEN]
    assert [o["name"] for o in m["model"]["outputs"]] == ["logits"]


def test_bert_with_attention_mask_by_name(tmp_path):
    """--input by name; the expanded [1, 1, S, S] mask is recomputed on each tier, the 1 x S mask crosses."""
    m = _compile(tmp_path, "tests.hf_zoo:bert", ("bert.encoder.layer.0",), inputs=(IDS, MASK))
    assert [i["name"] for i in m["model"]["inputs"]] == ["input_ids", "attention_mask"]
    assert m["model"]["source"]["call"] == {"inputs": ["input_ids", "attention_mask"], "kwargs": {"return_dict": True}}
    assert sorted(_wire(m)[0]) == [([1, 64], "int64"), ([1, 64, 64], "float32")]
    assert m["transfers"][0]["bytes"] == HIDDEN + 64 * 8


def test_gpt2_default_config_compiles_without_its_cache(tmp_path):
    m = _compile(tmp_path, "tests.hf_zoo:gpt2", ("transformer.h.0",), shapes=[(1, 64)])
    assert m["model"]["inputs"][0]["dtype"] == "int64"  # from the name input_ids
    assert any("use_cache=False" in n for n in m["model"]["trace"]["notes"])
    assert m["model"]["source"]["call"]["kwargs"]["use_cache"] is False
    assert _wire(m) == [[([1, 64, 64], "float32")]]  # the causal mask is folded


def test_tiny_ssd_body_is_cut_and_post_processing_runs_whole_on_the_last_tier(tmp_path):
    m = _compile(tmp_path, "tests.hf_zoo:tiny_ssd", ("backbone.a", "head.regression_head"), THREE)
    assert [o["name"] for o in m["model"]["outputs"]] == ["boxes", "scores", "labels"]
    assert m["model"]["inputs"] == [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"}]  # its transform
    assert m["model"]["source"]["call"]["adapter"] == "torchvision_detection"
    assert "NonMaxSuppression" in m["partitions"][-1]["op_types"]  # inside an If: op types of subgraphs count
    assert m["partitions"][-1]["tier"] == "cloud-gpu-t4"


def test_a_cut_never_ships_detections(tmp_path):
    from splitc.driver.pipeline import plan_model

    prepared = plan_model("tests.hf_zoo:tiny_ssd", CompileOptions(targets=TWO))
    cuts = prepared.ctx.candidates.cuts
    tail = next(c for c in cuts if c.after == "boxes")
    assert not tail.legal and "data-dependent shape" in tail.reason
    assert cuts[prepared.ctx.candidates.index_of("backbone.a")].legal


def test_untraceable_detector_fails_in_one_line_naming_the_file(capfd):
    """A detector inside the user's own module: the fx and export failures name the user's file and
    torchvision's, the hint fits a data-dependent tail, and torch's graph dump stays off stderr."""
    from tests.hf_zoo import WrappedDetector

    with pytest.raises(SplitcError) as info:
        trace_model(WrappedDetector().eval(), [InputSpec("x", (1, 3, 64, 64))])
    text = info.value.one_line()
    assert "hf_zoo.py:" in text and ("ssd.py:" in text or "transform.py:" in text or "boxes.py:" in text)
    assert "'det' is a torchvision SSD" in text and "raw head outputs" in text  # the module, and the fixes
    assert len(capfd.readouterr().err.splitlines()) < 5


def test_text_model_with_named_calibration_arrays_and_uint8_wire(tmp_path):
    """--calib holds one array per input name plus y: the inputs come from it, the accuracy guard
    judges the uint8 wire on held-out text samples, the mask crosses raw."""
    from tests.hf_zoo import bert

    generator = torch.Generator().manual_seed(0)
    n, length = 96, 32
    ids = torch.randint(0, 1000, (n, length), generator=generator)
    mask = (torch.arange(length)[None] < torch.randint(4, length + 1, (n, 1), generator=generator)).long()
    torch.manual_seed(0)  # the factory's seed: the labels are the compiled model's own predictions
    with torch.no_grad():
        y = bert()(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    calib = tmp_path / "text.npz"
    np.savez(calib, input_ids=ids.numpy(), attention_mask=mask.numpy(), y=y.numpy())
    m = _compile(tmp_path, "tests.hf_zoo:bert", ("bert.encoder.layer.0",), calib=str(calib), transfer_dtype="uint8")
    assert [(i["name"], i["shape"]) for i in m["model"]["inputs"]] == [("input_ids", [1, 32]),
                                                                        ("attention_mask", [1, 32])]
    encodings = {t["name"]: (t["dtype"], t["encoding"]["kind"]) for t in m["transfers"][0]["tensors"]}
    assert sorted(encodings.values()) == [("int64", "raw"), ("uint8", "affine_uint8")]
    accuracy = m["verification"]["accuracy"]
    assert accuracy["accuracy"] >= accuracy["required_accuracy"]
    assert accuracy["wire_bytes_per_request"] == 32 * 64 + 32 * 8


@pytest.mark.slow
def test_pt2_of_a_hf_model_loads_in_a_fresh_process(tmp_path):
    """The .pt2's output type (SequenceClassifierOutput) is registered by importing its module before
    torch.export.load; no deserialization log reaches the terminal."""
    script = textwrap.dedent(f"""
        import torch
        from tests.hf_zoo import bert
        torch.manual_seed(0)
        ids, mask = torch.randint(0, 10, (1, 64)), torch.ones(1, 64, dtype=torch.int64)
        program = torch.export.export(bert(), (), {{"input_ids": ids, "attention_mask": mask}}, strict=False)
        torch.export.save(program, r"{tmp_path / 'bert.pt2'}")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    run = subprocess.run([sys.executable, "-m", "splitc", "compile", str(tmp_path / "bert.pt2"), "--target",
                          "jetson,cloud-gpu", "--split", "bert.encoder.layer.0", "--emit", "none", "-q", "-o",
                          str(tmp_path / "b")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.strip() == ""  # -q: nothing from torch.export.load either
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["verification"]["passed"] and manifest["model"]["outputs"][0]["name"] == "logits"
    assert sorted(_wire(manifest)[0]) == [([1, 64], "int64"), ([1, 64, 64], "float32")]


# --------------------------------------------------------------------------- slow: the family matrix


@dataclass(frozen=True)
class Family:
    spec: str
    two: tuple[str, ...]  # forced cut for 2 tiers, by module path
    three: tuple[str, ...]  # forced cuts for 3 tiers
    inputs: tuple[str, ...] = ()
    shapes: list | None = field(default=None, hash=False)
    options: tuple = ()


FAMILIES = {
    "bert": Family("tests.hf_zoo:bert", ("bert.encoder.layer.0",), ("bert.embeddings", "bert.encoder.layer.1"),
                   (IDS, MASK)),
    "gpt2": Family("tests.hf_zoo:gpt2", ("transformer.h.0",), ("transformer.h.0", "transformer.h.1"), (IDS, MASK)),
    "gpt2_cache": Family("tests.hf_zoo:gpt2", ("transformer.h.0",), ("transformer.wte", "transformer.h.1"),
                         (IDS,), options=(("keep_cache", True),)),
    "llama": Family("tests.hf_zoo:llama", ("model.layers.0",), ("model.layers.0", "model.layers.1"), (IDS, MASK)),
    "vit": Family("tests.hf_zoo:vit", ("vit.layers.0",), ("vit.embeddings", "vit.layers.1")),
    "t5": Family("tests.hf_zoo:t5", ("encoder.block.0",), ("encoder", "decoder.block.0"),
                 ("input_ids:1x32:int64", "attention_mask:1x32:int64", "decoder_input_ids:1x8:int64")),
    "whisper": Family("tests.hf_zoo:whisper", ("model.encoder.layers.0",),
                      ("model.encoder.layers.1", "model.decoder.layers.0"),
                      ("input_features:1x80x128", "decoder_input_ids:1x8:int64")),
    "timm_vit256": Family("tests.hf_zoo:timm_vit256", ("blocks.0",), ("patch_embed", "blocks.1")),
    "timm_convnext": Family("tests.hf_zoo:timm_convnext", ("stages.1",), ("stages.0", "stages.2")),
    "ssdlite": Family("tests.hf_zoo:ssdlite", ("backbone.features.0",), ("backbone.features.0", "backbone")),
    "retinanet": Family("tests.hf_zoo:retinanet", ("backbone.body.layer2",), ("backbone.body.layer1", "backbone")),
    "fasterrcnn": Family("tests.hf_zoo:fasterrcnn", ("backbone.body.12",), ("backbone.body.6", "backbone.body")),
    "tiny_fasterrcnn": Family("tests.hf_zoo:tiny_fasterrcnn", ("backbone.a",), ("backbone.a.1", "backbone")),
    "lraspp": Family("tests.hf_zoo:lraspp", ("backbone.6",), ("backbone.3", "backbone.12"), shapes=[(1, 3, 128, 128)]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_two_and_three_tiers(name, tmp_path):
    family = FAMILIES[name]
    for targets, split in ((TWO, family.two), (THREE, family.three)):
        m = _compile(tmp_path, family.spec, split, targets, shapes=family.shapes, inputs=family.inputs,
                     **dict(family.options))
        if m["model"]["source"].get("call", {}).get("adapter"):  # a detector: post-processing on the last tier
            assert [o["name"] for o in m["model"]["outputs"]] == ["boxes", "scores", "labels"]
            assert m["partitions"][-1]["tier_index"] == len(targets) - 1
    if name == "gpt2_cache":
        assert [o["name"] for o in m["model"]["outputs"]][:3] == ["logits", "cache.0.key", "cache.0.value"]
    if name == "lraspp":
        assert [o["name"] for o in m["model"]["outputs"]] == ["out"]  # the dict key, not output_0
