"""What a user reads agrees with itself (issue 16.9): one parameter size per model, one name for the raw-input
cut, no bytes on an unused link, no hidden staging path in the log, plot titles that say what they show, the
privacy grid's labels beside the digits, and no 'privacy not requested' from 'splitc privacy'."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.cli import run_cli

MODEL = ["tests.models:Residual", "--input-shape", "1,3,224,224"]


@pytest.fixture(scope="module")
def variant_bundle(tmp_path_factory):
    """A compile whose bandwidth range gives two plans (one written as variants/v<i>), with its log."""
    out = tmp_path_factory.mktemp("consistency") / "bundle"
    import contextlib
    import io

    from splitc.driver.cli import main

    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as code:
        main(["compile", *MODEL, "-t", "pi,cloud-gpu", "--rtt-ms", "1", "--bandwidth-range", "1mbps:10gbps",
              "--emit", "none", "-o", str(out)])
    assert code.value.code == 0, err.getvalue()
    return out, stdout.getvalue(), err.getvalue()


def test_one_parameter_size_and_no_hidden_path(variant_bundle) -> None:
    out, stdout, err = variant_bundle
    logged = re.search(r"\[profile\] .*?, ([\d.]+ \w+) parameters", err).group(1)
    model_line = next(x for x in stdout.splitlines() if x.startswith("model:"))
    tier_line = next(x for x in stdout.splitlines() if x.startswith("tier 0"))
    assert f"{logged} parameters" in model_line and f"{logged} params" in tier_line  # the whole model on tier 0
    assert re.search(r"\[export\] partition 0 -> .*\(\d+ nodes, file [\d.]+ \w+,", err)  # the file size says so
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["parameter_bytes"] == manifest["partitions"][0]["parameter_bytes"]
    assert ".splitc-" not in err and ".splitc-" not in stdout  # the staging folder never shows
    assert f"[bundle] wrote {out}/variants/v" in err


def test_unused_link_claims_no_bytes_and_the_raw_input_has_one_name(variant_bundle) -> None:
    out, stdout, _ = variant_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["transfers"] == [] and manifest["plan"]["cuts"][0]["bytes"] == 0
    assert "all on raspberry-pi-4 (no link used)" in stdout
    report = (out / "report.md").read_text()
    assert "all on cloud-gpu-t4 (cut after input)" in report  # the raw-input cut is named 'input' everywhere
    for other in ("<input>", "before the first node", "raw input)"):
        assert other not in report and other not in stdout
    row = next(x for x in report.splitlines() if re.match(r"\s+\d+ head\s", x))  # the cut after the last node
    assert " nothing " in row


def test_pareto_plot_title_says_how_many_plans_it_shows(tmp_path, capsys, monkeypatch) -> None:
    titles = []
    from matplotlib.figure import Figure

    original = Figure.savefig

    def record(fig, *args, **kwargs):
        titles.append(fig._suptitle.get_text() if fig._suptitle else "")
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    code, out, err = run_cli(capsys, "plan", *MODEL, "-t", "pi,cloud-gpu", "--report", str(tmp_path / "r"))
    assert code == 0, err
    evaluated = int(re.search(r"; (\d+) plan\(s\) evaluated", out).group(1))
    assert re.fullmatch(rf"\d+ of {evaluated} evaluated plans shown, \d+ on the Pareto front", titles[0])


def test_privacy_grid_labels_sit_beside_the_rows(tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    from splitc.privacy.leakage import save_grid

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), original(fig, *a, **k))[1])
    images = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    assert save_grid(images, images, tmp_path / "g.png", "t")
    first = figures[0].axes[0]
    labels = [t for t in first.texts if t.get_text() == "original"]
    assert labels and labels[0].get_position()[0] < 0  # left of the first digit, in axes coordinates
    assert not first.get_title(loc="left")  # nothing written over the digit


def test_splitc_privacy_does_not_log_privacy_not_requested(tmp_path, capsys) -> None:
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((80, 1, 3, 16, 16)).astype(np.float32))
    code, out, err = run_cli(capsys, "privacy", "tests.models:Residual", "-t", "jetson,cloud-gpu", "--input-shape",
                             "1,3,16,16", "--calib", str(tmp_path / "calib.npz"), "--top", "0", "--epochs", "1",
                             "--samples", "8", "--max-samples", "16")
    assert code == 0, err
    assert "privacy not requested" not in err and "privacy_profile" not in err
