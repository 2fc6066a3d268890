"""What a run shows on the console: its own progress and results, and nothing else.

- ``Progress``: long steps (download, decode, epochs) as a tqdm bar on a terminal; in a log
  file, CI or a scheduler a bar is noise, so the same progress becomes an INFO line every
  ``every_s`` seconds.

The console shows this project's INFO lines and everyone's warnings; Kedro's per-dataset
load/save chatter goes only to ``info.log`` (``conf/logging.yml``).
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("vision_pipelines")


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
