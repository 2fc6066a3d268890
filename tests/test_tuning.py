"""The hyperparameter search: its space is checked before any work, and a search resumes."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import fast_params, latest, make_folders_dataset, run_kedro
from vision_pipelines.config import ConfigError, parse_dataset

SOURCE = {"kind": "local", "path": "images"}


@pytest.mark.parametrize(("space", "message"), [
    ({"train.max_rate": {"low": 1e-3, "high": 1e-1}}, r"tune\.space\.train\.max_rate: no such setting to search"),
    ({"train.max_lr": {"low": 1e-1, "high": 1e-3}}, r"tune\.space\.train\.max_lr: low \(0\.1\) must be a number below"),
    ({"train.max_lr": {"low": 0, "high": 1e-1, "log": True}}, r"tune\.space\.train\.max_lr: log=true needs low > 0"),
    ({"model.width": {"choices": [0, 16]}}, r"tune\.space\.model\.width: 0 is no possible value"),
    ({"model.width": {"choices": []}}, r"tune\.space\.model\.width\.choices must be a non-empty list"),
    ({"train.max_lr": [1e-3, 1e-1]}, r"tune\.space\.train\.max_lr must be \{low, high\}"),
])
def test_a_bad_search_space_is_refused_naming_the_setting(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^fruits\.{message}"):
        parse_dataset({"source": SOURCE, "tune": {"space": space}}, "fruits")


def test_a_good_search_space_is_accepted() -> None:
    space = {"train.max_lr": {"low": 1e-3, "high": 1e-1, "log": True}, "model.width": {"choices": [16, 32]}}
    assert parse_dataset({"source": SOURCE, "tune": {"space": space}}, "fruits").tune.space == space


def test_a_stopped_search_resumes_keeping_its_finished_trials(kedro_project: Path, tmp_path: Path) -> None:
    images = make_folders_dataset(tmp_path / "images", train=10, test=1)
    space = {"train.max_lr": {"low": 1e-3, "high": 1e-1, "log": True}, "model.width": {"choices": [4, 8]}}
    params = {**fast_params("fruits", **{"source.kind": "local", "source.path": str(images), "train.epochs": 2,
                                         "images.size": 8, "model.width": 4, "tune.trials": 1}),
              "fruits.tune.space": space}
    report_path = kedro_project / "data" / "08_reporting" / "fruits" / "tune_report.json"
    run_kedro(kedro_project, "fruits_tune", params)  # stands for a search killed after one trial
    first = json.loads(latest(report_path).read_text())["trials"]
    assert [t["trial"] for t in first] == [0]
    assert first[0]["train.max_lr"] == pytest.approx(0.01) and first[0]["model.width"] == 4  # the configured

    run_kedro(kedro_project, "fruits_tune", {**params, "fruits.tune.trials": 2})
    report = json.loads(latest(report_path).read_text())
    assert len(report["trials"]) == 2 and report["trials"][:1] == first  # kept (same start time), not rerun
    best = yaml.safe_load(latest(kedro_project / "data" / "08_reporting" / "fruits" / "best_params.yml").read_text())
    assert set(best["fruits"]) == {"train", "model"} and report["best_params"].startswith("fruits.")
    assert latest(kedro_project / "data" / "08_reporting" / "fruits" / "tune.png").stat().st_size > 0
    trial_runs = mlflow.search_runs(search_all_experiments=True, filter_string="params.`optuna.trial` = '1'")
    assert len(trial_runs) == 1 and trial_runs["tags.mlflow.parentRunId"].notna().all()  # nested in the search's run


def test_the_pruner_stops_a_poor_trial_from_its_second_epoch_not_its_first() -> None:
    optuna = pytest.importorskip("optuna")
    from vision_pipelines.tuning import Pruning, median_pruner

    study = optuna.create_study(direction="maximize", pruner=median_pruner())  # in memory: a SQLite one takes seconds
    for _ in range(3):  # the pruner's startup trials: good at every epoch
        good = study.ask()
        for epoch in (1, 2):
            good.report(0.9, epoch)
        study.tell(good, 0.9)
    poor = Pruning(study.ask(), "val_accuracy", mlflow=None)
    assert poor.on_epoch_end({"epoch": 1, "val_accuracy": 0.1}) is False  # epochs count from 1
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        poor.on_epoch_end({"epoch": 2, "val_accuracy": 0.1})
