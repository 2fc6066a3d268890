"""Which version a run reads (src/vision_pipelines/versions.py): its own, the latest finished run's,
never one from the future or of a run that failed; and the model ``<dataset>.model_version`` names."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import fast_params, latest, make_folders_dataset, make_project, run_kedro
from vision_pipelines.config import ConfigError, parse_dataset
from vision_pipelines.datasets import JSONDataset
from vision_pipelines.versions import (
    FAILED,
    FINISHED,
    RunRecords,
    VersionError,
    check_load_versions,
    loadable,
    version_before,
)

FUTURE = "2030-01-01T00.00.00.000Z"


def test_versions_of_unfinished_runs_and_from_the_future_are_not_loadable(tmp_path: Path, caplog) -> None:
    records = RunRecords(tmp_path)
    records.start("2026-01-03T00.00.00.000Z", ["fruits"])  # killed: never ended
    records.start("2026-01-02T00.00.00.000Z", ["fruits"])
    records.end("2026-01-02T00.00.00.000Z", FAILED, error="boom")
    records.start("2026-01-01T00.00.00.000Z", ["fruits"])
    records.end("2026-01-01T00.00.00.000Z", FINISHED)
    versions = [FUTURE, "2026-01-03T00.00.00.000Z", "2026-01-02T00.00.00.000Z", "2026-01-01T00.00.00.000Z",
                "2025-06-01T00.00.00.000Z"]  # the last: saved before runs were recorded
    with caplog.at_level(logging.WARNING):
        assert loadable(versions, records, "model.json") == ["2026-01-01T00.00.00.000Z", "2025-06-01T00.00.00.000Z"]
    assert FUTURE in caplog.text and "later than now" in caplog.text


def test_version_before_is_one_millisecond_earlier() -> None:
    assert version_before("2026-11-23T10.19.01.000Z") == "2026-11-23T10.19.00.999Z"
    assert version_before("2026-01-01T00.00.00.000Z") == "2025-12-31T23.59.59.999Z"


def project_dataset(project: Path, save_version: str | None) -> JSONDataset:
    from kedro.io import Version

    return JSONDataset(filepath=str(project / "data" / "metrics.json"), version=Version(None, save_version))


def test_a_run_loads_the_version_it_saved_even_beside_one_from_the_future(tmp_path: Path) -> None:
    make_project(tmp_path / "project")  # a Kedro project, so its run records are found
    project = tmp_path / "project"
    project_dataset(project, FUTURE).save({"run": "future"})
    this_run = project_dataset(project, "2026-12-01T00.00.00.000Z")
    this_run.save({"run": "this"})
    assert this_run.load() == {"run": "this"}
    assert project_dataset(project, None).load() == {"run": "this"}  # a later run: the newest not in the future


def test_load_versions_must_exist_and_a_refusal_lists_the_versions_kept(tmp_path: Path) -> None:
    from kedro.io import DataCatalog

    project = make_project(tmp_path / "project")
    for version in ("2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"):
        project_dataset(project, version).save({"run": version})
    catalog = DataCatalog({"fruits.metrics": project_dataset(project, None)})
    check_load_versions(catalog, {"fruits.metrics": "2026-01-01T00.00.00.000Z"})
    with pytest.raises(VersionError, match=r"fruits.metrics:2026-01-03T00.00.00.000Z: fruits.metrics has no version "
                                           r"2026-01-03T00.00.00.000Z \(no .*\); versions kept, newest first: "
                                           r"2026-01-02T00.00.00.000Z, 2026-01-01T00.00.00.000Z$"):
        check_load_versions(catalog, {"fruits.metrics": "2026-01-03T00.00.00.000Z"})
    with pytest.raises(VersionError, match=r"fruits.metrics:latest: 'latest' is not a version; expected "
                                           r"fruits.metrics:YYYY-MM-DDThh.mm.ss.sssZ"):
        check_load_versions(catalog, {"fruits.metrics": "latest"})


def test_model_version_is_latest_best_or_a_version() -> None:
    local = {"source": {"kind": "local", "path": "x"}}
    assert parse_dataset(local, "fruits").model_version == "latest"
    assert parse_dataset({**local, "model_version": "best"}, "fruits").model_version == "best"
    assert parse_dataset({**local, "model_version": "2026-11-23T10.19.01.357Z"}, "fruits").model_version[:4] == "2026"
    for bad in ("../../x", "newest", 3):
        with pytest.raises(ConfigError, match="fruits.model_version must be latest, best or a version"):
            parse_dataset({**local, "model_version": bad}, "fruits")


# --- end to end: quick fruits runs on made-up images ------------------------------------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str, str]:
    """A project with two finished runs: a good model, then a worse (newer) one."""
    base = tmp_path_factory.mktemp("two_models")
    raw = make_folders_dataset(base / "raw", ("apple", "kiwi", "lime"), train=12, test=3)
    project = make_project(base / "project")
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(raw), "split.val_fraction": 0.3})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        run_kedro(project, "fruits", {**params, "fruits.train.epochs": 6})
        good = latest(project / "data/06_models/fruits/model_card.json").parent.name
        run_kedro(project, "fruits", {**params, "fruits.train.epochs": 1, "fruits.train.max_lr": 1e-7})
        worse = latest(project / "data/06_models/fruits/model_card.json").parent.name
    return project, params, good, worse


@pytest.fixture
def models_copy(two_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict, str, str]:
    template, params, good, worse = two_models
    project = tmp_path / "project"
    shutil.copytree(template, project, symlinks=True)
    monkeypatch.chdir(project)
    return project, params, good, worse


def card(project: Path, version: str) -> dict:
    return json.loads((project / "data/06_models/fruits/model_card.json" / version / "model_card.json").read_text())


def predict(project: Path, params: dict, images: Path, **settings) -> dict:
    """Run fruits_predict on ``images``; the model it names beside its CSV."""
    run_kedro(project, "fruits_predict", {**{k: v for k, v in params.items() if not k.startswith("fruits.source")},
                                          "fruits.predict.input": str(images), **settings})
    csv = latest(project / "data/07_model_output/fruits/new_predictions.csv")
    return json.loads(csv.with_name("new_predictions.lineage.json").read_text())


def test_predict_uses_the_model_model_version_names_and_says_which(models_copy, caplog) -> None:
    project, params, good, worse = models_copy
    assert card(project, good)["metrics"]["val_accuracy"] > card(project, worse)["metrics"]["val_accuracy"]
    images = Path(params["fruits.source.path"]) / "Test" / "kiwi"
    with caplog.at_level(logging.INFO):
        assert predict(project, params, images)["model_version"] == worse  # latest, by default
        best = predict(project, params, images, **{"fruits.model_version": "best"})
    assert best == {"model": card(project, good)["weights_fingerprint"], "model_version": good,
                    "model_val_accuracy": card(project, good)["metrics"]["val_accuracy"]}
    assert f"using model {good} (fruits.model_version=best, validation accuracy" in caplog.text
    assert f"model used: {good}" in caplog.text  # the summary
    first = sorted(p.name for p in images.iterdir())[0]
    assert f"{first}: kiwi " in caplog.text  # up to 20 files: each one's classes on the console
    assert predict(project, params, images, **{"fruits.model_version": worse})["model_version"] == worse


def test_a_model_version_that_was_not_kept_is_refused_listing_the_kept_ones(models_copy) -> None:
    project, params, good, worse = models_copy
    with pytest.raises(VersionError, match=f"model_version=2020-01-01T00.00.00.000Z: no model .*{worse}, {good}"):
        predict(project, params, project, **{"fruits.model_version": "2020-01-01T00.00.00.000Z"})


def test_a_failed_run_s_outputs_never_become_the_latest(models_copy) -> None:
    """A run that trains a model and then fails (here at the submission) leaves a model and metrics
    behind; the previous finished run stays what everything loads, and nothing is mixed."""
    project, params, good, worse = models_copy
    with pytest.raises(FileNotFoundError, match="submission.template"):
        run_kedro(project, "fruits", {**params, "fruits.train.seed": 11, "fruits.submission.template": "nope.csv"})
    failed = latest(project / "data/06_models/fruits/model_card.json").parent.name
    assert failed not in (good, worse)  # its model was saved ...
    assert json.loads((project / "data/.runs" / f"{failed}.json").read_text())["status"] == FAILED
    images = Path(params["fruits.source.path"]) / "Test" / "apple"
    assert predict(project, params, images)["model_version"] == worse  # ... but is not "latest"
    run_kedro(project, "fruits", params, tags=["evaluate", "submit"])
    metrics = json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())
    assert metrics["model_version"] == worse and metrics["model"] == card(project, worse)["weights_fingerprint"]
    lineage = json.loads(latest(project / "data/07_model_output/fruits/submission.csv")
                         .with_name("submission.lineage.json").read_text())
    assert lineage["model_version"] == worse


def test_a_version_from_the_future_never_shadows_the_model_a_run_trains(models_copy, caplog) -> None:
    """Clock skew, or data/ copied from another machine: a 2030 version folder of every output. A
    run still evaluates and submits the model it trained, and later runs load that one."""
    project, params, good, worse = models_copy
    for folder in (project / "data").glob("0[678]_*/fruits/*"):
        if (folder / worse).is_dir():
            shutil.copytree(folder / worse, folder / FUTURE)
    with caplog.at_level(logging.WARNING):
        run_kedro(project, "fruits", {**params, "fruits.train.seed": 12})
    assert FUTURE in caplog.text and "later than now" in caplog.text
    trained = [p.parent.name for p in (project / "data/06_models/fruits/model_card.json").glob("*/model_card.json")
               if p.parent.name not in (good, worse, FUTURE)]
    assert len(trained) == 1
    fingerprint = card(project, trained[0])["weights_fingerprint"]
    metrics = json.loads((project / "data/08_reporting/fruits/metrics.json" / trained[0] / "metrics.json").read_text())
    assert metrics["model"] == fingerprint and metrics["model_version"] == trained[0]
    images = Path(params["fruits.source.path"]) / "Test" / "lime"
    assert predict(project, params, images)["model_version"] == trained[0]


def test_an_unversioned_file_dated_in_the_future_is_kept_as_a_version_before_the_run(models_copy) -> None:
    project, params, good, worse = models_copy
    history = project / "data/08_reporting/fruits/training_history.csv"
    old = pd.read_csv(history / worse / "training_history.csv")
    shutil.rmtree(history)
    old.to_csv(history, index=False)  # as a run before versioning left it, dated 2031
    future = pd.Timestamp("2031-01-01").timestamp()
    os.utime(history, (future, future))
    run_kedro(project, "fruits", {**params, "fruits.train.seed": 13})
    versions = sorted(p.name for p in history.iterdir())
    assert len(versions) == 2 and versions[0] < versions[1] < FUTURE  # kept, older than this run's
    assert pd.read_csv(history / versions[0] / "training_history.csv").equals(old)
