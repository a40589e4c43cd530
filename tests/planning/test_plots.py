"""Plan plots: PNG files are written from plain dicts, bad input is a clear user error."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from splitc.planning.plots import _staircase, plot_bandwidth_variants, plot_pareto
from splitc.errors import SplitcError
from splitc.planning.pricing import plan_cost
from splitc.targets.target import TargetRegistry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _front(values: np.ndarray) -> np.ndarray:
    """Brute-force non-domination (all objectives minimised), independent of the plot code."""
    return np.array([not any(np.all(o <= v) and np.any(o < v) for o in values) for v in values])


def _points(with_dcor: bool = True) -> list[dict]:
    """Plans over a device -> VM -> FaaS chain, priced by the real price models."""
    registry = TargetRegistry.with_builtins()
    tiers = [registry.resolve("jetson"), registry.resolve("c6i-large"), registry.resolve("lambda")]
    rng = np.random.default_rng(3)
    points = []
    for i in range(24):
        compute = rng.uniform(0.0, 0.15, 3)
        cost = plan_cost(tiers, compute, [1.0, 1.0, rng.uniform(0.05, 1.0)], rps=20.0)
        dcor = float(rng.uniform(0.1, 0.95)) if with_dcor else None
        points.append({"latency_s": float(compute.sum() + 0.03), "usd_per_million": cost.usd_per_million,
                       "dcor": dcor, "label": f"cuts {i},{i + 3}"})
    objectives = np.array([[p["latency_s"], p["usd_per_million"], p["dcor"] or 0.0] for p in points])
    for p, on in zip(points, _front(objectives)):
        p["pareto"] = bool(on)
    return points


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def test_pareto_png_with_privacy(tmp_path):
    points = _points()
    chosen = next(i for i, p in enumerate(points) if p["pareto"])
    out = plot_pareto(points, tmp_path / "report" / "pareto.png", chosen=chosen)
    assert out == tmp_path / "report" / "pareto.png" and _is_png(out)
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_pareto_png_without_privacy_and_chosen_by_label(tmp_path):
    points = _points(with_dcor=False)
    out = plot_pareto(points, tmp_path / "pareto.png", chosen=points[5]["label"])
    assert _is_png(out)


def test_pareto_png_skips_unknown_and_infinite_values(tmp_path):
    points = _points()
    points[0]["usd_per_million"] = float("inf")  # e.g. a FaaS partition that does not fit
    points[1]["dcor"] = None
    points[2]["usd_per_million"] = None  # cost not evaluated for this one
    assert _is_png(plot_pareto(points, tmp_path / "pareto.png", chosen=0))
    no_cost = [{**p, "usd_per_million": None} for p in points]
    assert _is_png(plot_pareto(no_cost, tmp_path / "no-cost.png"))


def test_staircase_is_the_2d_front():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    stairs = _staircase(x, y)
    expected = np.flatnonzero(_front(np.column_stack([x, y])))
    assert sorted(stairs.tolist()) == sorted(expected.tolist())
    assert np.all(np.diff(x[stairs]) > 0) and np.all(np.diff(y[stairs]) < 0)


def test_bandwidth_variants_png(tmp_path):
    bw = np.geomspace(1e6, 1e8, 40)
    variants = [
        {"label": "device only", "bandwidths_bps": bw.tolist(), "latency_s": [0.2] * bw.size,
         "range_bps": (1e6, 4e6)},
        {"label": "cut after layer3", "bandwidths_bps": bw.tolist(), "latency_s": (0.05 + 1.6e6 / bw).tolist(),
         "range_bps": (4e6, 3e7)},
        {"label": "cloud only", "bandwidths_bps": bw.tolist(), "latency_s": (0.03 + 4.8e6 / bw).tolist(),
         "range_bps": [3e7, 1e8]},
    ]
    out = plot_bandwidth_variants(variants, tmp_path / "bandwidth.png")
    assert _is_png(out)


@pytest.mark.parametrize("empty", [[], None, ()])
def test_empty_input_is_a_user_error(tmp_path, empty):
    with pytest.raises(SplitcError, match="nothing to plot"):
        plot_pareto(empty, tmp_path / "p.png")
    with pytest.raises(SplitcError, match="nothing to plot"):
        plot_bandwidth_variants(empty, tmp_path / "b.png")
    assert not list(tmp_path.iterdir())


def test_bad_points_are_user_errors(tmp_path):
    points = _points()
    with pytest.raises(SplitcError, match=r"points\[0\] lacks key\(s\) pareto"):
        plot_pareto([{"latency_s": 0.1, "usd_per_million": 1.0}], tmp_path / "p.png")
    with pytest.raises(SplitcError, match="no point has a finite latency_s"):
        plot_pareto([{**points[0], "latency_s": float("nan")}], tmp_path / "p.png")
    with pytest.raises(SplitcError, match=r"usd_per_million must be a number or None, got 'cheap'"):
        plot_pareto([{**points[0], "usd_per_million": "cheap"}], tmp_path / "p.png")
    with pytest.raises(SplitcError, match="not among the points' labels"):
        plot_pareto(points, tmp_path / "p.png", chosen="no such plan")
    with pytest.raises(SplitcError, match="point index"):
        plot_pareto(points, tmp_path / "p.png", chosen=len(points))
    with pytest.raises(SplitcError, match=r"\.png"):
        plot_pareto(points, tmp_path / "p.svg")


def test_bad_variants_are_user_errors(tmp_path):
    good = {"label": "a", "bandwidths_bps": [1e6, 1e7], "latency_s": [0.2, 0.1], "range_bps": (1e6, 1e7)}
    with pytest.raises(SplitcError, match="equally long"):
        plot_bandwidth_variants([{**good, "latency_s": [0.1]}], tmp_path / "b.png")
    with pytest.raises(SplitcError, match="positive finite"):
        plot_bandwidth_variants([{**good, "bandwidths_bps": [0.0, 1e7]}], tmp_path / "b.png")
    with pytest.raises(SplitcError, match="lo .* above hi"):
        plot_bandwidth_variants([{**good, "range_bps": (1e7, 1e6)}], tmp_path / "b.png")
    with pytest.raises(SplitcError, match="lacks key"):
        plot_bandwidth_variants([{"label": "a"}], tmp_path / "b.png")
