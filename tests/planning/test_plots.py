"""Plan plots: PNG files are written from plain dicts and show the data given; bad input is a clear user error.

Each test checks the PNG (its size, that it is not blank, that the front / chosen colours are drawn)
and the figure that was saved (the points and lines on each panel are exactly the data given).
"""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

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


@pytest.fixture
def saved(monkeypatch) -> list[Figure]:
    """Every Figure the plot functions save, to read back what was drawn."""
    figures: list[Figure] = []
    real = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def _image(path, width: int, height: int) -> np.ndarray:
    """The PNG's RGB pixels, checked to be the figure's size at 120 dpi and not a blank canvas."""
    assert _is_png(path)
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[:2] == (height, width), image.shape
    assert (image < 0.95).mean() > 0.01 and image.std() > 0.05  # something was drawn
    return image


def _pixels(image: np.ndarray, colour: str) -> int:
    """How many pixels have (nearly) this colour."""
    return int((np.abs(image - np.array(to_rgb(colour))).max(axis=-1) < 0.03).sum())


def _scattered(ax) -> list[tuple[float, float]]:
    """Every scatter point of a panel (dominated, front, chosen), as (x, y)."""
    return [tuple(map(float, xy)) for c in ax.collections for xy in c.get_offsets()]


def _expected(points: list[dict], key: str) -> list[tuple[float, float]]:
    return [(p["latency_s"] * 1e3, float(p[key])) for p in points
            if p.get(key) is not None and np.isfinite(p[key]) and np.isfinite(p["latency_s"])]


def _same_points(got: list, want: list) -> bool:
    return len(got) == len(want) and np.allclose(np.array(sorted(got)), np.array(sorted(want)))


def test_pareto_png_with_privacy(tmp_path, saved):
    points = _points()
    chosen = next(i for i, p in enumerate(points) if p["pareto"])
    out = plot_pareto(points, tmp_path / "report" / "pareto.png", chosen=chosen)
    assert out == tmp_path / "report" / "pareto.png"
    image = _image(out, 11 * 120, int(4.5 * 120))
    assert _pixels(image, "tab:blue") > 100 and _pixels(image, "tab:red") > 20  # the front and the chosen star
    figure = saved[-1]
    assert figure._suptitle.get_text() == f"24 plans, {sum(p['pareto'] for p in points)} on the Pareto front"
    cost_ax, privacy_ax = figure.axes
    for ax, key in ((cost_ax, "usd_per_million"), (privacy_ax, "dcor")):
        dots = _scattered(ax)
        star = dots.pop()  # the chosen plan, drawn last
        assert star == pytest.approx((points[chosen]["latency_s"] * 1e3, points[chosen][key]))
        assert _same_points(dots, _expected(points, key))  # every plan, nothing else
        front = ax.collections[1].get_offsets()
        assert len(front) == sum(p["pareto"] for p in points)


def test_pareto_png_without_privacy_and_chosen_by_label(tmp_path, saved):
    points = _points(with_dcor=False)
    out = plot_pareto(points, tmp_path / "pareto.png", chosen=points[5]["label"])
    _image(out, 11 * 120, int(4.5 * 120))
    cost_ax, privacy_ax = saved[-1].axes
    assert _scattered(cost_ax)[-1] == pytest.approx((points[5]["latency_s"] * 1e3, points[5]["usd_per_million"]))
    assert not privacy_ax.axison and "privacy not evaluated" in privacy_ax.texts[0].get_text()
    assert len(privacy_ax.collections) == 0  # nothing plotted where there is no data


def test_pareto_png_skips_unknown_and_infinite_values(tmp_path, saved):
    points = _points()
    points[0]["usd_per_million"] = float("inf")  # e.g. a FaaS partition that does not fit
    points[1]["dcor"] = None
    points[2]["usd_per_million"] = None  # cost not evaluated for this one
    _image(plot_pareto(points, tmp_path / "pareto.png", chosen=0), 11 * 120, int(4.5 * 120))
    cost_ax, privacy_ax = saved[-1].axes
    assert _same_points(_scattered(cost_ax), _expected(points, "usd_per_million"))
    assert len(_scattered(cost_ax)) == 22 and "(2 plan(s) without a finite value not shown)" in cost_ax.get_title()
    assert len(_scattered(privacy_ax)) == 23 + 1  # 23 plans with a leakage value, plus the chosen star
    no_cost = [{**p, "usd_per_million": None} for p in points]
    _image(plot_pareto(no_cost, tmp_path / "no-cost.png"), 11 * 120, int(4.5 * 120))
    assert not saved[-1].axes[0].axison and "cost not evaluated" in saved[-1].axes[0].texts[0].get_text()


def test_staircase_is_the_2d_front():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    stairs = _staircase(x, y)
    expected = np.flatnonzero(_front(np.column_stack([x, y])))
    assert sorted(stairs.tolist()) == sorted(expected.tolist())
    assert np.all(np.diff(x[stairs]) > 0) and np.all(np.diff(y[stairs]) < 0)


def test_bandwidth_variants_png(tmp_path, saved):
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
    image = _image(out, 8 * 120, int(4.5 * 120))
    ax = saved[-1].axes[0]
    assert ax.get_title() == "3 plan(s) optimal across the range, 2 switch point(s)"
    lines = [line for line in ax.get_lines() if line.get_linestyle() != ":"]
    assert len(lines) == 6  # per plan: the whole sweep (thin) and its optimal range (thick)
    for v, (sweep, optimal) in zip(variants, zip(lines[::2], lines[1::2])):
        assert np.allclose(sweep.get_xdata(), bw) and np.allclose(sweep.get_ydata(), np.array(v["latency_s"]) * 1e3)
        inside = (bw >= v["range_bps"][0]) & (bw <= v["range_bps"][1])
        assert np.allclose(optimal.get_xdata(), bw[inside]) and optimal.get_linewidth() > sweep.get_linewidth()
        assert _pixels(image, optimal.get_color()) > 50  # the thick line is really drawn in its colour
    switches = sorted(float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_linestyle() == ":")
    assert switches == pytest.approx([4e6, 3e7])


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
