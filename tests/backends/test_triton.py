"""Triton model repositories: every config.pbtxt parses with Triton's own ModelConfig protobuf and keeps the
partition's exact names, dims and dtypes; the batch axis is only declared where batch N was checked
bit-exact against N batch-1 runs; the tier-step model carries a runtime that imports without splitc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import splitc.runtime.runner
from splitc.backends.triton import MAX_BATCH, TRITON_DTYPES, check_batch_axis, config_pbtxt, ensemble_possible
from splitc.runtime.v2 import tier_contract

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is needed to parse config.pbtxt (pip install "
                                              "'tritonclient[grpc]')")
text_format = pytest.importorskip("google.protobuf.text_format")

_ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                   onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
                   onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT8: "TYPE_INT8",
                   onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.DOUBLE: "TYPE_FP64"}


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _io(values, initializers):
    return {v.name: ([d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
                     _ONNX_TO_TRITON[v.type.tensor_type.elem_type]) for v in values if v.name not in initializers}


def _dims(blocks, batched):
    return {b.name: ([-1] if batched else []) + list(b.dims) for b in blocks}


def test_every_repository_parses_and_keeps_the_partition_io(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    [record] = [a for a in manifest["artifacts"] if a["kind"] == "triton"]
    assert manifest["tiers"][record["tier_index"]]["target"]["kind"] == "edge"  # only server tiers
    assert record["model"] == "splitc_tier1" and record["repositories"]["python"]["path"] == "edge-cpu/triton-python"
    assert record["repositories"]["ensemble"]["path"] is None  # tier 1 forwards: no ensemble
    assert all((bundle3 / f).is_file() for f in record["files"])
    batched = record["max_batch_size"] > 0
    for path in sorted(bundle3.glob("edge-cpu/triton*/*/config.pbtxt")):
        config = _parse(path)
        assert config.name == path.parent.name and str(path.relative_to(bundle3)) in record["files"]
        assert config.max_batch_size == record["max_batch_size"]
        if config.name.startswith("splitc_part"):  # ONNX Runtime backend: the ONNX file's exact I/O
            graph = onnx.load(str(path.parent / "1" / "model.onnx")).graph
            inits = {i.name for i in graph.initializer}
            assert config.backend == "onnxruntime"
            for blocks, values in ((config.input, graph.input), (config.output, graph.output)):
                got = {b.name: model_config_pb2.DataType.Name(b.data_type) for b in blocks}
                want = _io(values, inits)
                assert got == {k: v[1] for k, v in want.items()}
                assert _dims(blocks, batched) == {k: v[0] for k, v in want.items()}
            part = next(p for p in manifest["partitions"] if f"splitc_part{p['index']}" == config.name)
            static = {t["name"]: list(t["shape"]) for t in part["inputs"] + part["outputs"]}
            assert all(static[b.name][1 if batched else 0:] == list(b.dims) for b in (*config.input, *config.output))
            continue
        assert config.backend == "python"  # the tier step: wire tensors in, answer or next link out
        contract = tier_contract(manifest, 1)
        assert [i.name for i in config.input] == [s.name for s in contract.inputs]
        assert [o.name for o in config.output] == [s.name for s in contract.outputs()]
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["splitc_tier"] == "1" and params["splitc_tier_sha256"] == contract.fingerprint
        assert params["splitc_partitions"] == ("bls" if path.parts[-3] == "triton" else "onnxruntime")
        version = path.parent / "1"
        assert (version / "model.py").is_file() and (version / "bundle" / "manifest.json").is_file()
        source = Path(splitc.runtime.runner.__file__)
        assert (version / "splitc" / "runtime" / "runner.py").read_bytes() == source.read_bytes()
    readme = (bundle3 / "edge-cpu" / "triton" / "README.md").read_text()
    assert "Which repository to use where" in readme and "splitc_tier1" in readme


def test_the_copied_runtime_imports_without_splitc(bundle3, tmp_path):
    """NVIDIA's container has no splitc: the tier-step model's copy of the runtime is all it needs."""
    version = bundle3 / "edge-cpu" / "triton-python" / "splitc_tier1" / "1"
    files = sorted(p.relative_to(version).as_posix() for p in (version / "splitc").rglob("*.py"))
    assert "splitc/runtime/tier_model.py" in files and "splitc/runtime/runner.py" in files
    assert not any(f.startswith(("splitc/driver", "splitc/core", "splitc/backends")) for f in files)
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); import splitc.runtime.tier_model as t; "
              "print(json.dumps([t.__file__, sorted(m for m in sys.modules if m.split('.')[0] in "
              "('torch', 'onnx'))]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, str(version)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    where, heavy = json.loads(done.stdout)
    assert where.startswith(str(version)) and heavy == []  # the copy, and neither torch nor onnx


class _Conv(nn.Module):
    def forward(self, x):
        return torch.flatten(torch.relu(x * 2.0), 1)


class _FoldedView(nn.Module):
    def forward(self, x):
        return (x.reshape(1, -1) @ torch.ones(48, 3)).relu()


def _export(module, path, shape=(1, 3, 4, 4)):
    torch.onnx.export(module, (torch.zeros(shape),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    return path


def test_batch_axis_is_declared_only_where_it_is_bit_exact(tmp_path):
    ok = check_batch_axis(_export(_Conv(), tmp_path / "conv.onnx"), tmp_path / "conv.batch.onnx")
    assert ok["dynamic"] and ok["checked"] == list(range(1, MAX_BATCH + 1)), ok
    [dims] = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.load(str(tmp_path / "conv.batch.onnx")).graph.input]
    assert dims == ["batch", 3, 4, 4]
    bad = check_batch_axis(_export(_FoldedView(), tmp_path / "view.onnx"), tmp_path / "view.batch.onnx")
    assert not bad["dynamic"] and not (tmp_path / "view.batch.onnx").exists(), bad  # Reshape [1, -1]: refused


def test_gpu_partition_config_uses_the_tensorrt_accelerator_and_parses():
    inputs = [{"name": "relu", "dtype": "float16", "shape": [1, 8, 4, 4]}, {"name": "ids", "dtype": "int64", "shape": [1, 7]}]
    outputs = [{"name": "head", "dtype": "float32", "shape": [1, 5]}, {"name": "flag", "dtype": "bool", "shape": []}]
    config = text_format.Parse(config_pbtxt("m", inputs, outputs, gpu=True), model_config_pb2.ModelConfig())
    assert [model_config_pb2.DataType.Name(i.data_type) for i in config.input] == ["TYPE_FP16", "TYPE_INT64"]
    assert list(config.output[1].dims) == [1] and list(config.output[1].reshape.shape) == []  # scalar output
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP32"
    batched = text_format.Parse(config_pbtxt("m", inputs[:1], outputs[:1], gpu=False, max_batch=8),
                                model_config_pb2.ModelConfig())
    assert batched.max_batch_size == 8 and list(batched.input[0].dims) == [8, 4, 4]
    assert batched.HasField("dynamic_batching")


def test_ensemble_only_where_no_exit_and_no_forwarding(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    assert "forwards" in ensemble_possible(manifest, 1)
    with_exit = json.loads(json.dumps(manifest))
    with_exit["exits"] = [{"index": 0, "partition": 2, "outputs": {"confidence": "c", "logits": "l"},
                           "answers": {"output_0": "l"}, "threshold": 0.5}]
    assert "exit" in ensemble_possible(with_exit, 2)


def test_every_manifest_dtype_has_a_triton_type():
    from splitc.driver.manifest import manifest_schema

    assert set(manifest_schema()["$defs"]["dtype"]["enum"]) == set(TRITON_DTYPES)
    assert all(t in model_config_pb2.DataType.keys() for t in TRITON_DTYPES.values())


def test_static_partitions_keep_max_batch_size_zero(tmp_path):
    """A bundle whose partition cannot take a batch axis is served with the exported static shapes."""
    from splitc.backends.triton import write_repository

    manifest = {"tiers": [{"index": 0, "name": "d", "target": {"kind": "device"}},
                          {"index": 1, "name": "e", "target": {"kind": "edge", "backend": "onnxruntime"}}],
                "partitions": [{"index": 0, "tier_index": 1, "file": "e/part0.onnx", "sha256": "-",
                                "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, 4, 4]}],
                                "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 3]}]}],
                "transfers": [{"link": 0, "from_tier": 0, "to_tier": 1,
                               "tensors": [{"name": "x", "dtype": "float32", "shape": [1, 3, 4, 4],
                                            "encoding": {"kind": "raw"}}]}],
                "exits": [], "model": {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, 4, 4]}],
                                       "outputs": [{"name": "output_0", "tensor": "y", "dtype": "float32",
                                                    "shape": [1, 3]}]}}
    (tmp_path / "e").mkdir()
    _export(_FoldedView(), tmp_path / "e" / "part0.onnx")
    files = write_repository(tmp_path, manifest, 1, tmp_path / "repo", "python",
                             partition_files={0: tmp_path / "e" / "part0.onnx"}, max_batch=0, batch_partitions=[])
    config = _parse(tmp_path / "repo" / "splitc_tier1" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, 4, 4]
    assert not config.HasField("dynamic_batching") and files
