"""The training engine (src/vision_pipelines/engine.py): a train step in the loader's precision,
the kept epoch, the checkpoint written whole or not at all, the run-time estimate."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest
import torch

from vision_pipelines import engine
from vision_pipelines.atomic import write_atomically
from vision_pipelines.config import ComputeConfig, TrainConfig
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.models import ResNet9
from vision_pipelines.recipe import Callback

GENERATOR = torch.Generator().manual_seed(0)
IMAGES = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=GENERATOR)
LABELS = torch.arange(40) % 4


def loader(mixed_precision: bool = True, **training) -> Loader:
    return Loader.create(MemoryImages(IMAGES), LABELS, [0.5] * 3, [0.5] * 3, 8,
                         ComputeConfig(device="cpu", mixed_precision=mixed_precision), **training)


def test_train_step_in_bf16_updates_fp32_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    train = loader()
    step = engine.TrainStep(ResNet9(3, 4, width=4), TrainConfig(), train, total_steps=10)
    before = [p.detach().clone() for p in step.network.parameters()]
    images, labels = next(iter(train))
    loss, logits = step(images, labels)
    assert train.amp and logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in step.network.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, step.network.parameters()))


def test_train_step_in_fp32_when_mixed_precision_is_off() -> None:
    train = loader(mixed_precision=False)
    step = engine.TrainStep(ResNet9(3, 4, width=4), TrainConfig(), train, total_steps=10)
    loss, logits = step(*next(iter(train)))
    assert logits.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("keep, kept_epoch", [("last", 3), ("best_val_loss", None)])
def test_fit_returns_the_kept_epoch_and_its_weights(keep: str, kept_epoch: int | None) -> None:
    engine.seed_everything(0)
    config = TrainConfig(epochs=3, batch_size=8, keep=keep)
    result = engine.fit(ResNet9(3, 4, width=4), loader(crop_padding=config.crop_padding, flip=True), loader(), config)
    best = int(result.history.loc[result.history["val_loss"].idxmin(), "epoch"])
    assert result.kept_epoch == (kept_epoch or best)
    assert list(result.history["epoch"]) == [1, 2, 3] and len(result.steps) == 3 * 5
    assert result.device == "cpu" and result.world_size == 1


def test_evaluate_and_predict_take_the_loader_s_settings() -> None:
    network = ResNet9(3, 4, width=4).eval()
    logits = engine.predict(network, loader())
    assert logits.shape == (40, 4) and logits.dtype == torch.float32
    loss, accuracy = engine.evaluate(network, loader())
    assert loss > 0 and 0 <= accuracy <= 1
    flipped = engine.predict(network, loader(), tta_flip=True)
    assert not torch.allclose(flipped, logits)


def test_checkpoint_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk fails with "No space left", names the file, and leaves the old checkpoint."""
    path = tmp_path / "checkpoint.pt"
    write_atomically(path, b"previous checkpoint")
    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".partial" in str(file):
            def no_space(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = no_space
        return handle

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(OSError, match=r"could not write .*checkpoint.pt \(0.0 MB\): No space left on device"):
        write_atomically(path, b"new checkpoint, never complete")
    assert path.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no partial file left


def test_a_long_cpu_run_is_announced_with_its_estimate(caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU recipe started on a laptop says how long it will take, and how to get a CPU recipe."""
    now = [0.0]
    monkeypatch.setattr(engine.time, "time", lambda: now[0])
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    eta = engine.EtaReport(total_steps=500, device=torch.device("cpu"), after_steps=3)
    for _ in range(5):
        now[0] += 10  # 10 s per step
        eta.step()
    assert "about 83 min of training for 500 steps" in caplog.text
    assert "will take about 83 min" in caplog.text and "--env=cpu" in caplog.text
    assert caplog.text.count("of training for 500 steps") == 1  # said once


@pytest.mark.parametrize("seconds_per_step", [0.05, 12, 23])
def test_a_gpu_recipe_on_the_cpu_is_announced_within_30_s_whatever_a_step_takes(
        seconds_per_step: float, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast steps are timed over 10 for a steady estimate; slow ones no longer than 30 s (at 23 s
    a step, the first is the estimate: 10 steps would be 4 min of waiting)."""
    now = [0.0]
    monkeypatch.setattr(engine.time, "time", lambda: now[0])
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    eta = engine.EtaReport(total_steps=100_000, device=torch.device("cpu"))
    warned_at = None
    while warned_at is None and now[0] < 300:
        now[0] += seconds_per_step
        eta.step()
        if any(r.levelno == logging.WARNING for r in caplog.records):
            warned_at = now[0]
    eta.close()
    assert warned_at is not None and warned_at <= 30
    assert f"will take about {engine.format_seconds(seconds_per_step * 100_000)}" in caplog.text


def test_a_first_step_longer_than_the_bound_is_announced_as_a_lower_bound(caplog: pytest.LogCaptureFixture) -> None:
    """No step has ended when the time is up: the run takes more than that time per step."""
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    eta = engine.EtaReport(total_steps=100_000, device=torch.device("cpu"), within_s=0.2)  # a real clock
    deadline = time.time() + 10
    while "--env=cpu" not in caplog.text and time.time() < deadline:
        time.sleep(0.05)
    assert "training on the CPU will take more than" in caplog.text
    said = len(caplog.records)
    eta.step()  # the first step ends
    assert len(caplog.records) == said  # said once


def test_deterministic_option_forces_deterministic_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        engine.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("world, remainder", [(1, 0), (1, 1), (2, 0), (2, 1), (2, 3)])
def test_the_one_cycle_schedule_ends_annealed_on_the_last_step_taken(world: int, remainder: int) -> None:
    """Whatever ``n_train % batch_size`` (0, 1, 2 * world - 1), the schedule is sized for the steps
    taken, last batches too small for batch norm (under 2 per process) dropped included."""
    n = 3 * 8 + remainder
    train = Loader.create(MemoryImages(IMAGES[:n]), LABELS[:n], [0.5] * 3, [0.5] * 3, 8,
                          ComputeConfig(device="cpu"), world_size=world)  # rank 0 of ``world``
    config = TrainConfig(epochs=2, batch_size=8)
    result = engine.fit(ResNet9(3, 4, width=4), train, loader(), config)
    assert len(result.steps) == 2 * (3 + (remainder >= 2 * world))
    final = config.max_lr / 25 / 1e4  # OneCycleLR's initial lr (max_lr / div_factor) / final_div_factor
    assert result.steps["lr"].iloc[-1] == pytest.approx(final, rel=1e-6)


@pytest.mark.parametrize("world, images", [(1, 1), (2, 3)])
def test_a_training_set_too_small_for_one_batch_says_so(world: int, images: int) -> None:
    train = Loader.create(MemoryImages(IMAGES[:images]), LABELS[:images], [0.5] * 3, [0.5] * 3, 8,
                          ComputeConfig(device="cpu"), world_size=world)
    with pytest.raises(ValueError, match=f"{images} training image\\(s\\) make no training batch: batch norm "
                                         f"needs at least {2 * world}"):
        engine.fit(ResNet9(3, 4, width=4), train, loader(), TrainConfig(epochs=2, batch_size=8))


def test_a_diverging_run_stops_before_saving_naming_the_learning_rate(tmp_path: Path) -> None:
    """max_lr=1e5: the loss explodes in the first epoch; no checkpoint is written."""
    engine.seed_everything(0)
    checkpoint = engine.CheckpointSaver(tmp_path / "checkpoint.pt", "run")
    with pytest.raises(engine.TrainingDiverged, match=r"training diverged in epoch 1: train loss .* lower "
                                                      r"train.max_lr \(now 100000\)"):
        engine.fit(ResNet9(3, 4, width=4), loader(), loader(), TrainConfig(epochs=2, batch_size=8, max_lr=1e5),
                   checkpoint)
    assert not checkpoint.path.exists()


@pytest.mark.parametrize("train_loss, val_loss, validated, diverged", [
    (2.0, 1.5, True, False), (2.0, float("nan"), False, False),  # no validation images: NaN is no sign
    (float("nan"), 1.5, True, True), (float("inf"), 1.5, True, True), (1.7e3 + 1, 1.5, True, True),
    (2.0, float("nan"), True, True), (2.0, float("inf"), True, True),
])
def test_divergence_is_a_non_finite_loss_or_one_a_thousand_times_the_first(
        train_loss: float, val_loss: float, validated: bool, diverged: bool) -> None:
    row = {"epoch": 2, "train_loss": train_loss, "val_loss": val_loss}
    if diverged:
        with pytest.raises(engine.TrainingDiverged, match="train.max_lr"):
            engine.stop_if_diverged(row, 1.7, TrainConfig(), validated)
    else:
        engine.stop_if_diverged(row, 1.7, TrainConfig(), validated)


def test_a_callback_passed_to_fit_sees_every_epoch_and_can_stop_the_run() -> None:
    """The seam a hyperparameter search's pruner uses: each epoch's row, and an exception stops
    training there."""
    seen = []

    class StopAfterTwo(Callback):
        def on_epoch_end(self, row: dict) -> bool:
            seen.append((row["epoch"], round(row["val_accuracy"], 6)))
            if row["epoch"] == 2:
                raise StopIteration("pruned")
            return False

    with pytest.raises(StopIteration, match="pruned"):
        engine.fit(ResNet9(3, 4, width=4), loader(), loader(), TrainConfig(epochs=3, batch_size=8),
                   callbacks=[StopAfterTwo()])
    assert [epoch for epoch, _ in seen] == [1, 2]


def test_batch_norm_biases_train_at_the_scaled_rate_through_the_one_cycle_schedule() -> None:
    """train.bn_bias_lr_scale: the biases' rate is the scale times the others', which follow the
    schedule of a run without it; their weight decay is divided by the scale."""
    train = loader(mixed_precision=False)
    scaled = engine.TrainStep(ResNet9(3, 4, width=4), TrainConfig(optimizer="sgd", bn_bias_lr_scale=64.0,
                                                                 weight_decay=5e-4), train, total_steps=5)
    plain = engine.TrainStep(ResNet9(3, 4, width=4), TrainConfig(optimizer="sgd", weight_decay=5e-4), train,
                             total_steps=5)
    others, biases = scaled.optimizer.param_groups
    norms = [m for m in scaled.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in norms} and len(others["params"]) > len(norms)
    assert biases["weight_decay"] == pytest.approx(5e-4 / 64) and others["weight_decay"] == 5e-4
    rates = []
    for _ in range(5):  # the schedule alone: each step as TrainStep ends one (no gradients: no update)
        for step in (scaled, plain):
            step.optimizer.step()
            step.scheduler.step()
        (rate,) = plain.scheduler.get_last_lr()
        assert scaled.scheduler.get_last_lr() == pytest.approx([rate, 64 * rate])
        rates.append(rate)
    assert len(set(rates)) == 5 and max(rates) > 10 * min(rates)  # up and down the cycle
