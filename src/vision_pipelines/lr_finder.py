"""The learning-rate range test (fastai's ``lr_find``) and its suggestion rules.

``range_test`` trains a network for a few dozen steps while the learning rate grows
exponentially from ``start`` to ``end``, records the loss at every step and stops once the
smoothed loss passes ``DIVERGED_FACTOR`` times its best. The network's weights are put back
afterwards: the test changes nothing but the curve it returns.

The suggestion rules read a curve (``lr``, ``loss`` columns, the smoothed loss):

- ``valley`` (fastai's default): about halfway down the longest falling stretch of the curve;
- ``minimum``: a tenth of the rate at the lowest loss;
- ``steepest``: where the loss falls fastest against log(rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from .config import LR_FIND_RULES, ConfigError, TrainConfig
from .loader import Loader
from .optimizers import build_optimizer

RULES = LR_FIND_RULES
SMOOTHING = 0.98  # fastai's exponential moving average of the loss (debiased)
DIVERGED_FACTOR = 4.0  # stop once the smoothed loss exceeds this many times its best
SKIP_END = 5  # fastai drops the last steps, where the loss has started to explode
# and (fastai v1) the first ones, where batch-to-batch noise in a still-short moving average
# makes a steep "fall" (steepest would pick the very first rate)
SKIP_START = 10
MIN_POINTS = 8  # fewer steps before the loss explodes make no curve to read


class RangeTestDiverged(ConfigError):
    """The loss exploded at the first steps of the range test: no curve to suggest a rate from."""


def schedule(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` learning rates growing exponentially from ``start`` to ``end``."""
    return start * (end / start) ** (np.arange(steps) / max(steps - 1, 1))


def range_test(network: nn.Module, loader: Loader, train: TrainConfig, start: float, end: float,
               steps: int) -> pd.DataFrame:
    """The loss at each step of the exponential schedule, one row per step (``lr``, ``loss``,
    ``smoothed``); ``network``'s weights (and batch-norm statistics) are restored after."""
    from .engine import cpu_copy

    saved = cpu_copy(network.state_dict())
    network = network.to(loader.device, memory_format=loader.memory_format).train()
    optimizer = build_optimizer(network, train)
    scales = [group["lr"] / train.max_lr for group in optimizer.param_groups]  # bn_bias_lr_scale, muon_lr
    rows, average, best = [], 0.0, math.inf
    try:
        for i, (lr, (images, labels)) in enumerate(zip(schedule(start, end, steps), _endless(loader))):
            for group, scale in zip(optimizer.param_groups, scales):
                group["lr"] = lr * scale
            with loader.autocast():
                loss = F.cross_entropy(network(images).float(), labels, label_smoothing=train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip is not None:
                nn.utils.clip_grad_value_(network.parameters(), train.grad_clip)
            optimizer.step()
            value = loss.item()
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (i + 1))
            rows.append({"step": i + 1, "lr": float(lr), "loss": value, "smoothed": smoothed})
            if not math.isfinite(smoothed) or smoothed > DIVERGED_FACTOR * best:
                break
            best = min(best, smoothed)
    finally:
        network.load_state_dict(saved)
    return pd.DataFrame(rows, columns=["step", "lr", "loss", "smoothed"])


def _endless(loader: Loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch (a small training set is gone through again)."""
    while True:
        yield from loader


def usable(curve: pd.DataFrame) -> pd.DataFrame:
    """The part of the curve the rules read: its finite steps less the last ``SKIP_END`` (where
    the loss starts to explode) and, on a long curve, the first ``SKIP_START``; a curve that
    explodes at once is refused, naming the setting."""
    finite = curve[np.isfinite(curve["smoothed"])]
    kept = finite.iloc[:-SKIP_END] if len(finite) > MIN_POINTS + SKIP_END else finite
    kept = kept.iloc[SKIP_START:] if len(kept) >= MIN_POINTS + 2 * SKIP_START else kept
    if len(kept) < MIN_POINTS:
        first = curve["lr"].iloc[0] if len(curve) else float("nan")
        last = curve["lr"].iloc[-1] if len(curve) else float("nan")
        raise RangeTestDiverged(
            f"lr_find.start={first:.3g}: the learning-rate range test diverged at once (the loss exploded "
            f"after {len(curve)} step(s), at rate {last:.3g}), so it suggests nothing. Lower lr_find.start, "
            "or check train.grad_clip, train.label_smoothing and the images")
    return kept


def suggest(curve: pd.DataFrame) -> dict[str, float]:
    """The suggested rate of each rule in ``RULES``, from ``usable(curve)``."""
    kept = usable(curve)
    lrs, losses = kept["lr"].to_numpy(), kept["smoothed"].to_numpy()
    return {"valley": valley(lrs, losses), "minimum": minimum(lrs, losses), "steepest": steepest(lrs, losses)}


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's valley: the longest decreasing run of losses ends at ``end`` and is counted back
    from there; the rate about halfway down it (a third plus a sixth of the way, as fastai)."""
    length = [1] * len(losses)  # the longest decreasing subsequence ending at each step
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and length[j] + 1 > length[i]:
                length[i] = length[j] + 1
    end = int(np.argmax(length))
    start = end - length[end]
    section = (end - start) / 3
    return float(lrs[start + int(section) + int(section / 2)])


def minimum(lrs: np.ndarray, losses: np.ndarray) -> float:
    """A tenth of the rate at the lowest loss."""
    return float(lrs[int(np.argmin(losses))] / 10)


def steepest(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The rate where the loss falls fastest per unit of log(rate)."""
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(slopes))])


def plot(curve: pd.DataFrame, suggestions: dict[str, float], chosen: str, configured: float | None) -> Figure:
    """Smoothed loss against the rate (log x), each rule's suggestion marked, ``chosen`` in bold."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(curve["lr"], curve["smoothed"], label="smoothed loss")
    ax.plot(curve["lr"], curve["loss"], alpha=0.25, label="loss per step")
    for (rule, lr), colour in zip(suggestions.items(), ("tab:red", "tab:green", "tab:purple")):
        ax.axvline(lr, color=colour, linestyle="-" if rule == chosen else ":", linewidth=2 if rule == chosen else 1,
                   label=f"{rule}: {lr:.2g}" + (" (used)" if rule == chosen else ""))
    if configured is not None:
        ax.axvline(configured, color="grey", linestyle="--", label=f"configured max_lr: {configured:.2g}")
    ax.set_xscale("log")
    finite = curve["smoothed"][np.isfinite(curve["smoothed"])]
    if len(finite):
        ax.set_ylim(finite.min() * 0.9, min(finite.max(), finite.iloc[0] * 2) * 1.1)
    ax.set(xlabel="learning rate", ylabel="loss", title="Learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
