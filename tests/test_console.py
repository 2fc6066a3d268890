"""What a run shows while it works (src/vision_pipelines/console.py): a bar on a terminal,
plain periodic lines in a log, durations a person reads at a glance."""

from __future__ import annotations

import logging

import pytest

from vision_pipelines import console
from vision_pipelines.console import Progress, format_seconds


@pytest.mark.parametrize("seconds, text", [(0.05, "0.05 s"), (42, "42 s"), (420, "7 min"), (12000, "3 h 20 min")])
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_without_a_terminal_progress_is_a_line_every_so_often(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    monkeypatch.setattr(console.time, "time", lambda: now[0])
    monkeypatch.setattr(console, "on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="vision_pipelines")
    bar = Progress(1000, "decoding images", unit="img", every_s=30)
    for _ in range(100):
        now[0] += 1  # 10 images a second
        bar.update(10)
        bar.postfix(loss="0.50")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 30, 60 and 90 s: not one per update
    assert lines[0] == "decoding images: 300/1,000 img (30%), 10 img/s, 70 s left, loss=0.50"
    assert bar.bar is None


def test_on_a_terminal_progress_is_a_bar_and_logs_nothing(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(console, "on_terminal", lambda: True)
    caplog.set_level(logging.INFO, logger="vision_pipelines")
    bar = Progress(10, "epoch 1/3", unit="batch", every_s=0)
    for _ in range(10):
        bar.update()
    bar.close()
    assert bar.bar is not None and bar.bar.n == 10 and not caplog.records
