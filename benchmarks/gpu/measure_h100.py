"""Measure ResNet-50 cloud-side partitions on a real GPU and compare with splitc's cost model.

Three steps, one sub-command each (imports are lazy so each step needs only what it uses):

``predict`` (here, with the project's venv: needs splitc, onnx-free parts only)
    Plans ``torchvision.models:resnet50`` for ``cloud-gpu-h100`` and, for every cut in
    ``CUTS``, sums :func:`splitc.targets.cost_model.node_time` over the compute nodes after
    the cut, for the catalog target (TensorRT model) and for the eager-PyTorch variant
    ``h100-torch-eager.yaml``. Writes ``predictions.json`` (per node too, so ``compare``
    can refit overheads without splitc).

``measure`` (on the GPU machine: needs only torch; torchvision optional)
    fx-traces ResNet-50 (random weights, eval, batch 1), builds the suffix GraphModule
    after each cut (checking exactly one tensor crosses and that prefix+suffix == whole),
    and times whole model and suffixes with CUDA events (10 warm-ups, 50 timed runs,
    median) in: eager; eager replayed as one CUDA graph (GPU time without Python/launch
    gaps); optionally ``torch.compile`` (inductor, freezing = conv-BN folding) plain and
    captured in a CUDA graph (a proxy for a fused TensorRT engine). fp32 (cuDNN TF32 on,
    PyTorch's default), fp32 with TF32 off, fp16. Writes ``measured.json`` to --out.

``compare`` (anywhere: needs only the two JSON files)
    Writes ``results.json`` and prints the markdown tables used in README.md.

Commands::

    . .venv/bin/activate && python benchmarks/gpu/measure_h100.py predict
    PYTHONPATH=$PWD python benchmarks/gpu/measure_h100.py measure --out $OUT   # on the GPU
    python benchmarks/gpu/measure_h100.py compare --measured run1/measured.json [run2/measured.json ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUTS = ["layer1_2_relu_2", "layer2_3_relu_2", "layer3_5_relu_2", "layer4_2_relu_2"]
SHARED = Path("/work/shared/measurements/h100-torch-eager.json")
WARMUP, RUNS = 10, 50


# ----------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> None:
    import dataclasses

    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import plan_model
    from splitc.targets import cost_model
    from splitc.targets.target import TargetRegistry, load_targets_file

    prepared = plan_model("torchvision.models:resnet50", CompileOptions(targets=("cloud-gpu-h100",)),
                          input_shapes=[(1, 3, 224, 224)])
    ctx = prepared.ctx
    cands = ctx.candidates
    by_name = {n.name: n for n in prepared.traced.graph_module.graph.nodes}
    nodes = [by_name[name] for name in cands.nodes]
    trt = TargetRegistry.with_builtins().resolve("cloud-gpu-h100")
    eager = load_targets_file(HERE / "h100-torch-eager.yaml")[0]
    targets = {"trt": trt, "eager": eager}

    def times(target, unfold=False, fp16=False):
        """node_time per node; unfold: charge BNs after convs (eager does not fold them);
        fp16: pretend every tensor is half (precision and bytes), for reference."""
        saved_prec = cost_model.precision_of
        saved = [dict(n.meta) for n in nodes]
        try:
            if fp16:
                cost_model.precision_of = lambda n: "fp16"
            for n in nodes:
                if unfold:
                    n.meta["splitc.foldable"] = False
                if fp16:
                    for k in ("splitc.in_bytes", "splitc.out_bytes", "splitc.param_bytes"):
                        n.meta[k] = n.meta.get(k, 0) / 2
            return [cost_model.node_time(n, target) for n in nodes]
        finally:
            cost_model.precision_of = saved_prec
            for n, m in zip(nodes, saved):
                n.meta.clear()
                n.meta.update(m)

    def kernels(target, unfold=False):
        """Which nodes pay op_overhead (= launch a kernel in the model)."""
        out = []
        for n in nodes:
            cls = n.meta.get("splitc.op_class", "other")
            free = cls in cost_model.FREE_OP_CLASSES or (n.meta.get("splitc.foldable") and not unfold)
            out.append(int(not free and cls not in target.fused_op_classes))
        return out

    per_node = {
        "name": cands.nodes,
        "op_class": [n.meta.get("splitc.op_class") for n in nodes],
        "foldable": [bool(n.meta.get("splitc.foldable")) for n in nodes],
        "flops": [int(n.meta.get("splitc.flops", 0)) for n in nodes],
    }
    variants = {}
    for key, target in targets.items():
        zero = dataclasses.replace(target, op_overhead_s=0.0)
        for unfold in (False, True):
            if key == "trt" and unfold:
                continue
            v = f"{key}{'_unfolded' if unfold else ''}"
            variants[v] = {"target": target.name, "op_overhead_s": target.op_overhead_s,
                           "fused_op_classes": sorted(target.fused_op_classes), "bn_folded": not unfold}
            per_node[f"{v}_fp32_s"] = times(target, unfold)
            per_node[f"{v}_fp16_s"] = times(target, unfold, fp16=True)
            per_node[f"{v}_roofline_fp32_s"] = times(zero, unfold)
            per_node[f"{v}_kernel"] = kernels(target, unfold)

    parts = {}
    for cut in [None] + CUTS:
        k = 0 if cut is None else cands.index_of(cut)
        c = cands.cuts[k]
        entry = {"cut_index": k, "after": cut, "crossing": list(c.crossing), "crossing_bytes": c.bytes,
                 "legal": c.legal, "nodes": len(cands.nodes) - k}
        for v in variants:
            for col in ("fp32_s", "fp16_s", "roofline_fp32_s", "kernel"):
                entry[f"{v}_{col}"] = sum(per_node[f"{v}_{col}"][k:])
        parts["whole" if cut is None else f"after_{cut}"] = entry
    out = {"model": "torchvision.models:resnet50", "input_shape": [1, 3, 224, 224],
           "note": "sums of splitc.targets.cost_model.node_time over compute nodes after each cut; "
                   "fp16 = same graph with precision fp16 and bytes halved",
           "targets": {k: t.to_dict() for k, t in targets.items()}, "variants": variants,
           "partitions": parts, "per_node": per_node}
    path = HERE / "predictions.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    for name, p in parts.items():
        print(f"{name:26s} k={p['cut_index']:3d} trt {p['trt_fp32_s']*1e3:7.3f} ms  eager {p['eager_fp32_s']*1e3:7.3f} ms"
              f"  eager_unfolded {p['eager_unfolded_fp32_s']*1e3:7.3f} ms  crossing {p['crossing']}")
    print("wrote", path)


# ----------------------------------------------------------------------------- measure


def _resnet50_fallback():
    """torchvision's ResNet-50 (same module names, so the same fx node names), for a
    machine without torchvision."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.relu(out)
            out = self.conv2(out)
            out = self.bn2(out)
            out = self.relu(out)
            out = self.conv3(out)
            out = self.bn3(out)
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            out = self.relu(out)
            return out

    class ResNet(nn.Module):
        def __init__(self, layers=(3, 4, 6, 3), num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make(64, layers[0])
            self.layer2 = self._make(128, layers[1], 2)
            self.layer3 = self._make(256, layers[2], 2)
            self.layer4 = self._make(512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(2048, num_classes)

        def _make(self, planes, blocks, stride=1):
            down = None
            if stride != 1 or self.inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                     nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(self.inplanes, planes, stride, down)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.conv1(x)
            x = self.bn1(x)
            x = self.relu(x)
            x = self.maxpool(x)
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
            x = self.layer4(x)
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            x = self.fc(x)
            return x

    return ResNet()


def load_resnet50():
    try:
        import torchvision
        return torchvision.models.resnet50(weights=None), f"torchvision {torchvision.__version__}"
    except Exception as err:  # noqa: BLE001 - any import problem: use the copy
        return _resnet50_fallback(), f"built-in copy of torchvision's ResNet-50 (torchvision: {err!r})"


COMPUTE_OPS = ("call_module", "call_function", "call_method")


def suffix_module(gm, cut: str):
    """The GraphModule computing everything after node ``cut`` from the values crossing it.

    Returns (suffix_gm, crossing_names). Values crossing = non-get_attr values defined up to
    and including ``cut`` that a later node (or the output) reads; for ResNet at a block
    output this is exactly one tensor.
    """
    import torch.fx

    order = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(order)}
    k = pos[next(n for n in order if n.name == cut)]
    crossing = []
    for n in order[: k + 1]:
        if n.op == "get_attr":
            continue
        if any(pos[u] > k for u in n.users):
            crossing.append(n)
    g = torch.fx.Graph()
    env = {}
    for n in crossing:
        env[n] = g.placeholder(n.name)
    for n in order[k + 1:]:
        if n.op == "placeholder":
            raise ValueError(f"placeholder {n.name} after cut {cut}")
        env[n] = g.node_copy(n, lambda a: env[a] if a in env else _get_attr_copy(g, a, env))
    g.lint()
    return torch.fx.GraphModule(gm, g), [n.name for n in crossing]


def _get_attr_copy(g, a, env):
    if a.op != "get_attr":
        raise ValueError(f"value {a.name} from before the cut is not a crossing tensor")
    env[a] = g.get_attr(a.target)
    return env[a]


def prefix_module(gm, cut: str):
    """Everything up to and including ``cut``, returning its value (to verify the suffix)."""
    import torch.fx

    g = torch.fx.Graph()
    env = {}
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        env[n] = g.node_copy(n, lambda a: env[a])
        if n.name == cut:
            g.output(env[n])
            break
    g.lint()
    return torch.fx.GraphModule(gm, g)


class Timer:
    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device == "cuda"

    def __call__(self, fn, warmup=WARMUP, runs=None) -> dict:
        torch, runs = self.torch, runs or RUNS
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        ms = []
        for _ in range(runs):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ms.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t) * 1e3)
        return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "runs": runs}


def cuda_graph_fn(torch, fn, inputs):
    """Capture fn(*inputs) in a CUDA graph; return a replay callable."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*inputs)
    return graph.replay


def count_kernels(torch, fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.device_type.name == "CUDA"]
    gpu_us = sum(e.time_range.elapsed_us() for e in evs)
    return {"kernels": len(evs), "gpu_busy_ms": gpu_us / 1e3}


class Deadline(Exception):
    pass


def cmd_measure(args: argparse.Namespace) -> None:
    import torch
    import torch.fx

    global RUNS
    RUNS = args.runs
    t_start = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = args.device
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "cuda_available": torch.cuda.is_available(), "hostname_cpu": platform.processor(),
           "cpu_count": os.cpu_count()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), sm_count=p.multi_processor_count,
                   gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark)
    for mod in ("numpy", "yaml", "torchvision", "triton", "onnx", "onnxruntime"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "?")
            if mod == "onnxruntime":
                env["onnxruntime_providers"] = m.get_available_providers()
        except Exception as err:  # noqa: BLE001
            env[mod] = f"unavailable: {type(err).__name__}"
    print(json.dumps(env, indent=1), flush=True)

    model, model_src = load_resnet50()
    env["model_source"] = model_src
    torch.manual_seed(0)
    model = model.eval()
    gm = torch.fx.symbolic_trace(model)
    compute = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    result = {"env": env, "warmup": WARMUP, "runs": RUNS, "timing": "CUDA events around one call, median",
              "compute_nodes": len(compute), "partitions": {}, "errors": []}

    def save():
        result["elapsed_s"] = round(time.time() - t_start, 1)
        (out_dir / "measured.json").write_text(json.dumps(result, indent=1) + "\n")

    # build partitions; verify in fp32 on the device
    parts = {"whole": (gm, None)}
    x0 = torch.randn(1, 3, 224, 224)
    for cut in CUTS:
        suf, crossing = suffix_module(gm, cut)
        parts[f"after_{cut}"] = (suf, crossing)
        idx = [n.name for n in compute].index(cut) + 1
        result["partitions"][f"after_{cut}"] = {"crossing": crossing, "cut_index": idx,
                                                "nodes": len(compute) - idx}
    result["partitions"]["whole"] = {"crossing": ["x"], "cut_index": 0, "nodes": len(compute)}
    timer = Timer(torch, device)
    with torch.inference_mode():
        gm_dev = gm.to(device)
        ref = gm_dev(x0.to(device))
        for cut in CUTS:
            pre = prefix_module(gm_dev, cut)
            suf = parts[f"after_{cut}"][0].to(device)
            b = pre(x0.to(device))
            got = suf(b)
            err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
            result["partitions"][f"after_{cut}"].update(
                max_rel_err_vs_whole=err, boundary_shape=list(b.shape), boundary_bytes_fp32=b.numel() * 4)
            print(f"after {cut}: crossing {parts[f'after_{cut}'][1]} shape {list(b.shape)} rel err {err:.2e}",
                  flush=True)

    configs = [("fp32", torch.float32, True), ("fp32_notf32", torch.float32, False), ("fp16", torch.float16, True)]

    def inputs_for(name, dtype):
        """Example input(s) of a partition on the device, in dtype."""
        if name == "whole":
            return [x0.to(device, dtype)]
        shape = result["partitions"][name]["boundary_shape"]
        return [torch.randn(shape, device=device, dtype=dtype)]

    # eager and eager-as-CUDA-graph; --repeats rounds, interleaving configs and partitions
    # (eager is CPU-bound, so its medians drift with the host's state: one round is noisy)
    reps: dict = {}
    for rnd in range(args.repeats):
        for cfg, dtype, tf32 in configs:
            if device != "cuda" and cfg != "fp32":
                continue
            if device == "cuda":
                torch.backends.cudnn.allow_tf32 = tf32
            items = list(parts.items())
            for name, (mod, _) in (items if rnd % 2 == 0 else items[::-1]):
                m = mod.to(device, dtype)
                inp = inputs_for(name, dtype)
                rec = result["partitions"][name].setdefault(cfg, {})
                got = {}
                with torch.inference_mode():
                    try:
                        got["eager"] = timer(lambda: m(*inp))
                    except Exception as err:  # noqa: BLE001
                        result["errors"].append(f"{cfg} {name} eager: {err!r}")
                    if device == "cuda":
                        try:
                            got["cuda_graph"] = timer(cuda_graph_fn(torch, m, inp))
                        except Exception as err:  # noqa: BLE001
                            result["errors"].append(f"{cfg} {name} cuda_graph: {err!r}")
                        if cfg == "fp32" and rnd == 0:
                            try:
                                rec["eager_profile"] = count_kernels(torch, lambda: m(*inp))
                            except Exception as err:  # noqa: BLE001
                                result["errors"].append(f"{cfg} {name} profile: {err!r}")
                for mode, t in got.items():
                    lst = reps.setdefault((name, cfg, mode), [])
                    lst.append(t)
                    rec[mode] = {"median_ms": statistics.median(x["median_ms"] for x in lst),
                                 "min_ms": min(x["min_ms"] for x in lst), "max_ms": max(x["max_ms"] for x in lst),
                                 "runs": RUNS, "rounds": len(lst),
                                 "round_medians_ms": [round(x["median_ms"], 4) for x in lst]}
                print(rnd, cfg, name, {k: round(v["median_ms"], 3) for k, v in got.items()}, flush=True)
            save()
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = True

    # torch.compile (inductor), conv-BN folded by freezing: proxy for a fused backend
    if args.compile and device == "cuda":
        import torch._dynamo
        import torch._inductor.config as ind

        ind.freezing = True
        deadline = t_start + args.budget_s

        def on_alarm(signum, frame):
            raise Deadline()

        signal.signal(signal.SIGALRM, on_alarm)
        todo = [("fp32", "whole")] + [("fp32", f"after_{c}") for c in CUTS] + [("fp16", "whole")] \
            + [("fp16", f"after_{c}") for c in CUTS]
        for cfg, name in todo:
            left = deadline - time.time()
            if left < 20:
                result["errors"].append(f"compile {cfg} {name}: skipped, out of time")
                continue
            dtype = torch.float16 if cfg == "fp16" else torch.float32
            mod = parts[name][0].to(device, dtype)
            inp = inputs_for(name, dtype)
            rec = result["partitions"][name].setdefault(cfg, {})
            torch._dynamo.reset()
            signal.alarm(int(left))
            try:
                with torch.inference_mode():
                    t0 = time.time()
                    cm = torch.compile(mod)
                    cm(*inp)
                    torch.cuda.synchronize()
                    rec["compile_s"] = round(time.time() - t0, 1)
                    rec["compiled"] = timer(lambda: cm(*inp))
                    try:
                        rec["compiled_cuda_graph"] = timer(cuda_graph_fn(torch, cm, inp))
                    except Exception as err:  # noqa: BLE001
                        result["errors"].append(f"compile {cfg} {name} cuda_graph: {err!r}"[:500])
                    try:
                        rec["compiled_profile"] = count_kernels(torch, lambda: cm(*inp))
                    except Exception as err:  # noqa: BLE001
                        result["errors"].append(f"compile {cfg} {name} profile: {err!r}"[:500])
            except Deadline:
                result["errors"].append(f"compile {cfg} {name}: hit the time budget")
            except Exception as err:  # noqa: BLE001
                result["errors"].append(f"compile {cfg} {name}: {err!r}"[:800])
            finally:
                signal.alarm(0)
            print("compile", cfg, name, {k: (v.get("median_ms") if isinstance(v, dict) else v)
                                         for k, v in rec.items()}, flush=True)
            save()
    save()
    print("errors:", result["errors"])
    print("wrote", out_dir / "measured.json", f"in {time.time() - t_start:.0f}s")


# ----------------------------------------------------------------------------- compare


def _f(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def _merge(files: list[Path]) -> dict:
    """Pool several ``measured.json``: per (partition, config, mode) the round medians of all
    files (a file without rounds counts as one round); median, min and max of those."""
    runs = [json.loads(f.read_text()) for f in files]
    merged = {"env": runs[0]["env"], "files": [str(f) for f in files], "partitions": {},
              "errors": sum((r.get("errors", []) for r in runs), []),
              "measurement": {"warmup": runs[0]["warmup"], "runs_per_round": runs[0]["runs"],
                              "timing": runs[0]["timing"]}}
    for r in runs:
        for name, part in r["partitions"].items():
            dst = merged["partitions"].setdefault(name, {k: v for k, v in part.items() if not isinstance(v, dict)})
            for cfg, modes in part.items():
                if not isinstance(modes, dict):
                    continue
                for mode, v in modes.items():
                    slot = dst.setdefault(cfg, {})
                    if not isinstance(v, dict) or "median_ms" not in v:
                        slot.setdefault(mode, v)
                        continue
                    pool = slot.setdefault(mode, {"round_medians_ms": []})
                    pool["round_medians_ms"] += v.get("round_medians_ms") or [round(v["median_ms"], 4)]
                    rm = pool["round_medians_ms"]
                    pool.update(median_ms=statistics.median(rm), lo_ms=min(rm), hi_ms=max(rm), rounds=len(rm))
    return merged


def _f(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def cmd_compare(args: argparse.Namespace) -> None:
    pred = json.loads((HERE / "predictions.json").read_text())
    meas = _merge([Path(f) for f in args.measured])
    shared = json.loads(SHARED.read_text()) if SHARED.exists() else None
    pn = pred["per_node"]
    names = ["whole"] + [f"after_{c}" for c in CUTS]

    def m(name, cfg, mode, key="median_ms"):
        r = meas["partitions"].get(name, {}).get(cfg, {}).get(mode)
        return r[key] if r else None

    rows = []
    for name in names:
        p = pred["partitions"][name]
        mp = meas["partitions"][name]
        k = p["cut_index"]
        assert mp["cut_index"] == k and mp["crossing"] == p["crossing"], (name, mp, p)
        row = {"partition": name, "nodes": p["nodes"], "crossing": p["crossing"],
               "crossing_bytes_fp32": p["crossing_bytes"],
               "pred_trt_ms": p["trt_fp32_s"] * 1e3, "pred_eager_ms": p["eager_fp32_s"] * 1e3,
               "pred_eager_unfolded_ms": p["eager_unfolded_fp32_s"] * 1e3,
               "pred_trt_fp16_ms": p["trt_fp16_s"] * 1e3,
               "roofline_trt_ms": p["trt_roofline_fp32_s"] * 1e3,
               "roofline_eager_unfolded_ms": p["eager_unfolded_roofline_fp32_s"] * 1e3,
               "kernels_trt_model": p["trt_kernel"], "kernels_eager_unfolded_model": p["eager_unfolded_kernel"]}
        for cfg in ("fp32", "fp32_notf32", "fp16"):
            for mode in ("eager", "cuda_graph", "compiled", "compiled_cuda_graph"):
                row[f"meas_{cfg}_{mode}_ms"] = m(name, cfg, mode)
                if mode in ("eager", "compiled") and m(name, cfg, mode) is not None:
                    row[f"meas_{cfg}_{mode}_range_ms"] = [m(name, cfg, mode, "lo_ms"), m(name, cfg, mode, "hi_ms")]
                    row[f"meas_{cfg}_{mode}_rounds"] = m(name, cfg, mode, "rounds")
        prof = mp.get("fp32", {}).get("eager_profile") or {}
        row["meas_fp32_eager_cuda_kernels"] = prof.get("kernels")
        row["meas_fp32_eager_gpu_busy_ms"] = prof.get("gpu_busy_ms")
        cprof = mp.get("fp32", {}).get("compiled_profile") or {}
        row["meas_fp32_compiled_cuda_kernels"] = cprof.get("kernels")
        row["meas_fp32_compiled_gpu_busy_ms"] = cprof.get("gpu_busy_ms")
        e, g, cg = row["meas_fp32_eager_ms"], row["meas_fp32_cuda_graph_ms"], row["meas_fp32_compiled_cuda_graph_ms"]
        row["ratio_eager_over_pred_trt"] = e / row["pred_trt_ms"]
        row["ratio_eager_over_pred_eager"] = e / row["pred_eager_ms"]
        row["ratio_eager_over_pred_eager_unfolded"] = e / row["pred_eager_unfolded_ms"]
        row["ratio_compiled_graph_over_pred_trt"] = cg / row["pred_trt_ms"] if cg else None
        row["ratio_eager_graph_over_pred_trt"] = g / row["pred_trt_ms"]
        # op_overhead that would make each prediction equal the measurement (roofline kept)
        ke, kt = p["eager_unfolded_kernel"], p["trt_kernel"]
        row["fit_eager_overhead_us"] = (e - row["roofline_eager_unfolded_ms"]) / ke * 1e3
        row["fit_eager_overhead_range_us"] = [(x - row["roofline_eager_unfolded_ms"]) / ke * 1e3
                                              for x in row["meas_fp32_eager_range_ms"]]
        row["fit_eager_graph_overhead_us"] = (g - row["roofline_eager_unfolded_ms"]) / ke * 1e3
        if cg:
            row["fit_trt_overhead_us_vs_compiled_graph"] = (cg - row["roofline_trt_ms"]) / kt * 1e3
        if shared:
            sn = [x for x in shared["resnet50_nodes"] if x["dtype"] == "float32"]
            if [x["node"] for x in sn] == pn["name"]:
                row["shared_sum_isolated_nodes_fp32_ms"] = sum(x["ms"] for x in sn[k:])
        rows.append(row)

    def lsq(meas_key, roof_key, kern_key):
        """One overhead for all partitions but the last (2 nodes: too small to weigh), least squares."""
        rs = [r for r in rows if r.get(meas_key) is not None and r["partition"] != f"after_{CUTS[-1]}"]
        num = sum(r[kern_key] * (r[meas_key] - r[roof_key]) for r in rs)
        return num / sum(r[kern_key] ** 2 for r in rs) * 1e3 if rs else None

    fits = {"eager_overhead_us_bn_charged": lsq("meas_fp32_eager_ms", "roofline_eager_unfolded_ms",
                                               "kernels_eager_unfolded_model"),
            "eager_cuda_graph_overhead_us_bn_charged": lsq("meas_fp32_cuda_graph_ms", "roofline_eager_unfolded_ms",
                                                           "kernels_eager_unfolded_model"),
            "trt_overhead_us_vs_compiled_cuda_graph": lsq("meas_fp32_compiled_cuda_graph_ms", "roofline_trt_ms",
                                                          "kernels_trt_model"),
            "note": "least-squares op_overhead over whole + first three suffixes, keeping each target's roofline "
                    "(efficiencies) as is; fp32 with cuDNN TF32 on"}
    res = {"device": meas["env"], "measurement": meas["measurement"], "measured_files": meas["files"],
           "errors": meas["errors"], "targets": pred["variants"], "fits": fits, "rows": rows}
    if shared:
        res["shared_reference"] = {"file": str(SHARED), "torch": shared["torch"], "device": shared["device"],
                                   **shared["models"]["resnet50"]}
    (HERE / "results.json").write_text(json.dumps(res, indent=1) + "\n")

    short = {"whole": "whole model"} | {f"after_{c}": f"after `{c}`" for c in CUTS}
    print("| fp32, batch 1 | nodes | pred `cloud-gpu-h100` (TRT) | pred `h100-torch-eager` | pred eager, BN charged "
          "| meas eager: median [range of rounds] | meas eager CUDA graph | meas compiled | meas compiled + CUDA graph "
          "| eager / pred eager | eager / pred eager BN charged | compiled+graph / pred TRT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["meas_fp32_eager_range_ms"]
        rc = r["ratio_compiled_graph_over_pred_trt"]
        print(f"| {short[r['partition']]} | {r['nodes']} | {_f(r['pred_trt_ms'])} | {_f(r['pred_eager_ms'])} "
              f"| {_f(r['pred_eager_unfolded_ms'])} | {_f(r['meas_fp32_eager_ms'])} [{_f(lo)}–{_f(hi)}] "
              f"| {_f(r['meas_fp32_cuda_graph_ms'])} | {_f(r['meas_fp32_compiled_ms'])} "
              f"| {_f(r['meas_fp32_compiled_cuda_graph_ms'])} | {_f(r['ratio_eager_over_pred_eager'], 2)} "
              f"| {_f(r['ratio_eager_over_pred_eager_unfolded'], 2)} | {_f(rc, 2)} |")
    print()
    print("| partition | fp32 TF32 off: eager / CUDA graph | fp16 meas: eager / CUDA graph / compiled / compiled+graph "
          "| fp16 pred TRT | CUDA kernels eager / compiled (fp32) | GPU busy eager / compiled (fp32) "
          "| fitted overhead/node, eager (BN charged) | fitted overhead/kernel, TRT model vs compiled+graph |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["fit_eager_overhead_range_us"]
        print(f"| {short[r['partition']]} | {_f(r['meas_fp32_notf32_eager_ms'])} / {_f(r['meas_fp32_notf32_cuda_graph_ms'])} "
              f"| {_f(r['meas_fp16_eager_ms'])} / {_f(r['meas_fp16_cuda_graph_ms'])} / {_f(r['meas_fp16_compiled_ms'])} "
              f"/ {_f(r['meas_fp16_compiled_cuda_graph_ms'])} | {_f(r['pred_trt_fp16_ms'])} "
              f"| {r['meas_fp32_eager_cuda_kernels']} / {r['meas_fp32_compiled_cuda_kernels']} "
              f"| {_f(r['meas_fp32_eager_gpu_busy_ms'])} / {_f(r['meas_fp32_compiled_gpu_busy_ms'])} "
              f"| {_f(r['fit_eager_overhead_us'], 1)} us [{_f(lo, 1)}–{_f(hi, 1)}] "
              f"| {_f(r.get('fit_trt_overhead_us_vs_compiled_graph'), 1)} us |")
    print()
    print("fits:", json.dumps(fits))
    print("wrote", HERE / "results.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("predict")
    pm = sub.add_parser("measure")
    pm.add_argument("--out", default=os.environ.get("OUT", str(HERE / "out")))
    pm.add_argument("--device", default="cuda")
    pm.add_argument("--no-compile", dest="compile", action="store_false")
    pm.add_argument("--runs", type=int, default=RUNS)
    pm.add_argument("--repeats", type=int, default=1, help="rounds of the eager/CUDA-graph timings")
    pm.add_argument("--budget-s", type=float, default=420, help="stop starting compiles after this many seconds")
    pc = sub.add_parser("compare")
    pc.add_argument("--measured", required=True, nargs="+", help="measured.json file(s); rounds are pooled")
    args = ap.parse_args()
    {"predict": cmd_predict, "measure": cmd_measure, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    main()
