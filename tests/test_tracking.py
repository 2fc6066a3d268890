"""Experiment tracking: each `kedro run` is an MLflow run holding its settings, learning curves,
evaluation and files (kedro-mlflow and ``vision_pipelines.tracking``); without mlflow the
project runs as before."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import fast_params, latest, make_class_folders, make_project, run_kedro
from vision_pipelines.tracking import MlflowTrackingHook, artifact_location, metric_names

mlflow = pytest.importorskip("mlflow")

CLASSES = ["Apple Red 1", "Kiwi: gold", "Pomme de terre — déjà vu"]
PLOTS = ["accuracy", "loss", "lr", "confusion", "per_class_accuracy", "error_gallery", "sample_batch"]
EPOCH_METRICS = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):
    """A fresh project copy run twice, with 1 and then 2 epochs, tracking to its own default
    store (not the test session's): the project, an MlflowClient on that store, its runs by epochs."""
    root = tmp_path_factory.mktemp("tracking")
    make_class_folders(root / "images" / "Training", CLASSES, 8)
    make_class_folders(root / "images" / "Test", CLASSES, 3, start_seed=500)
    project = make_project(root / "project")
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(root / "images")})
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI")
        patch.chdir(project)
        for epochs in (1, 2):
            run_kedro(project, "fruits", {**params, "fruits.train.epochs": epochs})
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vision-pipelines")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return project, client, {int(run.data.params["fruits.train.epochs"]): run for run in runs}


def saved(project: Path, run, relative: str) -> Path:
    """The file ``data/<relative>`` that ``run`` saved: Kedro's version folder is its run_id tag."""
    path = project / "data" / relative
    return path / run.data.tags["run_id"] / path.name


def test_each_kedro_run_is_one_finished_mlflow_run_with_its_settings(two_runs) -> None:
    project, client, runs = two_runs
    assert sorted(runs) == [1, 2]
    for epochs, run in runs.items():
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["fruits.train.epochs"] == str(epochs)
        assert params["fruits.images.size"] == "16"
        assert params["fruits.model.width"] == "8"
        assert params["fruits.train.batch_size"] == "16"
        assert params["fruits.train.distributed.nproc_per_node"] == "1"  # nested sections too
        assert params["fruits.split.val_fraction"] == "0.2"  # defaults and conf/base values alike
        # kedro-mlflow's own record of each section, whole, agrees
        assert json.loads(params["fruits.train"])["epochs"] == epochs
        assert saved(project, run, "08_reporting/fruits/metrics.json").is_file()


def test_training_runs_are_named_after_the_dataset_and_the_settings_given(two_runs) -> None:
    project, client, runs = two_runs
    for epochs, run in runs.items():
        words = run.info.run_name.split()
        assert words[0] == "fruits" and f"epochs={epochs}" in words and "size=16" in words
        assert not any(word.startswith(("kind=", "path=")) for word in words)  # where the data is: not a setting
        assert run.data.tags["vision_pipelines.kind"] == "train"
        assert run.data.tags["fruits.model_version"] == run.data.tags["run_id"]  # the model it trained
        card = json.loads(saved(project, run, "06_models/fruits/model_card.json").read_text())
        assert run.data.tags["fruits.model_val_accuracy"] == f"{card['metrics']['val_accuracy']:.4f}"


def test_a_predict_run_is_typed_linked_to_its_model_and_has_no_training_settings(two_runs, tmp_path: Path) -> None:
    project, client, runs = two_runs
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI")
        patch.chdir(project)
        run_kedro(project, "fruits_predict", {"fruits.predict.input": str(project.parent / "images" / "Test"),
                                              "fruits.model_version": runs[1].data.tags["run_id"]})
    experiment = client.get_experiment_by_name("vision-pipelines")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`vision_pipelines.kind` = 'predict'")
    model = runs[1].data.tags["run_id"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("fruits predict ") and run.info.run_name.endswith(f"model {model}")
    assert run.data.tags["fruits.model_version"] == model
    assert run.data.tags["fruits.model_run"] == runs[1].info.run_id  # the run that trained it
    assert "fruits.predict.top_k" in run.data.params and "fruits.compute.device" in run.data.params
    assert not [name for name in run.data.params if name.startswith(("fruits.train.", "fruits.split."))]


def test_learning_curves_are_metrics_per_epoch(two_runs) -> None:
    project, client, runs = two_runs
    for epochs, run in runs.items():
        history = pd.read_csv(saved(project, run, "08_reporting/fruits/training_history.csv"))
        for name in EPOCH_METRICS:
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"fruits.{name}"))
            assert [step for step, _ in logged] == list(range(1, epochs + 1)), name
            assert [value for _, value in logged] == pytest.approx(history[name].tolist()), name


def test_evaluation_metrics_equal_the_metrics_file(two_runs) -> None:
    project, client, runs = two_runs
    for run in runs.values():
        metrics = json.loads(saved(project, run, "08_reporting/fruits/metrics.json").read_text())
        logged = run.data.metrics
        assert logged["fruits.accuracy"] == pytest.approx(metrics["accuracy"])
        assert logged["fruits.macro_f1"] == pytest.approx(metrics["macro_f1"])
        names = {"Apple Red 1": "Apple Red 1", "Kiwi: gold": "Kiwi_ gold",
                 "Pomme de terre — déjà vu": "Pomme de terre _ déjà vu"}
        for class_name, metric in names.items():
            assert logged[f"fruits.class_accuracy.{metric}"] == pytest.approx(
                metrics["per_class"][class_name]["accuracy"])
        assert run.data.tags["fruits.evaluated_on"] == "test"


def test_plots_model_card_and_weights_are_run_artifacts_beside_the_store(two_runs, tmp_path: Path) -> None:
    project, client, runs = two_runs
    for run in runs.values():
        assert run.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
        plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "fruits/plots")}
        assert plots == {f"{plot}.png" for plot in PLOTS}
        for artifact, relative in (("fruits/model/model.safetensors", "06_models/fruits/model.safetensors"),
                                   ("fruits/model/model_card.json", "06_models/fruits/model_card.json")):
            local = client.download_artifacts(run.info.run_id, artifact, str(tmp_path))
            assert Path(local).read_bytes() == saved(project, run, relative).read_bytes(), artifact
    # the two runs' weights differ: each run logged its own version, not the latest
    weights = [saved(project, run, "06_models/fruits/model.safetensors").read_bytes() for run in runs.values()]
    assert weights[0] != weights[1]


@pytest.fixture
def without_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the `mlflow` extra were not installed: mlflow and kedro-mlflow cannot be imported,
    and Kedro finds no kedro-mlflow plugin to register hooks from."""
    for name in ["mlflow", "kedro_mlflow", *(m for m in sys.modules if m.startswith(("mlflow.", "kedro_mlflow.")))]:
        monkeypatch.setitem(sys.modules, name, None)  # submodules too: an earlier test may have imported them
    installed = importlib.metadata.distributions
    monkeypatch.setattr(importlib.metadata, "distributions", lambda **kwargs: [
        d for d in installed(**kwargs) if d.metadata["Name"].replace("_", "-").lower() != "kedro-mlflow"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


def test_without_mlflow_the_project_runs_unchanged(without_mlflow, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImportError):
        import mlflow as _  # noqa: F401
    make_class_folders(tmp_path / "images" / "Training", CLASSES, 8)
    make_class_folders(tmp_path / "images" / "Test", CLASSES, 3, start_seed=500)
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    assert (project / "conf" / "base" / "mlflow.yml").is_file()
    run_kedro(project, "fruits", fast_params("fruits", **{"source.kind": "local", "train.epochs": 1,
                                                           "source.path": str(tmp_path / "images")}))
    assert json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())["images"] == 9
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()


def test_hook_does_nothing_when_no_mlflow_run_is_open() -> None:
    """kedro-mlflow opens no run for a pipeline listed in mlflow.yml's disable_tracking."""
    assert mlflow.active_run() is None
    hook = MlflowTrackingHook()
    hook.before_pipeline_run(run_params={}, pipeline=None, catalog=None)  # none is looked at
    hook.after_dataset_saved("fruits.metrics", {"accuracy": 1.0})


def test_class_names_become_distinct_metric_names() -> None:
    assert metric_names(["Pomme de terre — déjà vu", "a:b", "a/b", "a_b"]) == {
        "Pomme de terre — déjà vu": "Pomme de terre _ déjà vu", "a:b": "a_b", "a/b": "a_b_2", "a_b": "a_b_3"}


def test_long_class_names_become_distinct_metric_names_within_mlflow_s_limit() -> None:
    """MLflow refuses a metric name over 250 characters, and with it the run's whole evaluation."""
    prefix = "fruits.class_accuracy."
    classes = ["x" * 240 + " apple", "x" * 240 + " kiwi", "x" * 300]
    names = metric_names(classes, prefix)
    assert all(len(prefix + name) <= 250 for name in names.values())
    assert len(set(names.values())) == 3
    assert names[classes[0]] == "x" * (250 - len(prefix))  # the first keeps as much of its name as fits


def test_run_files_go_beside_a_sqlite_store_and_to_a_server_s_own_store() -> None:
    assert artifact_location("sqlite:////data/mlflow.db") == "/data/mlartifacts"
    assert artifact_location("http://127.0.0.1:5000") is None


# --- a tracking server that does not answer -----------------------------------------------------


@pytest.fixture(params=["never answers", "refuses"])
def broken_tracking_server(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """``MLFLOW_TRACKING_URI`` on 127.0.0.1: a server that accepts and never answers (it stops
    listening after 120 s, so code without a bound fails rather than hangs), or a closed port."""
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    server = socket.create_server(("127.0.0.1", 0))
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    if request.param == "refuses":
        server.close()
    else:
        held: list[socket.socket] = []
        server.settimeout(0.2)

        def hold() -> None:
            started = time.monotonic()
            while time.monotonic() - started < 120:
                try:
                    held.append(server.accept()[0])
                except OSError:
                    pass
            server.close()

        threading.Thread(target=hold, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_a_tracking_server_that_fails_costs_seconds_says_so_once_and_loses_no_output(
        broken_tracking_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records: list[logging.LogRecord] = []
    tracking_log = logging.getLogger("vision_pipelines.tracking")  # Kedro resets its handlers
    monkeypatch.setattr(tracking_log, "filters", [lambda record: records.append(record) or True])
    make_class_folders(tmp_path / "images" / "Training", CLASSES, 8)
    make_class_folders(tmp_path / "images" / "Test", CLASSES, 3, start_seed=500)
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    started = time.time()
    run_kedro(project, "fruits", fast_params("fruits", **{"source.kind": "local", "train.epochs": 1,
                                                           "source.path": str(tmp_path / "images")}))
    warnings = [r for r in records if "MLflow tracking is off for this run" in r.getMessage()]
    assert len(warnings) == 1 and broken_tracking_server in warnings[0].getMessage()
    assert warnings[0].created - started < 60  # MLflow's own defaults: minutes per request
    assert json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())["images"] == 9
    assert latest(project / "data/06_models/fruits/model_card.json").is_file()
