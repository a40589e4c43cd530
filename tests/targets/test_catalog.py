"""The built-in target catalog, user target files and name resolution (splitc.targets.target)."""

from __future__ import annotations

import importlib.resources
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitc.errors import SplitcError
from splitc.core.op_classes import OP_CLASSES
from splitc.targets.target import (
    TARGET_KEYS,
    Link,
    Target,
    TargetRegistry,
    format_targets_table,
    load_catalog,
    load_targets_file,
    write_targets_file,
)

CATALOG_DIR = importlib.resources.files("splitc") / "targets" / "catalog"
CATALOG_FILES = sorted(e.name for e in CATALOG_DIR.iterdir() if e.name.endswith(".yaml"))

#: name or alias -> canonical name, as promised to users.
REQUIRED_NAMES = {
    "jetson-nano": "jetson-nano",
    "jetson-orin-nano": "jetson-orin-nano",
    "jetson": "jetson-orin-nano",
    "jetson-agx-orin": "jetson-agx-orin",
    "raspberry-pi-4": "raspberry-pi-4",
    "rpi4": "raspberry-pi-4",
    "pi": "raspberry-pi-4",
    "edge-cpu": "edge-cpu",
    "edge": "edge-cpu",
    "c6i-large": "c6i-large",
    "c6i-xlarge": "c6i-xlarge",
    "cloud-cpu": "c6i-xlarge",
    "cloud-gpu-t4": "cloud-gpu-t4",
    "cloud-gpu": "cloud-gpu-t4",
    "t4": "cloud-gpu-t4",
    "cloud-gpu-a10g": "cloud-gpu-a10g",
    "a10g": "cloud-gpu-a10g",
    "cloud-gpu-a100": "cloud-gpu-a100",
    "a100": "cloud-gpu-a100",
    "cloud-gpu-h100": "cloud-gpu-h100",
    "h100": "cloud-gpu-h100",
    "aws-lambda": "aws-lambda",
    "faas": "aws-lambda",
    "lambda": "aws-lambda",
}

USER_TARGET = """\
name: my-box
aliases: [box]
kind: edge
backend: onnxruntime
description: a user-defined edge box
precisions: [fp32]
peak_flops: {fp32: 100 GFLOPS}
memory_bandwidth: 20 GB/s
memory: 16 GiB
usable_memory_fraction: 0.5
efficiency: {conv: 0.4, matmul: 0.5, attention: 0.4, norm: 0.5, pool: 0.5, elementwise: 0.5,
             reduction: 0.5, data_movement: 0.5, other: 0.3, view: 1.0}
op_overhead: 5us
fused_op_classes: [norm]
price: {model: free}
uplink: {bandwidth: 50 Mbps, rtt: 10ms}
sources: []
"""


def user_target(**changes: Any) -> dict[str, Any]:
    """The USER_TARGET mapping with some keys changed (None removes a key)."""
    data = yaml.safe_load(USER_TARGET)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def registry() -> TargetRegistry:
    return TargetRegistry.with_builtins()


# ----------------------------------------------------------------------------- catalog


@pytest.mark.parametrize("filename", CATALOG_FILES)
def test_every_builtin_file_loads_and_is_named_after_its_target(filename: str) -> None:
    data = yaml.safe_load((CATALOG_DIR / filename).read_text(encoding="utf-8"))
    target = Target.from_dict(data, origin="built-in")
    assert filename == f"{target.name}.yaml"
    assert set(data) <= set(TARGET_KEYS)


def test_catalog_holds_every_file_once() -> None:
    catalog = load_catalog()
    assert len(catalog) == len(CATALOG_FILES) >= 12
    assert all(t.origin == "built-in" for t in catalog.values())


def test_load_catalog_returns_a_fresh_dict() -> None:
    load_catalog().clear()
    assert "jetson-nano" in load_catalog()


@pytest.mark.parametrize(("name", "canonical"), sorted(REQUIRED_NAMES.items()))
def test_required_names_and_aliases_resolve(registry: TargetRegistry, name: str, canonical: str) -> None:
    assert registry.resolve(name).name == canonical
    assert registry.resolve(name.upper()).name == canonical
    assert registry.resolve(f"  {name} ").name == canonical


def test_no_alias_is_shared_or_shadows_a_name() -> None:
    catalog = load_catalog()
    aliases = [a for t in catalog.values() for a in t.aliases]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & set(catalog)


@pytest.mark.parametrize("target", list(load_catalog().values()), ids=lambda t: t.name)
def test_builtin_target_is_sourced_and_sane(target: Target) -> None:
    assert target.sources and all(s.startswith("https://") for s in target.sources)
    assert target.notes  # every built-in has estimated or derived figures to explain
    assert set(target.efficiency) == set(OP_CLASSES)
    assert all(0 < e <= 1 for e in target.efficiency.values())
    assert target.fused_op_classes <= set(OP_CLASSES)
    assert "fp32" in target.peak_flops and all(v > 0 for v in target.peak_flops.values())
    assert 1e9 <= target.peak_flops["fp32"] <= 1e14
    assert 1e9 <= target.memory_bandwidth <= 1e13  # bytes/s
    assert 0 < target.usable_memory_bytes < target.memory_bytes
    assert 1e-6 <= target.op_overhead_s <= 1e-4
    if target.kind in ("device", "edge"):
        assert target.uplink is not None


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("jetson-nano", "tensorrt"),
        ("jetson-orin-nano", "tensorrt"),
        ("jetson-agx-orin", "tensorrt"),
        ("cloud-gpu-t4", "tensorrt"),
        ("cloud-gpu-a10g", "tensorrt"),
        ("cloud-gpu-a100", "tensorrt"),
        ("cloud-gpu-h100", "tensorrt"),
        ("raspberry-pi-4", "onnxruntime"),
        ("edge-cpu", "onnxruntime"),
        ("c6i-large", "onnxruntime"),
        ("c6i-xlarge", "onnxruntime"),
        ("aws-lambda", "onnxruntime"),
    ],
)
def test_backends(registry: TargetRegistry, name: str, backend: str) -> None:
    assert registry.resolve(name).backend == backend


def test_spec_sheet_figures_in_si_units(registry: TargetRegistry) -> None:
    orin = registry.resolve("jetson")
    assert orin.memory_bandwidth == pytest.approx(68e9)  # "68 GB/s" stored as bytes/s
    assert orin.memory_bytes == 8 * 2**30
    assert orin.peak_flops["fp32"] == pytest.approx(1.28e12)
    assert orin.uplink == Link(bandwidth_bps=20e6, rtt_s=0.03)
    assert registry.resolve("jetson-agx-orin").memory_bandwidth == pytest.approx(204.8e9)
    assert registry.resolve("jetson-nano").memory_bandwidth == pytest.approx(25.6e9)
    assert registry.resolve("h100").memory_bytes == 80 * 2**30
    assert registry.resolve("edge").uplink == Link(bandwidth_bps=100e6, rtt_s=0.02)
    assert registry.resolve("cloud-gpu").uplink == Link(bandwidth_bps=10e9, rtt_s=1e-3)


def test_price_models(registry: TargetRegistry) -> None:
    assert registry.resolve("jetson").price == {"model": "free"}
    assert registry.resolve("cloud-gpu").price["usd_per_hour"] == pytest.approx(0.526)
    assert registry.resolve("cloud-cpu").price["model"] == "vm"
    faas = registry.resolve("lambda").price
    assert faas["model"] == "faas"
    assert faas["max_memory_mb"] == 10240
    assert faas["max_memory_mb"] / faas["mb_per_vcpu"] <= faas["max_vcpus"]
    assert faas["cold_start_s"] > 0 and faas["usd_per_gb_second"] > 0 and faas["usd_per_request"] > 0


def test_to_dict_is_json_and_to_spec_round_trips() -> None:
    for target in load_catalog().values():
        json.dumps(target.to_dict())
        assert Target.from_dict(target.to_spec(), origin=target.origin) == target


def test_format_targets_table(registry: TargetRegistry) -> None:
    table = format_targets_table(registry.targets())
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ALIASES", "KIND", "BACKEND"]
    assert len(lines) == 2 + len(registry)
    for target in registry:
        assert any(line.startswith(target.name + " ") for line in lines)
    kind_column = lines[0].index("KIND")
    assert all(line[kind_column:].split()[0] in ("device", "edge", "cloud-vm", "faas") for line in lines[2:])


# ----------------------------------------------------------------------------- resolution


def test_unknown_target_lists_known_names(registry: TargetRegistry) -> None:
    with pytest.raises(SplitcError) as info:
        registry.resolve("xyz")
    assert info.value.message == "unknown target 'xyz'"
    for name in ("jetson-orin-nano", "cloud-gpu-t4", "aws-lambda", "cloud-gpu"):
        assert name in info.value.hint
    assert "--targets-file" in info.value.hint


def test_unknown_target_suggests_a_close_name(registry: TargetRegistry) -> None:
    with pytest.raises(SplitcError, match="did you mean 'jetson'"):
        registry.resolve("jetsn")


def test_resolve_chain(registry: TargetRegistry) -> None:
    chain = registry.resolve_chain("jetson,cloud-gpu")
    assert [t.name for t in chain] == ["jetson-orin-nano", "cloud-gpu-t4"]
    names = [t.name for t in registry.resolve_chain(" pi , edge , LAMBDA ")]
    assert names == ["raspberry-pi-4", "edge-cpu", "aws-lambda"]
    assert [t.name for t in registry.resolve_chain(["h100"])] == ["cloud-gpu-h100"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty"),
        (" , ", "empty"),
        ("jetson,,cloud-gpu", "empty entry"),
        ("jetson,", "empty entry"),
        ("jetson,nope", "unknown target 'nope'"),
    ],
)
def test_resolve_chain_errors(registry: TargetRegistry, spec: str, match: str) -> None:
    with pytest.raises(SplitcError, match=match):
        registry.resolve_chain(spec)


def test_chain_may_repeat_a_target(registry: TargetRegistry) -> None:
    assert [t.name for t in registry.resolve_chain("jetson,cloud-cpu,c6i-xlarge")] == [
        "jetson-orin-nano", "c6i-xlarge", "c6i-xlarge"]


def test_cloud_target_without_uplink(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "t.yaml", user_target(name="lonely-vm", aliases=[], kind="cloud-vm", uplink=None))
    registry = TargetRegistry.with_builtins([path])
    assert registry.resolve("lonely-vm").uplink is None
    assert registry.resolve("lonely-vm").to_dict()["uplink"] is None
    assert [t.name for t in registry.resolve_chain("jetson,lonely-vm")] == ["jetson-orin-nano", "lonely-vm"]


# ----------------------------------------------------------------------------- user files


def test_user_file_single_mapping(tmp_path: Path) -> None:
    path = tmp_path / "box.yaml"
    path.write_text(USER_TARGET, encoding="utf-8")
    (target,) = load_targets_file(path)
    assert target.name == "my-box" and target.origin == str(path)
    assert target.memory_bytes == 16 * 2**30
    assert target.memory_bandwidth == pytest.approx(20e9)
    assert target.op_overhead_s == pytest.approx(5e-6)
    assert target.usable_memory_bytes == 8 * 2**30
    registry = TargetRegistry.with_builtins([path])
    assert registry.resolve("BOX") == target
    assert registry.resolve("jetson").name == "jetson-orin-nano"  # built-ins still there


@pytest.mark.parametrize("wrap", [lambda ts: ts, lambda ts: {"targets": ts}])
def test_user_file_with_several_targets(tmp_path: Path, wrap) -> None:
    targets = [user_target(name="a", aliases=[]), user_target(name="b", aliases=["bee"])]
    loaded = load_targets_file(write_yaml(tmp_path / "many.yaml", wrap(targets)))
    assert [t.name for t in loaded] == ["a", "b"]


def test_user_target_overrides_builtin_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_yaml(tmp_path / "t4.yaml", user_target(name="cloud-gpu-t4", aliases=["my-t4"], kind="cloud-vm"))
    with caplog.at_level(logging.WARNING, logger="splitc.targets.target"):
        registry = TargetRegistry.with_builtins([path])
    assert "overrides" in caplog.text and str(path) in caplog.text
    t4 = registry.resolve("cloud-gpu-t4")
    assert t4.origin == str(path) and t4.description == "a user-defined edge box"
    assert registry.resolve("my-t4") is t4
    assert len(registry) == len(load_catalog())
    with pytest.raises(SplitcError):
        registry.resolve("cloud-gpu")  # the built-in's aliases went with it


def test_user_alias_takes_over_a_builtin_alias(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_yaml(tmp_path / "t.yaml", user_target(aliases=["jetson"]))
    with caplog.at_level(logging.WARNING, logger="splitc.targets.target"):
        registry = TargetRegistry.with_builtins([path])
    assert registry.resolve("jetson").name == "my-box"
    assert "alias 'jetson'" in caplog.text


def test_user_alias_may_not_be_another_targets_name(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "t.yaml", user_target(aliases=["jetson-nano"]))
    with pytest.raises(SplitcError, match="alias 'jetson-nano'.*name of another target"):
        TargetRegistry.with_builtins([path])


def test_duplicate_names_in_one_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "dup.yaml", [user_target(), user_target()])
    with pytest.raises(SplitcError, match="defined twice"):
        load_targets_file(path)


def test_write_targets_file_round_trips(tmp_path: Path) -> None:
    targets = list(load_catalog().values())
    path = tmp_path / "all.yaml"
    write_targets_file(targets, path)
    loaded = load_targets_file(path)
    assert [dataclass_fields(t) for t in loaded] == [dataclass_fields(t) for t in targets]


def dataclass_fields(target: Target) -> dict[str, Any]:
    data = target.to_dict()
    data.pop("origin")
    return data


# ----------------------------------------------------------------------------- file errors


def test_unknown_key_lists_valid_keys_and_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo.yaml", user_target(memory_bw="20 GB/s"))
    with pytest.raises(SplitcError) as info:
        load_targets_file(path)
    assert str(path) in info.value.message and "'memory_bw'" in info.value.message
    assert "my-box" in info.value.message
    for key in ("memory_bandwidth", "peak_flops", "uplink", "notes"):
        assert key in info.value.hint


def test_missing_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "t.yaml", user_target(efficiency=None))
    with pytest.raises(SplitcError, match=r"missing key\(s\) 'efficiency'"):
        load_targets_file(path)


@pytest.mark.parametrize(
    ("changes", "key", "shows"),
    [
        ({"kind": "phone"}, "kind", "device, edge, cloud-vm, faas"),
        ({"backend": "tflite"}, "backend", "onnxruntime, tensorrt"),
        ({"precisions": ["fp32", "fp4"]}, "precisions", "fp16"),
        ({"precisions": ["fp32", "int8"]}, "peak_flops", "int8"),
        ({"peak_flops": {"fp32": "fast"}}, "peak_flops", "fast"),
        ({"peak_flops": {"fp32": "0 TFLOPS"}}, "peak_flops", "greater than zero"),
        ({"memory_bandwidth": "-3 GB/s"}, "memory_bandwidth", "-3 GB/s"),
        ({"memory": "lots"}, "memory", "lots"),
        ({"usable_memory_fraction": 1.5}, "usable_memory_fraction", "1.5"),
        ({"usable_memory_fraction": 0}, "usable_memory_fraction", "positive"),
        ({"efficiency": {"conv": 0.5}}, "efficiency", "matmul"),
        ({"efficiency": {**{c: 0.5 for c in OP_CLASSES}, "convolution": 0.5}}, "efficiency", "convolution"),
        ({"op_overhead": "soon"}, "op_overhead", "soon"),
        ({"fused_op_classes": ["relu"]}, "fused_op_classes", "elementwise"),
        ({"price": {"model": "barter"}}, "price", "free, energy, vm, faas"),
        ({"price": {"model": "vm"}}, "price", "usd_per_hour"),
        ({"price": {"model": "vm", "usd_per_hour": 1, "per_gpu": 1}}, "price", "per_gpu"),
        ({"price": {"model": "faas", "usd_per_gb_second": 1e-5}}, "price", "cold_start"),
        ({"uplink": None}, "uplink", "needs an uplink"),
        ({"uplink": {"bandwidth": "20 Mbps"}}, "uplink", "rtt"),
        ({"uplink": {"bandwidth": "fast", "rtt": "1ms"}}, "uplink", "fast"),
        ({"sources": "https://example.com"}, "sources", "list"),
        ({"aliases": ["has space"]}, "aliases", "has space"),
    ],
)
def test_invalid_values_name_file_target_and_key(tmp_path: Path, changes: dict, key: str, shows: str) -> None:
    data = user_target()
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(SplitcError) as info:
        load_targets_file(path)
    text = str(info.value)
    assert f"{path}: target 'my-box', key '{key}'" in text
    assert shows in text
    assert "\n" not in text


def test_bad_name(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "t.yaml", user_target(name="jetson,cloud"))
    with pytest.raises(SplitcError, match="key 'name'"):
        load_targets_file(path)


def test_corrupt_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nkind: [device\n", encoding="utf-8")
    with pytest.raises(SplitcError, match=r"broken\.yaml: invalid YAML at line \d+"):
        load_targets_file(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SplitcError, match="targets file not found: .*nope.yaml"):
        load_targets_file(tmp_path / "nope.yaml")
    with pytest.raises(SplitcError, match="nope.yaml"):
        TargetRegistry.with_builtins([tmp_path / "nope.yaml"])


@pytest.mark.parametrize("content", ["", "42\n", "- 42\n", "targets: []\n", "targets: [] \nextra: 1\n"])
def test_file_without_targets(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SplitcError, match="empty.yaml"):
        load_targets_file(path)
