"""How many CPU threads the network runs on: ``compute.threads`` (``auto`` or a count).

On a CPU that other work shares, torch's OpenMP thread team waits for cores it does not get: on
the 2-core CI machine, with one competing process, the fruits step took 0.18-0.84 s on 2 threads
and 0.07 s on 1. ``auto`` times a few steps at each candidate count (all cores, half, 1), uses
the fastest, and times them again when the recent steps drift well above the time it chose on
(the load changed). The clock and the thread setter are injectable, so tests need no timing.

Threads change the order of floating-point sums: runs on different counts differ in the last
bits. So the default (unset) keeps torch's count, and CPU runs repeat bit for bit.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 1  # untimed steps after each change of count (thread pool, kernel caches)
TRIAL_STEPS = 3  # timed steps per candidate; their median is its time
DRIFT = 1.5  # re-time when the recent median exceeds the chosen time this many times
WINDOW = 20  # recent steps the drift is judged on ("for a while")
# Steps between trials even without drift: on 1 thread, a load that ends leaves the step time
# as it was, and only timing 2 again shows it is faster now (a trial costs ~2 % of these steps).
RECHECK_EVERY = 500


def available_cores() -> int:
    """Cores this process may use, shared among the training processes of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class ThreadPolicy:
    """Sets torch's intra-op thread count for a stage, fixed or chosen by timing (``auto``).

    Use it as a context manager (the previous count comes back after), call ``calibrate`` with
    a step that changes nothing to choose before the stage starts, and ``timed`` (or
    ``observe``) on every step so that a change in load is noticed.
    """

    def __init__(self, setting: int | str | None, cores: int | None = None,
                 set_threads: Callable[[int], None] = torch.set_num_threads,
                 clock: Callable[[], float] = time.perf_counter, trial_steps: int = TRIAL_STEPS,
                 warmup_steps: int = WARMUP_STEPS, drift: float = DRIFT, window: int = WINDOW,
                 recheck_every: int = RECHECK_EVERY) -> None:
        self.setting, self.set_threads, self.clock = setting, set_threads, clock
        self.trial_steps, self.warmup_steps, self.drift = trial_steps, warmup_steps, drift
        self.recheck_every, self._since_trial = recheck_every, 0
        cores = cores or available_cores()
        self.candidates = sorted({cores, max(1, cores // 2), 1}, reverse=True)
        self.threads: int | None = setting if isinstance(setting, int) else None
        self.recent: deque[float] = deque(maxlen=window)
        self.chosen_seconds = float("inf")  # the chosen count's time per step, at the last trial
        self.trials = 0  # how many times the candidates were timed
        self._pending: list[int] = []  # candidates still to time in the running trial
        self._times: dict[int, list[float]] = {}
        self._skip = 0  # warm-up steps left before the current candidate is timed
        self._previous: int | None = None

    @classmethod
    def for_device(cls, setting: int | str | None, device: torch.device, **options: Any) -> ThreadPolicy:
        """The policy for a stage on ``device``: on a GPU the CPU only feeds it, so ``auto``
        leaves torch's count as it is (a count given is still set)."""
        return cls(None if setting == "auto" and device.type != "cpu" else setting, **options)

    @property
    def auto(self) -> bool:
        return self.setting == "auto"

    @property
    def trialling(self) -> bool:
        return bool(self._pending)

    def __enter__(self) -> ThreadPolicy:
        self._previous = torch.get_num_threads()
        if self.threads is not None:
            self.set_threads(self.threads)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None and self.setting is not None:
            self.set_threads(self._previous)

    def describe(self) -> str:
        """``2 threads``, ``1 thread (auto)``, for the start line."""
        count = self.threads if self.threads is not None else torch.get_num_threads()
        return f"{count} thread{'s' if count != 1 else ''}{' (auto)' if self.auto else ''}"

    def calibrate(self, probe: Callable[[], object]) -> int | None:
        """Choose the count by timing ``probe`` (one step that changes nothing) at each candidate."""
        if self.auto:
            self._start_trial()
            while self.trialling:
                self.timed(probe)
        return self.threads

    def timed(self, step: Callable[..., Any], *args: Any) -> Any:
        """``step(*args)``, timed and observed."""
        if not self.auto:
            return step(*args)
        started = self.clock()
        result = step(*args)
        self.observe(self.clock() - started)
        return result

    def observe(self, seconds: float) -> None:
        """Account one step of ``seconds`` at the current count."""
        if not self.auto:
            return
        if not self.trialling:
            if self.trials == 0:  # never timed (no calibration): the first steps are the trial
                self._start_trial()
                return self.observe(seconds)
            self.recent.append(seconds)
            self._since_trial += 1
            recent = statistics.median(self.recent)
            if len(self.recent) == self.recent.maxlen and recent > self.drift * self.chosen_seconds:
                log.info("steps take %.3g s, %.1fx the %.3g s measured on %d thread(s): timing the thread counts "
                         "again", recent, recent / self.chosen_seconds, self.chosen_seconds, self.threads)
                self._start_trial()
            elif self._since_trial >= self.recheck_every:
                self._start_trial()
            return
        if self._skip:
            self._skip -= 1
            return
        count = self._pending[0]
        self._times[count].append(seconds)
        if len(self._times[count]) >= self.trial_steps:
            self._pending.pop(0)
            if self._pending:
                self._use(self._pending[0])
            else:
                self._finish_trial()

    def _start_trial(self) -> None:
        self._pending, self._times = list(self.candidates), {c: [] for c in self.candidates}
        self._use(self._pending[0])

    def _use(self, count: int) -> None:
        self.threads, self._skip = count, self.warmup_steps
        self.set_threads(count)

    def _finish_trial(self) -> None:
        medians = {count: statistics.median(times) for count, times in self._times.items()}
        best = min(medians, key=medians.get)
        self.trials += 1
        self.chosen_seconds, self._since_trial = medians[best], 0
        self.recent.clear()
        self._use(best)
        self._skip = 0
        log.debug("thread counts timed: %s; using %d",
                  ", ".join(f"{c}: {s:.3g} s" for c, s in medians.items()), best)
