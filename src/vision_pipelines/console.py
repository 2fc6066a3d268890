"""What a run shows on the console: its own progress and results, and nothing else.

- ``Progress``: long steps (download, decode, epochs) as a tqdm bar on a terminal; in a log
  file, CI or a scheduler a bar is noise, so the same progress becomes an INFO line every
  ``every_s`` seconds.
- ``ConsoleHandler``: one ``LEVEL  message`` line per message, never wrapped (a path or a command
  is copied whole, at any width and in any log), written between progress bars, a traceback cut
  to where the error was raised, upstream deprecation chatter left to ``info.log``.
- ``report_error``: an error that ends the program, printed once and short.

The console shows this project's INFO lines and everyone's warnings; Kedro's per-dataset
load/save chatter goes only to ``info.log`` (``conf/logging.yml``). ``use_console`` (called by
``settings.py``) puts the above in place.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger("vision_pipelines")

# Deprecation notices libraries give about their own code or one another's, which a user of this
# project can do nothing about: torch.jit's (which torch's own code still calls), FastAPI's in kedro-viz,
# pydantic's in kedro-mlflow. Named by the package the warning points at.
UPSTREAM_CHATTER = ("torch/jit", "kedro_viz", "kedro_mlflow")
WARNING_LINE = re.compile(r"(?P<file>.*?):\d+: (?P<category>\w+): ")  # warnings.formatwarning's


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """``update(n)`` as work is done; ``postfix(...)`` for figures shown beside the bar."""

    def __init__(self, total: int | None, description: str, unit: str = "it", every_s: float = 30.0,
                 enabled: bool = True) -> None:
        self.total, self.description, self.unit, self.every_s = total, description, unit, every_s
        self.done, self.started, self.last_line = 0, time.time(), time.time()
        self.figures: dict[str, str] = {}
        self.bar = tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True,
                        unit_scale=unit == "B") if enabled and on_terminal() else None
        self.enabled = enabled

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.time() - self.last_line >= self.every_s:
            self.last_line = time.time()
            log.info("%s: %s", self.description, self.line())

    def postfix(self, **figures: str) -> None:
        self.figures = figures
        if self.bar is not None:
            self.bar.set_postfix(figures, refresh=False)

    def line(self) -> str:
        """``1,200/5,000 img (24%), 310 img/s, 12 s left, loss=0.52``."""
        elapsed = max(time.time() - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.done:,}{f'/{self.total:,}' if self.total else ''} {self.unit}"]
        if self.total:
            parts[0] += f" ({self.done / self.total:.0%})"
        parts.append(f"{rate:,.0f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"{format_seconds((self.total - self.done) / rate)} left")
        parts += [f"{k}={v}" for k, v in self.figures.items()]
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_seconds(seconds: float) -> str:
    """``0.05 s``, ``42 s``, ``7 min``, ``3 h 20 min``."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


class ConsoleHandler(logging.StreamHandler):
    """A line per message, never wrapped: a path or a command is copied whole, at any width and
    in any log. Written between progress bars (never on a bar's line); continuation lines start
    under the message; a traceback is cut to where the error was raised (``info.log`` keeps it
    whole); what ``for_the_console`` leaves out goes only to ``info.log``."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self.addFilter(for_the_console)

    @classmethod
    def like(cls, handler: logging.StreamHandler) -> ConsoleHandler:
        """A console handler with ``handler``'s stream, level, format, filters and name."""
        console = cls(handler.stream)
        console.setLevel(handler.level)
        console.setFormatter(handler.formatter)
        for kept in handler.filters:
            console.addFilter(kept)
        console.name = handler.name
        return console

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_info[0] is not None:
            record = copy.copy(record)  # other handlers (info.log) format the whole traceback
            record.exc_text = short_traceback(record)
        text = super().format(record)
        first_line, message = text.split("\n", 1)[0], record.getMessage().split("\n", 1)[0]
        indent = len(first_line) - len(message) if first_line.endswith(message) else 0  # the "INFO  "
        return text.replace("\n", "\n" + " " * indent)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)  # clears the bars, writes, redraws them
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own policy: report, never raise
            self.handleError(record)


def for_the_console(record: logging.LogRecord) -> bool:
    """False for what only ``info.log`` keeps: upstream deprecation chatter (``UPSTREAM_CHATTER``),
    Kedro's report of a failing node (``report_error`` prints the error once) and its suggestion to
    resume with ``--from-nodes`` or to repeat the command (a rerun of the same command resumes
    from the last finished epoch here)."""
    if record.name == "py.warnings":
        found = WARNING_LINE.match(record.getMessage())
        return not (found and ("Deprecat" in found["category"] or found["category"] == "FutureWarning")
                    and any(f"/{package}/" in Path(found["file"]).as_posix() for package in UPSTREAM_CHATTER))
    if record.name == "kedro.pipeline.node" and record.levelno >= logging.ERROR:
        return False
    return not (record.name.startswith("kedro.runner") and record.funcName == "_suggest_resume_scenario")


def short_traceback(record: logging.LogRecord) -> str:
    """Where the error was raised, after its type and message unless the record says them already."""
    kind, error, trace = record.exc_info
    frames = traceback.extract_tb(trace)
    where = f"at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name}; " if frames else ""
    said = f"{kind.__name__}: {error}"
    return ("" if said in record.getMessage() else said + "\n") + where + "the whole traceback is in info.log"


def report_error(kind: type[BaseException], error: BaseException, trace) -> None:
    """``sys.excepthook``: an error that ends the program, once and short (``ERROR  LayoutError:
    source.path=...: no such folder``, and where it was raised); Ctrl-C as Python shows it."""
    if not issubclass(kind, Exception):
        sys.__excepthook__(kind, error, trace)
        return
    log.error("%s: %s", kind.__name__, error, exc_info=(kind, error, trace))


def use_console() -> None:
    """Turn the plain stream handlers ``conf/logging.yml`` gives the console into ``ConsoleHandler``s
    (Kedro accepts only ``logging``'s and ``kedro.logging``'s classes there), send warnings to
    logging (``py.warnings``), and print an error that ends the program with ``report_error``."""
    logging.captureWarnings(True)
    loggers = [logging.root, *(logger for logger in logging.root.manager.loggerDict.values()
                               if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
                logger.addHandler(ConsoleHandler.like(handler))
    sys.excepthook = report_error
