"""What a run shows while it works (src/vision_pipelines/console.py): a bar on a terminal,
plain periodic lines in a log, durations a person reads at a glance; log lines between bars,
never wrapped; an error once and short; no upstream deprecation chatter."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import KEDRO, make_project
from vision_pipelines import console
from vision_pipelines.console import ConsoleHandler, Progress, for_the_console, format_seconds


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


class Terminal(io.StringIO):
    """A stream that says it is a terminal; ``screen()`` is what a terminal shows of it."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        """``\\r`` goes back to the start of the line, ``\\n`` to a new line, text overwrites."""
        lines, column = [""], 0
        for char in self.getvalue():
            if char == "\n":
                lines, column = [*lines, ""], 0
            elif char == "\r":
                column = 0
            else:
                lines[-1] = lines[-1][:column].ljust(column) + char + lines[-1][column + 1:]
                column += 1
        return [line.rstrip() for line in lines]


def test_a_log_line_never_lands_on_a_progress_bar_s_line(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    logger = logging.getLogger("test_console.bar")
    logger.propagate = False
    handler = ConsoleHandler(terminal)
    handler.setFormatter(logging.Formatter("%(levelname)s  %(message)s"))
    logger.addHandler(handler)
    try:
        bar = Progress(10, "epoch 1/3", unit="batch")
        bar.update(5)
        logger.warning("halfway there")
        bar.update(5)
        bar.close()
    finally:
        logger.removeHandler(handler)
    screen = terminal.screen()
    assert "WARNING  halfway there" in screen  # the whole line: no bar before or after it
    assert not any("epoch 1/3" in line and "halfway" in line for line in screen), screen


def test_summary_lines_continue_under_the_message_and_tracebacks_end_where_the_error_was_raised() -> None:
    handler = ConsoleHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(levelname)s  %(message)s"))
    summary = logging.makeLogRecord({"levelname": "INFO", "msg": "fruits done.\n  model: data/06_models/m.pt"})
    assert handler.format(summary) == "INFO  fruits done.\n        model: data/06_models/m.pt"
    try:
        Path("/nonexistent/file").read_text()
    except OSError:
        failed = logging.makeLogRecord({"levelname": "ERROR", "msg": "could not read it", "exc_info": sys.exc_info()})
    lines = handler.format(failed).splitlines()
    assert lines[:2] == ["ERROR  could not read it", "       FileNotFoundError: [Errno 2] No such file or directory: "
                                                      "'/nonexistent/file'"]
    assert len(lines) == 3 and lines[2].endswith("in info.log") and "pathlib.py" in lines[2]


@pytest.mark.parametrize("origin, category, shown", [
    (".venv/lib/python3.11/site-packages/torch/jit/_trace.py", FutureWarning, False),
    (".venv/lib/python3.11/site-packages/kedro_mlflow/config/kedro_mlflow_config.py", DeprecationWarning, False),
    (".venv/lib/python3.11/site-packages/kedro_viz/api/rest/responses/pipelines.py", DeprecationWarning, False),
    (".venv/lib/python3.11/site-packages/kedro_mlflow/framework/hooks/mlflow_hook.py", UserWarning, True),
    ("src/vision_pipelines/engine.py", FutureWarning, True),  # this project's code: the user can act
])
def test_upstream_deprecation_chatter_stays_off_the_console(origin: str, category: type, shown: bool) -> None:
    """As ``logging.captureWarnings`` logs a warning (to ``py.warnings``); info.log keeps them all."""
    text = warnings.formatwarning("`torch.jit.trace` is deprecated", category, f"/work/{origin}", 12, None)
    assert for_the_console(logging.makeLogRecord({"name": "py.warnings", "msg": text})) is shown


def test_a_failing_run_prints_its_error_once_without_kedro_s_resume_hints(tmp_path: Path) -> None:
    """The real command on a source folder without images: the download stage runs, the split
    fails. One short error with this project's hint; the whole traceback in info.log."""
    project = make_project(tmp_path / "project")
    (tmp_path / "empty").mkdir()
    run = subprocess.run([KEDRO, "run", "--pipelines=fruits", "--env=cpu",
                          f"--params=fruits.source.kind=local,fruits.source.path={tmp_path / 'empty'}"],
                         cwd=project, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "60"})
    console = run.stdout + run.stderr
    assert run.returncode != 0
    assert console.count("no folder named 'Training'") == 1, console
    assert "check source.path" in console  # the project's hint
    for kedro_hint in ("--from-nodes", "Repeat the previous command", "nodes that have not run", "Traceback"):
        assert kedro_hint not in console, console
    assert len(console.splitlines()) <= 3, console
    log = (project / "info.log").read_text()
    assert "Traceback (most recent call last)" in log and "--from-nodes" in log
