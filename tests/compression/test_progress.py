"""Bottleneck training and pruning's fine-tuning show progress a person can read (issue 16.11): a tqdm bar with
the time left on a terminal, INFO lines in a non-interactive log, nothing under -q."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from splitc.compression.insert_bottleneck import train_bottleneck


def _train(epochs: int = 3) -> None:
    torch.manual_seed(0)
    features = torch.rand(16, 4, 4, 4)
    tail = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    train_bottleneck(features, tail, torch.rand(16, 3), None, 0.5, 1, epochs=epochs, label="'x'")


@pytest.fixture
def splitc_log():
    log = logging.getLogger("splitc")
    level, handlers, propagate = log.level, log.handlers[:], log.propagate
    yield log
    log.setLevel(level)
    log.handlers[:] = handlers
    log.propagate = propagate


def test_terminal_shows_a_bar_with_the_time_left(splitc_log, capsys, monkeypatch) -> None:
    splitc_log.setLevel(logging.INFO)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    _train()
    err = capsys.readouterr().err
    assert "[insert_bottleneck] training 'x' ratio 0.5 stride 1" in err
    assert re.search(r"\d/3 \[\d\d:\d\d<", err) and "epoch/s" in err  # tqdm: done/total [elapsed<remaining, rate]


def test_log_gets_lines_and_quiet_gets_nothing(splitc_log, caplog, capsys) -> None:
    splitc_log.propagate = True
    with caplog.at_level(logging.INFO, logger="splitc"):
        _train(epochs=10)
    assert "[insert_bottleneck] training 'x' ratio 0.5 stride 1: 10/10 epoch(s)" in caplog.text
    assert "\r" not in capsys.readouterr().err  # no bar drawn into a log
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="splitc"):  # -q
        _train()
    assert caplog.text == "" and capsys.readouterr().err == ""
