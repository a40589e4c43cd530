"""Privacy vs accuracy on real MNIST digits: the strong attacker against noise and trained defences.

One command (trains the example model first if it is missing)::

    python benchmarks/privacy.py               # writes benchmarks/results/privacy.{json,md,png}
    python benchmarks/privacy.py --quick       # stem + layer2, fewer settings, the default attacker budget
    python benchmarks/privacy.py --ablation    # attacker saturation: does a bigger budget still gain > 1 dB?

For each cut in :data:`CUTS` (shallow to deep, forced with ``CompileOptions.split``)
and each setting in :data:`EPSILONS` (no noise, then ``--privacy-epsilon`` from mild
to strong), and, at :data:`DEFENCE_CUTS`, each trained defence in :data:`DEFENCES`
(``--privacy-defence``), ``examples/mnist/mnist_cnn.pt`` is compiled for
``jetson,cloud-gpu`` with ``examples/mnist/calib.npz`` (1,000 digits: the clip norm
C is their median norm; the defences fine-tune on the accuracy guard's 700 of them).
Then

* the attacker: :func:`splitc.privacy.leakage.attack_bundle` with
  ``BUDGETS["strong"]`` (a ridge inverse + residual conv correction, 30 epochs, and a
  second family, a sigmoid conv decoder with a residual block, 40 epochs; the better one
  on the attacker's own validation split is scored) trains on what the bundle really
  sends on link 0 (ONNX Runtime: noise, defended weights and all) for the 1,000
  calibration digits and is scored on the 1,000 test digits (PSNR in dB over [0, 1]
  pixels, SSIM). It is *adaptive*: trained from scratch on the defended wire, with
  more epochs and a larger decoder than the adversary the defence trained against
  (hybrid width 32 without residual blocks, one step per batch), and a second family;
* the task: the bundle runs through the reference runner on ``test.npz`` (1,000
  digits neither the model nor the compiler saw), top-1 against the labels;
* the cost: compile seconds, and for defences the extra over the undefended compile.

The accuracy guard is switched off (``--accuracy-target`` 0.01 absolute) for the noise
rows and the forced-strength defences so settings that cost accuracy still appear;
``auto`` runs with the default ``--accuracy-target 0.99`` (the issue's done-means
command). Goals: issue 5 (noise): some (cut, epsilon) with attacker PSNR >= 10 dB
below the shallowest cut without noise at <= 1 point accuracy drop; issue 19
(defences, at the stem and layer2): the attacker >= 6 dB worse than on the undefended
cut with <= 1 point drop, and lower PSNR than every noise setting at that cut whose
accuracy is at least the defence's (within 0.5 point).

Why epsilon goes up to hundreds: the noise is per element with ``b = C / epsilon``
while a D-element tensor of norm C has elements of size ~``C / sqrt(D)``, so the
per-element signal-to-noise ratio is ~``epsilon / sqrt(D)``; the shallow cuts carry
D = 12,544 numbers (sqrt(D) = 112). The epsilons are not a DP guarantee (see
docs/privacy.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MNIST = ROOT / "examples" / "mnist"
#: (cut node, what crosses it), shallow to deep.
CUTS = [("stem_2", "stem: 16x28x28"), ("relu_1", "layer1: 16x28x28"), ("relu_3", "layer2: 32x14x14"),
        ("relu_5", "layer3: 64x7x7"), ("flatten", "pooled: 64")]
#: None = no noise.
EPSILONS = [None, 1000.0, 300.0, 100.0, 30.0]
QUICK_CUTS = ["stem_2", "relu_3"]
QUICK_EPSILONS = [None, 1000.0, 300.0]
GOAL_DB, GOAL_POINTS = 10.0, 1.0
#: Trained defences (``--privacy-defence``, ``--privacy-strength``; None = the strength auto picks) and their cuts.
DEFENCES = [("adversarial", 0.1), ("dcor", 3.0), ("auto", None)]
QUICK_DEFENCES = [("auto", None)]
DEFENCE_CUTS = ["stem_2", "relu_3"]
DEFENCE_GOAL_DB = 6.0
#: --ablation: budgets compared at the undefended cuts (BUDGETS' names, plus "stronger" defined here).
ABLATION_BUDGETS = ["default", "strong", "stronger"]


def ensure_model() -> None:
    if not (MNIST / "mnist_cnn.pt").exists():  # examples/mnist/train_mnist.py: the same digits and split
        subprocess.run([sys.executable, str(MNIST / "train_mnist.py")], check=True)


def task_accuracy(bundle: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the bundle (ONNX Runtime, the reference runner) on ``(x, y)``."""
    from splitc.runtime.runner import BundleRunner

    runner = BundleRunner(bundle, threads=1)
    runner.use_exits = False
    output = runner.manifest["model"]["outputs"][0]["name"]
    preds = [int(np.asarray(runner.run({"x": x[i:i + 1]})[output]).argmax()) for i in range(len(x))]
    return float(np.mean(np.array(preds) == y))


def unsplit_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    import torch

    model = torch.load(MNIST / "mnist_cnn.pt", weights_only=False).eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def budget_of(name: str):
    """``BUDGETS[name]``, or ``stronger``: twice the strong budget's epochs, a wider, deeper decoder (ablation)."""
    from splitc.privacy.attacker import BUDGETS, AttackBudget

    if name == "stronger":
        return AttackBudget(hybrid_epochs=60, hybrid_width=48, hybrid_blocks=2, conv_epochs=80, conv_width=48,
                            conv_blocks=2, conv_lr=3e-3)
    return BUDGETS[name]


def run_one(cut: str, epsilon: float | None, tmp: Path, x, y, budget: str, png: Path | None,
            defence: tuple[str, float | None] | None = None, target: float = 0.99) -> dict:
    """Compile, attack and score one (cut, epsilon) or (cut, defence)."""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model
    from splitc.privacy.leakage import attack_bundle

    method, strength = defence or (None, None)
    guard = dict(accuracy_target=0.01, absolute_accuracy=True) if method != "auto" else {"accuracy_target": target}
    options = CompileOptions(targets=("jetson", "cloud-gpu"), split=(cut,), calib=str(MNIST / "calib.npz"),
                             emit=("none",), privacy_epsilon=epsilon, privacy_defence=method,
                             privacy_strength=strength, verify=False, **guard)
    start = time.perf_counter()
    out = tmp / f"{cut}-{epsilon or 'none'}-{method or 'none'}-{strength or ''}"
    result = compile_model(str(MNIST / "mnist_cnn.pt"), options, out, input_shapes=[(1, 1, 28, 28)])
    compile_s = time.perf_counter() - start
    attack = attack_bundle(out, MNIST / "calib.npz", budget=budget_of(budget), png=png,
                           held_out=MNIST / "test.npz")
    accuracy = task_accuracy(out, x, y)
    transfer = result.manifest["transfers"][0]
    noise = transfer.get("noise") or {}
    record = transfer.get("defence") or {}
    return {"cut": cut, "epsilon": epsilon, "defence": method, "strength": record.get("strength"),
            "wire": [t["shape"] for t in transfer["tensors"]],
            "elements": int(sum(np.prod(t["shape"]) for t in transfer["tensors"])),
            "clip_norm": noise.get("clip_norm"), "scale_b": noise.get("scale"),
            "psnr_db": attack.psnr_db, "ssim": attack.ssim, "mse": attack.mse, "accuracy": accuracy,
            "attacker": attack.attacker, "attacker_families": attack.families, "budget": budget,
            "dcor_before": record.get("dcor_before"), "dcor_after": record.get("dcor_after"),
            "grid_png": attack.grid_png, "compile_s": round(compile_s, 1), "attack_s": round(attack.seconds, 1)}


def defence_goal(rows: list[dict], reference: float) -> list[dict]:
    """Issue 19's goal per defence row: >= 6 dB below the undefended cut, <= 1 point drop, better than noise
    at equal accuracy (every noise row at the cut with accuracy >= the defence's - 0.5 point has a higher PSNR)."""
    out = []
    for r in (r for r in rows if r["defence"]):
        plain = next((p for p in rows if p["cut"] == r["cut"] and p["epsilon"] is None and not p["defence"]), None)
        if plain is None:
            continue
        gap = plain["psnr_db"] - r["psnr_db"]
        drop = 100 * (reference - r["accuracy"])
        rivals = [p for p in rows if p["cut"] == r["cut"] and p["epsilon"] is not None and not p["defence"]
                  and p["accuracy"] >= r["accuracy"] - 0.005]
        beats_noise = None if not rivals else all(p["psnr_db"] > r["psnr_db"] for p in rivals)
        r["extra_compile_s"] = round(r["compile_s"] - plain["compile_s"], 1)
        out.append({"cut": r["cut"], "defence": r["defence"], "strength": r["strength"], "gap_db": round(gap, 2),
                    "drop_points": round(drop, 2), "beats_noise_at_equal_accuracy": beats_noise,
                    "noise_rivals": [p["epsilon"] for p in rivals],
                    "met": gap >= DEFENCE_GOAL_DB and drop <= GOAL_POINTS and beats_noise is not False})
    return out


def goal(rows: list[dict], reference: float) -> dict:
    """The best (cut, epsilon) meeting the goal, by PSNR gap, and the baseline it is measured against."""
    base = next(r for r in rows if r["cut"] == rows[0]["cut"] and r["epsilon"] is None and not r["defence"])
    for r in rows:
        r["psnr_gap_db"] = base["psnr_db"] - r["psnr_db"]
        r["accuracy_drop_points"] = 100 * (reference - r["accuracy"])
    meeting = [r for r in rows if r["psnr_gap_db"] >= GOAL_DB and r["accuracy_drop_points"] <= GOAL_POINTS
               and not r["defence"]]
    best = max(meeting, key=lambda r: r["psnr_gap_db"]) if meeting else None
    return {"baseline": {"cut": base["cut"], "psnr_db": base["psnr_db"]}, "unsplit_accuracy": reference,
            "met": best is not None, "best": best and {k: best[k] for k in ("cut", "epsilon", "psnr_db",
                                                                             "psnr_gap_db", "accuracy_drop_points")},
            "meeting": [(r["cut"], r["epsilon"]) for r in meeting], "defences": defence_goal(rows, reference)}


def table(rows: list[dict], summary: dict) -> str:
    label = dict(CUTS)
    lines = [f"Unsplit model: {100 * summary['unsplit_accuracy']:.2f} % on 1,000 test digits. Baseline: attacker PSNR "
             f"{summary['baseline']['psnr_db']:.2f} dB at the shallowest cut ({summary['baseline']['cut']}) without "
             f"noise.", "",
             "| cut | setting | C | b = C/eps | attacker PSNR (dB) | gap (dB) | SSIM | test accuracy | drop (points) "
             "| attacker | compile s (extra) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        eps = "none" if r["epsilon"] is None else f"epsilon {r['epsilon']:g}"
        if r["defence"]:
            eps = f"defence {r['defence']}" + (f" (strength {r['strength']:g})" if r["strength"] is not None else "")
        c = "" if r["clip_norm"] is None else f"{r['clip_norm']:.3g}"
        b = "" if r["scale_b"] is None else f"{r['scale_b']:.3g}"
        ssim = "" if r["ssim"] is None else f"{r['ssim']:.3f}"
        mark = " **goal**" if r["psnr_gap_db"] >= GOAL_DB and r["accuracy_drop_points"] <= GOAL_POINTS else ""
        lines.append(f"| {r['cut']} ({label.get(r['cut'], '')}) | {eps} | {c} | {b} | {r['psnr_db']:.2f} | "
                     f"{r['psnr_gap_db']:+.2f}{mark} | {ssim} | {100 * r['accuracy']:.2f} % | "
                     f"{r['accuracy_drop_points']:+.2f} | {r.get('attacker', '')} | {r['compile_s']}"
                     + (f" ({r['extra_compile_s']:+.1f})" if r.get("extra_compile_s") is not None else "") + " |")
    best = summary["best"]
    lines += ["", (f"Goal (PSNR >= {GOAL_DB:g} dB below the baseline at <= {GOAL_POINTS:g} point accuracy drop): MET by "
                   f"{len(summary['meeting'])} setting(s); largest gap {best['psnr_gap_db']:.2f} dB at cut "
                   f"{best['cut']}, epsilon {best['epsilon'] or 'none'} ({best['accuracy_drop_points']:+.2f} points)."
                   if best else f"Goal (PSNR >= {GOAL_DB:g} dB below the baseline at <= {GOAL_POINTS:g} point "
                                f"accuracy drop): NOT met by any setting measured.")]
    for d in summary["defences"]:
        noise = {None: "no noise setting at this cut keeps that accuracy", True: "lower PSNR than noise at equal "
                 "accuracy", False: "noise at equal accuracy does better"}[d["beats_noise_at_equal_accuracy"]]
        lines.append(f"Defence {d['defence']} (strength {d['strength']}) at {d['cut']}: attacker {d['gap_db']:+.2f} dB "
                     f"vs undefended, accuracy {-d['drop_points']:+.2f} points, {noise}: goal (>= {DEFENCE_GOAL_DB:g} "
                     f"dB, <= {GOAL_POINTS:g} point, better than noise) {'MET' if d['met'] else 'NOT met'}.")
    return "\n".join(lines)


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    """Attacker PSNR (x) vs test accuracy (y), one line per cut through its epsilons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for cut, label in CUTS:
        mine = [r for r in rows if r["cut"] == cut and not r["defence"]]
        if not mine:
            continue
        line, = ax.plot([r["psnr_db"] for r in mine], [100 * r["accuracy"] for r in mine], "o-", label=f"{cut} ({label})")
        for r in mine:
            ax.annotate("none" if r["epsilon"] is None else f"{r['epsilon']:g}", (r["psnr_db"], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(3, 3), fontsize=7, color=line.get_color())
        for r in (r for r in rows if r["cut"] == cut and r["defence"]):
            ax.plot([r["psnr_db"]], [100 * r["accuracy"]], "*", ms=12, color=line.get_color())
            ax.annotate(f"{r['defence']} {r['strength']}", (r["psnr_db"], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(4, -9), fontsize=7, color=line.get_color())
    ref = 100 * summary["unsplit_accuracy"]
    ax.axhline(ref - GOAL_POINTS, color="grey", ls="--", lw=1, label=f"unsplit accuracy - {GOAL_POINTS:g} point")
    ax.axvline(summary["baseline"]["psnr_db"] - GOAL_DB, color="grey", ls=":", lw=1,
               label=f"baseline PSNR - {GOAL_DB:g} dB")
    ax.set_xlabel("attacker PSNR on held-out digits (dB, lower = more private)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST: privacy vs accuracy per cut (dots: --privacy-epsilon; stars: --privacy-defence)")
    ax.set_ylim(max(0, min(100 * r["accuracy"] for r in rows) - 2), 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ablation(out: Path, tmp: Path, cuts: list[str]) -> dict:
    """The attacker at :data:`ABLATION_BUDGETS` on the undefended cuts: saturated when the last step gains <= 1 dB."""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model
    from splitc.privacy.leakage import attack_bundle

    rows = []
    for cut in cuts:
        bundle = tmp / f"ablation-{cut}"
        compile_model(str(MNIST / "mnist_cnn.pt"), CompileOptions(targets=("jetson", "cloud-gpu"), split=(cut,),
                      calib=str(MNIST / "calib.npz"), emit=("none",), verify=False), bundle,
                      input_shapes=[(1, 1, 28, 28)])
        for name in ABLATION_BUDGETS:
            attack = attack_bundle(bundle, MNIST / "calib.npz", budget=budget_of(name), held_out=MNIST / "test.npz")
            rows.append({"cut": cut, "budget": name, "budget_settings": budget_of(name).to_dict(),
                         "psnr_db": attack.psnr_db, "ssim": attack.ssim, "attacker": attack.attacker,
                         "families": attack.families, "attack_s": round(attack.seconds, 1)})
            print(f"{cut:<8} {name:<9}: {attack.psnr_db:6.2f} dB (SSIM {attack.ssim:.4f}, {attack.attacker}, "
                  f"{attack.seconds:.0f}s)", flush=True)
    lines = ["| cut | budget | PSNR (dB) | SSIM | best family | gain over the previous budget (dB) |",
             "|---|---|---:|---:|---|---:|"]
    verdicts = []
    for cut in cuts:
        mine = [r for r in rows if r["cut"] == cut]
        for prev, r in zip([None] + mine[:-1], mine):
            gain = "" if prev is None else f"{r['psnr_db'] - prev['psnr_db']:+.2f}"
            lines.append(f"| {cut} | {r['budget']} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | {r['attacker']} | {gain} |")
        last = mine[-1]["psnr_db"] - mine[-2]["psnr_db"]
        verdicts.append(f"{cut}: the largest budget gains {last:+.2f} dB over the benchmark's "
                        f"({'saturated' if last <= 1.0 else 'NOT saturated'}: <= 1 dB)")
    text = "\n".join(lines + [""] + verdicts)
    (out / "privacy_ablation.json").write_text(json.dumps({"rows": rows, "verdicts": verdicts}, indent=2) + "\n")
    (out / "privacy_ablation.md").write_text(text + "\n\nMeasured by `python benchmarks/privacy.py --ablation`.\n")
    print(text)
    return {"rows": rows, "verdicts": verdicts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true",
                        help=f"cuts {QUICK_CUTS}, epsilons {QUICK_EPSILONS}, defences {QUICK_DEFENCES}, default attacker")
    parser.add_argument("--attacker", choices=["quick", "default", "strong"], default=None,
                        help="attacker budget (splitc.privacy.attacker.BUDGETS; default: strong, --quick: default)")
    parser.add_argument("--ablation", action="store_true", help="only the attacker-budget ablation (stem, layer2)")
    parser.add_argument("--no-defences", action="store_true", help="noise rows only")
    parser.add_argument("--accuracy-target", type=float, default=0.99,
                        help="--accuracy-target of the 'auto' defence rows (relative; default 0.99)")
    args = parser.parse_args()
    logging.getLogger("splitc").setLevel(logging.WARNING)
    import torch

    from splitc.errors import SplitcError

    torch.set_num_threads(1)  # the attacker and the defences pin one thread in training; so does the rest
    ensure_model()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        with tempfile.TemporaryDirectory() as tmp:
            ablation(out, Path(tmp), DEFENCE_CUTS)
        return
    budget = args.attacker or ("default" if args.quick else "strong")
    test = np.load(MNIST / "test.npz")
    x, y = test["x"].astype(np.float32), test["y"]
    reference = unsplit_accuracy(x, y)
    cuts = [c for c, _ in CUTS if not args.quick or c in QUICK_CUTS]
    epsilons = QUICK_EPSILONS if args.quick else EPSILONS
    defences = [] if args.no_defences else QUICK_DEFENCES if args.quick else DEFENCES
    settings = [(eps, None) for eps in epsilons]
    rows, refused, start = [], [], time.perf_counter()
    print(f"unsplit model: test accuracy {reference:.4f}; {len(cuts)} cuts x {len(epsilons)} noise settings, "
          f"{len(defences)} defence(s) at {DEFENCE_CUTS}; attacker budget {budget}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for cut in cuts:
            for eps, defence in settings + [(None, d) for d in defences if cut in DEFENCE_CUTS]:
                name = f"{cut}-{eps or 'none'}" + (f"-{defence[0]}" if defence else "")
                keep = eps in (None, epsilons[-1]) or defence is not None
                png = out / "privacy_grids" / f"{name}.png" if keep else None
                if png is not None:
                    png.parent.mkdir(exist_ok=True)
                try:
                    row = run_one(cut, eps, Path(tmp), x, y, budget, png, defence, args.accuracy_target)
                except SplitcError as exc:  # e.g. no defence strength meets the target: a result, not a crash
                    refused.append({"cut": cut, "epsilon": eps, "defence": defence and defence[0], "error": str(exc)})
                    print(f"[{time.perf_counter() - start:5.0f}s] {cut:<8} {name}: compile refused: {exc}", flush=True)
                    continue
                rows.append(row)
                what = f"defence {defence[0]} {row['strength']}" if defence else f"eps {str(eps or 'none'):>6}"
                print(f"[{time.perf_counter() - start:5.0f}s] {cut:<8} {what}: attacker PSNR "
                      f"{row['psnr_db']:6.2f} dB ({row['attacker']}), SSIM "
                      f"{row['ssim'] if row['ssim'] is None else round(row['ssim'], 3)}, test accuracy "
                      f"{row['accuracy']:.4f} (compile {row['compile_s']}s, attack {row['attack_s']}s)", flush=True)
    summary = goal(rows, reference)
    total = time.perf_counter() - start
    text = table(rows, summary)
    print(text)
    for row in rows:  # paths relative to the results folder
        row["grid_png"] = row["grid_png"] and str(Path(row["grid_png"]).relative_to(out))
    command = "python benchmarks/privacy.py" + (" --quick" if args.quick else "") + \
        (f" --attacker {args.attacker}" if args.attacker else "") + (" --no-defences" if args.no_defences else "") + \
        (f" --accuracy-target {args.accuracy_target:g}" if args.accuracy_target != 0.99 else "")
    payload = {"command": command, "attacker_budget": budget_of(budget).to_dict(), "seconds": round(total, 1),
               "summary": summary, "rows": rows, "refused": refused}
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(out / "privacy.json", payload)
    (out / "privacy.md").write_text(text + f"\n\nMeasured by `{command}` in {total:.0f} s (attacker budget "
                                    f"{budget}: trained on the 1,000 calibration digits' wire, scored on the 1,000 "
                                    f"test digits).\n", encoding="utf-8")
    plot(rows, summary, out / "privacy.png")
    print(f"wrote {out / 'privacy.json'}, privacy.md, privacy.png ({total:.0f} s)")


if __name__ == "__main__":
    main()
