"""Resume: a training run killed after an epoch and started again with the same command ends
exactly where an uninterrupted run ends (on CPU)."""

from __future__ import annotations

import json
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


def command(dataset: Path, *extra: str) -> list[str]:
    params = [f"fruits.source.kind=local", f"fruits.source.path={dataset}", f"fruits.train.epochs={EPOCHS}",
              "fruits.images.size=24", "fruits.model.width=16", "fruits.train.batch_size=16", *extra]
    return [KEDRO, "run", "--pipelines=fruits", "--env=cpu", f"--params={','.join(params)}"]


def run(project: Path, dataset: Path, *extra: str) -> str:
    done = subprocess.run(command(dataset, *extra), cwd=project, capture_output=True, text=True,
                          env=ENV, stdin=subprocess.DEVNULL,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


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
    run(reference, dataset)

    project = make_project(tmp_path / "interrupted")
    checkpoint = project / "data/06_models/fruits/checkpoint.pt"
    process = subprocess.Popen(command(dataset), cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 240
    while checkpoint_epoch(checkpoint) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no chance to clean up, like a power cut
    process.wait()
    killed_at = checkpoint_epoch(checkpoint)
    assert process.returncode == -signal.SIGKILL and 1 <= killed_at < EPOCHS

    log = run(project, dataset)
    assert f"resuming from {checkpoint.relative_to(project)} after epoch {killed_at}" in log
    resumed_metrics, resumed_history = outcome(project)
    reference_metrics, reference_history = outcome(reference)
    assert resumed_metrics == reference_metrics
    pd.testing.assert_frame_equal(resumed_history, reference_history)


def test_changed_settings_or_forced_fresh_start_train_from_scratch(tmp_path: Path, dataset: Path) -> None:
    project = make_project(tmp_path / "project")
    run(project, dataset, "fruits.train.epochs=1")
    log = run(project, dataset, "fruits.train.epochs=2")
    assert "was made with other settings or data: training from scratch" in log
    log = run(project, dataset, "fruits.train.epochs=2", "fruits.train.resume=false")
    assert "train.resume=false: ignoring checkpoint" in log
    assert len(outcome(project)[1]) == 2
