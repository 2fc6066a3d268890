"""Resume: a training run killed after an epoch and started again with the same command ends
exactly where an uninterrupted run ends (on CPU); changed settings or data, or
``train.resume=false``, start fresh and say why. A rerun decodes no image while the image cache
is up to date."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import (
    CPU,
    FOLDERS_SOURCE,
    KEDRO,
    SPLIT,
    fast_params,
    latest,
    make_class_folders,
    make_folders_dataset,
    make_project,
    run_kedro,
    wait_until,
    write_cache,
)
from vision_pipelines import engine
from vision_pipelines.config import ImageConfig, ModelConfig, TrainConfig
from vision_pipelines.pipelines.image_classification import nodes

# Wide enough that rich's console does not wrap the log lines the tests look for.
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "300"}
EPOCHS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume_data")
    return make_folders_dataset(root, ("a", "b", "c"), train=60, test=5, size=(32, 32))


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
        return torch.load(path, weights_only=True)["state"]["epoch"]
    except Exception:  # noqa: BLE001 - not written yet
        return 0


def outcome(project: Path) -> tuple[dict, pd.DataFrame]:
    metrics = json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())
    del metrics["model_version"]  # the run's start time: two runs' differ, their models need not
    history = pd.read_csv(latest(project / "data/08_reporting/fruits/training_history.csv")).drop(columns="seconds")
    return metrics, history


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path: Path, dataset: Path) -> None:
    reference = make_project(tmp_path / "uninterrupted")
    finish(start(reference, dataset), reference)  # one after the other: 2 runs would fight over 2 cores

    project = make_project(tmp_path / "interrupted")
    checkpoint = project / "data/06_models/fruits/checkpoint.pt"
    process = start(project, dataset)
    wait_until(lambda: checkpoint_epoch(checkpoint) >= 1 or process.poll() is not None, 240,
               "the first epoch's checkpoint")
    process.send_signal(signal.SIGKILL)  # no chance to clean up, like a power cut
    process.wait()
    killed_at = checkpoint_epoch(checkpoint)
    assert process.returncode == -signal.SIGKILL and 1 <= killed_at < EPOCHS

    log = finish(start(project, dataset), project)  # the same command again
    assert f"resuming from {checkpoint} after epoch {killed_at}" in log
    resumed_metrics, resumed_history = outcome(project)
    reference_metrics, reference_history = outcome(reference)
    assert resumed_metrics == reference_metrics
    pd.testing.assert_frame_equal(resumed_history, reference_history)
    weights = "data/06_models/fruits/model.safetensors"
    assert latest(project / weights).read_bytes() == latest(reference / weights).read_bytes()


# --- a rerun redoes nothing that is up to date ------------------------------------------------


def test_a_rerun_decodes_nothing_until_an_image_an_image_setting_or_the_split_changes(
        kedro_project: Path, tmp_path: Path, project_log: pytest.LogCaptureFixture) -> None:
    images = make_folders_dataset(tmp_path / "images", ("a", "b", "c"), train=8, test=2)
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(images), "train.epochs": 1})
    run_kedro(kedro_project, "fruits", params)
    folder = kedro_project / "data/05_model_input/fruits/image_cache"
    built = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    project_log.clear()
    run_kedro(kedro_project, "fruits", params)  # the same command again
    assert "image cache up to date (30 images)" in project_log.text and "decoding" not in project_log.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == built  # not a file touched
    assert "after epoch 1 of 1" in project_log.text  # and the finished training returned at once

    changes = {"an image edited in place": lambda: make_class_folders(images / "Training", ["a"], 1, start_seed=9),
               "images.size": lambda: params.update({"fruits.images.size": 12}),
               "split.seed": lambda: params.update({"fruits.split.seed": 7})}
    for change, make in changes.items():
        make()
        project_log.clear()
        run_kedro(kedro_project, "fruits", params, tags=["download", "split", "cache"])
        assert "decoding 30 images" in project_log.text, change
        assert not set(built) & {p.name for p in folder.iterdir()} - {"index.json"}, change  # all rebuilt
        built = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# --- the engine itself, in-process: what starts fresh and what resumes ------------------------

IMAGES = ImageConfig(size=8)
MODEL = ModelConfig(width=4)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 training images of 3 classes (8 validate), and 6 test images."""
    return make_folders_dataset(tmp_path_factory.mktemp("engine_data"), train=16, test=2)


def cache_of(images: Path, folder: Path):
    manifest, classes = nodes.build_manifest(images, FOLDERS_SOURCE, SPLIT)
    return write_cache(nodes.build_image_cache(images, manifest, classes, IMAGES), folder)


@pytest.fixture(scope="module")
def cache(images: Path, tmp_path_factory: pytest.TempPathFactory):
    return cache_of(images, tmp_path_factory.mktemp("engine_cache"))


def train(cache, checkpoint: Path, **settings) -> engine.TrainResult:
    """What the train node does (3 epochs of 5 steps), checkpointing to ``checkpoint``."""
    config = TrainConfig(**{"epochs": 3, "batch_size": 8, **settings})
    return engine.train(engine.TrainingJob(cache, MODEL, IMAGES, config, CPU, checkpoint))


def interrupt_at_epoch(epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next run die (as Ctrl-C would) while validating ``epoch``, before its checkpoint."""
    evaluate, calls = engine.evaluate, []

    def dying_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", dying_evaluate)


@pytest.mark.parametrize("keep", ["last", "best_val_loss"])
def test_interrupted_fit_resumes_to_exactly_the_uninterrupted_result(cache, tmp_path: Path, keep: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train(cache, tmp_path / "reference.pt", keep=keep)
    with monkeypatch.context() as patch:
        interrupt_at_epoch(3, patch)
        with pytest.raises(KeyboardInterrupt):
            train(cache, tmp_path / "checkpoint.pt", keep=keep)
    assert checkpoint_epoch(tmp_path / "checkpoint.pt") == 2
    resumed = train(cache, tmp_path / "checkpoint.pt", keep=keep)
    pd.testing.assert_frame_equal(resumed.history.drop(columns="seconds"), reference.history.drop(columns="seconds"))
    pd.testing.assert_frame_equal(resumed.steps, reference.steps)
    assert resumed.kept_epoch == reference.kept_epoch
    assert resumed.weights.keys() == reference.weights.keys()
    assert all(torch.equal(resumed.weights[k], reference.weights[k]) for k in reference.weights)


@pytest.mark.parametrize("change, message", [
    ({"max_lr": 0.02}, "other settings or data (train.max_lr 0.01 -> 0.02): training from scratch"),
    ({"cache": "edited"}, "other settings or data (the training images, or the image or model "
                          "settings, differ): training from scratch"),
    ({"resume": False}, "train.resume=false: ignoring checkpoint"),
], ids=["settings", "data", "resume=false"])
def test_changed_settings_or_data_or_resume_false_train_from_scratch(
        cache, images: Path, tmp_path: Path, change: dict, message: str, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    train(cache, checkpoint)
    if change.pop("cache", None):  # one image edited in place: same files, other pixels
        edited = tmp_path / "edited"
        shutil.copytree(images, edited)
        make_class_folders(edited / "Training", ["apple"], 1, start_seed=12345)
        cache = cache_of(edited, tmp_path / "edited_cache")
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    caplog.clear()  # only the second run's lines
    train(cache, checkpoint, **change)
    assert message in caplog.text and "epoch 1/3:" in caplog.text  # every epoch trained again


def test_finished_checkpoint_with_run_only_changes_resumes_without_training(cache, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    first = train(cache, checkpoint)
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    caplog.clear()  # only the second run's lines
    again = train(cache, checkpoint, deterministic=True)  # how it runs, not what it learns
    assert "after epoch 3 of 3" in caplog.text and "epoch 1/3:" not in caplog.text
    pd.testing.assert_frame_equal(again.history, first.history)


def test_damaged_checkpoint_costs_only_a_fresh_start(cache, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    train(cache, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # e.g. a disk that filled up
    caplog.set_level(logging.INFO, logger="vision_pipelines.engine")
    caplog.clear()  # only the second run's lines
    train(cache, checkpoint)
    assert "is unreadable" in caplog.text and "training from scratch" in caplog.text
    assert checkpoint_epoch(checkpoint) == 3  # replaced by a sound one
