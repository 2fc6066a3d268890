"""Resume: a training run killed after an epoch and started again with the same command ends
exactly where an uninterrupted run ends (on CPU); changed settings or data, or
``train.resume=false``, start fresh and say why."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_class_folders, make_project
from vision_pipelines import engine
from vision_pipelines.config import ImageConfig, ModelConfig, TrainConfig
from vision_pipelines.models import build_model

KEDRO = str(Path(sys.executable).parent / "kedro")
# Wide enough that rich's console does not wrap the log lines the tests look for.
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "300"}
EPOCHS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume_data")
    make_class_folders(root / "Training", ["a", "b", "c"], 60, size=(32, 32))
    make_class_folders(root / "Test", ["a", "b", "c"], 5, size=(32, 32), start_seed=900)
    return root


def command(dataset: Path) -> list[str]:
    params = ["fruits.source.kind=local", f"fruits.source.path={dataset}", f"fruits.train.epochs={EPOCHS}",
              "fruits.images.size=24", "fruits.model.width=16", "fruits.train.batch_size=16"]
    return [KEDRO, "run", "--pipelines=fruits", "--env=cpu", f"--params={','.join(params)}"]


def start(project: Path, dataset: Path) -> subprocess.Popen:
    """``kedro run`` in ``project``, in the background; its output goes to ``project/run.log``."""
    with open(project / "run.log", "w") as log:
        return subprocess.Popen(command(dataset), cwd=project, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=ENV)


def finish(process: subprocess.Popen, project: Path) -> str:
    """Wait for a ``start``ed run to succeed; returns its output."""
    process.wait(timeout=300)
    log = (project / "run.log").read_text()
    assert process.returncode == 0, log[-5000:]
    return log


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001 - not written yet
        return 0


def outcome(project: Path) -> tuple[dict, pd.DataFrame]:
    metrics = json.loads((project / "data/08_reporting/fruits/metrics.json").read_text())
    history = pd.read_csv(project / "data/08_reporting/fruits/training_history.csv").drop(columns="seconds")
    return metrics, history


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path: Path, dataset: Path) -> None:
    reference = make_project(tmp_path / "uninterrupted")
    finish(start(reference, dataset), reference)  # one after the other: 2 runs would fight over 2 cores

    project = make_project(tmp_path / "interrupted")
    checkpoint = project / "data/06_models/fruits/checkpoint.pt"
    process = start(project, dataset)
    deadline = time.time() + 240
    while checkpoint_epoch(checkpoint) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no chance to clean up, like a power cut
    process.wait()
    killed_at = checkpoint_epoch(checkpoint)
    assert process.returncode == -signal.SIGKILL and 1 <= killed_at < EPOCHS

    log = finish(start(project, dataset), project)  # the same command again
    assert f"resuming from {checkpoint.relative_to(project)} after epoch {killed_at}" in log
    resumed_metrics, resumed_history = outcome(project)
    reference_metrics, reference_history = outcome(reference)
    assert resumed_metrics == reference_metrics
    pd.testing.assert_frame_equal(resumed_history, reference_history)
    weights = "data/06_models/fruits/model.safetensors"
    assert (project / weights).read_bytes() == (reference / weights).read_bytes()


# --- the engine itself, in-process: what starts fresh and what resumes ------------------------

IMAGE = ImageConfig(size=8)
MODEL = ModelConfig(width=4)
GENERATOR = torch.Generator().manual_seed(0)
TRAIN_X = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=GENERATOR)
TRAIN_Y = torch.arange(40) % 3
VAL_X, VAL_Y = TRAIN_X[:9], TRAIN_Y[:9]


def fit(checkpoint: Path, train_x: torch.Tensor = TRAIN_X, **settings) -> engine.TrainResult:
    """What the train node does: seed, build the model, fingerprint, fit (3 epochs of 5 steps)."""
    config = TrainConfig(**{"epochs": 3, "batch_size": 8, "device": "cpu",
                            "checkpoint_path": str(checkpoint), **settings})
    engine.seed_everything(config.seed)
    network = build_model(MODEL, 3, 3)
    run_fingerprint = engine.fingerprint(config, IMAGE, MODEL, train_x, TRAIN_Y, VAL_Y)
    return engine.fit(network, train_x, TRAIN_Y, VAL_X, VAL_Y, config, IMAGE, run_fingerprint)


def interrupt_at_epoch(epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next ``fit`` die (as Ctrl-C would) while validating ``epoch``, before its checkpoint."""
    evaluate, calls = engine.evaluate, []

    def dying_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", dying_evaluate)


@pytest.mark.parametrize("keep", ["last", "best_val_loss"])
def test_interrupted_fit_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path, keep: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reference = fit(tmp_path / "reference.pt", keep=keep)
    with monkeypatch.context() as patch:
        interrupt_at_epoch(3, patch)
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path / "checkpoint.pt", keep=keep)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = fit(tmp_path / "checkpoint.pt", keep=keep)
    pd.testing.assert_frame_equal(resumed.history.drop(columns="seconds"), reference.history.drop(columns="seconds"))
    pd.testing.assert_frame_equal(resumed.steps, reference.steps)
    assert resumed.state_dict.keys() == reference.state_dict.keys()
    assert all(torch.equal(resumed.state_dict[k], reference.state_dict[k]) for k in reference.state_dict)


def changed_pixel() -> torch.Tensor:
    images = TRAIN_X.clone()
    images[0, 0, 0, 0] += 1
    return images


@pytest.mark.parametrize("change, message", [
    ({"max_lr": 0.02}, "other settings or data (train.max_lr 0.01 -> 0.02): training from scratch"),
    ({"train_x": changed_pixel()}, "other settings or data (the training images, or the image or model "
                                   "settings, differ): training from scratch"),
    ({"resume": False}, "train.resume=false: ignoring checkpoint"),
], ids=["settings", "data", "resume=false"])
def test_changed_settings_or_data_or_resume_false_train_from_scratch(tmp_path: Path, change: dict, message: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    fit(checkpoint)
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    caplog.clear()  # only the second run's lines
    fit(checkpoint, **change)
    assert message in caplog.text and "epoch 1/3:" in caplog.text  # every epoch trained again


def test_finished_checkpoint_with_run_only_changes_resumes_without_training(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    first = fit(checkpoint)
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    caplog.clear()  # only the second run's lines
    again = fit(checkpoint, deterministic=True, device="cpu")  # how it runs, not what it learns
    assert "after epoch 3 of 3" in caplog.text and "epoch 1/3:" not in caplog.text
    pd.testing.assert_frame_equal(again.history, first.history)


def test_damaged_checkpoint_costs_only_a_fresh_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    fit(checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # e.g. a disk that filled up
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    caplog.clear()  # only the second run's lines
    fit(checkpoint)
    assert "is unreadable" in caplog.text and "training from scratch" in caplog.text
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3  # replaced by a sound one
