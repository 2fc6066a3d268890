"""The project's hooks (src/vision_pipelines/hooks.py) and what a run looks like from the outside:
kept runs (versioned outputs, earlier unversioned ones kept), leftovers of killed runs removed,
a quiet console that ends with the score and the paths, the full log in info.log."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from kedro.io.core import generate_timestamp

from conftest import KEDRO, fast_params, latest, make_folders_dataset, make_project, run_kedro, wait_until
from vision_pipelines.config import ConfigError

VERSIONED = ["06_models/fruits/model.safetensors", "06_models/fruits/model_card.json",
             "08_reporting/fruits/metrics.json", "08_reporting/fruits/confusion.png",
             "07_model_output/fruits/predictions.parquet", "07_model_output/fruits/submission.csv"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folders_dataset(tmp_path_factory.mktemp("raw"), train=6)


def params_for(raw: Path, **more) -> dict:
    return fast_params("fruits", **{"source.kind": "local", "source.path": str(raw), **more})


def test_every_run_is_kept_and_an_earlier_model_can_be_evaluated_again(kedro_project: Path, raw: Path) -> None:
    data = kedro_project / "data"
    run_kedro(kedro_project, "fruits", params_for(raw, **{"train.epochs": 1}))
    first_card = json.loads(latest(data / "06_models/fruits/model_card.json").read_text())
    first_version = latest(data / "06_models/fruits/model_card.json").parent.name
    wait_until(lambda: generate_timestamp() > first_version, 5, "the clock to pass the first run's version")
    run_kedro(kedro_project, "fruits", params_for(raw, **{"train.epochs": 2}))
    for output in VERSIONED:
        assert len(list((data / output).iterdir())) == 2, output  # both runs kept
    first = sorted((data / "06_models/fruits/model_card.json").iterdir())[0].name
    run_kedro(kedro_project, "fruits", params_for(raw), tags=["evaluate"],
              load_versions={"fruits.model_weights": first, "fruits.model_card": first})
    metrics = json.loads(latest(data / "08_reporting/fruits/metrics.json").read_text())
    assert metrics["model"] == first_card["weights_fingerprint"]  # the first run's model, evaluated again


def test_outputs_of_an_earlier_unversioned_run_are_kept_as_a_version(kedro_project: Path, raw: Path) -> None:
    """A checkout that ran before outputs were versioned: Kedro would refuse to save ("Cannot save
    versioned dataset ... a file with the same name already exists"); the old file is kept as the
    oldest version instead."""
    data = kedro_project / "data"
    old = data / "08_reporting/fruits/metrics.json"
    old.parent.mkdir(parents=True)
    old.write_text('{"accuracy": 0.5, "from": "an unversioned run"}')
    (data / "07_model_output/fruits").mkdir(parents=True)
    (data / "07_model_output/fruits/submission.csv").write_text("id,label\nold,apple\n")
    run_kedro(kedro_project, "fruits", params_for(raw))
    versions = sorted(old.iterdir())
    assert len(versions) == 2
    assert json.loads((versions[0] / "metrics.json").read_text())["from"] == "an unversioned run"
    assert "old,apple" in (sorted((data / "07_model_output/fruits/submission.csv").iterdir())[0]
                           / "submission.csv").read_text()


def test_files_a_killed_run_left_half_written_are_removed(kedro_project: Path, raw: Path) -> None:
    run_kedro(kedro_project, "fruits", params_for(raw))
    data = kedro_project / "data"
    leftovers = [data / "06_models/fruits/.checkpoint.pt.partial-999",
                 data / "08_reporting/fruits/metrics.json/2099-01-01T00.00.00.000Z/.metrics.json.partial-999"]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half")
    run_kedro(kedro_project, "fruits", params_for(raw), tags=["train", "evaluate"])
    assert not any(p.exists() for p in leftovers)
    assert not (data / "08_reporting/fruits/metrics.json/2099-01-01T00.00.00.000Z").exists()


def test_mistyped_params_are_refused_before_mlflow_sets_up_its_store(kedro_project: Path, raw: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal comes first: kedro-mlflow would otherwise create (or migrate) the project's
    MLflow store, seconds on a small machine, for a run that is refused anyway."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the project's own store: mlflow.db at its root
    with pytest.raises(ConfigError, match="fruits.train.epochs"):
        run_kedro(kedro_project, "fruits", params_for(raw, **{"train.epochs": 2.5}))
    assert not (kedro_project / "mlflow.db").exists()


def test_console_is_quiet_and_ends_with_the_score_and_where_things_are(tmp_path: Path, raw: Path) -> None:
    """What `kedro run` prints, captured as CI captures it, 60 columns wide: this project's lines
    and warnings, not Kedro's per-dataset chatter (that goes to info.log), ending with the score
    and the output paths; every path and command whole on its line, to copy."""
    project = make_project(tmp_path / "project")
    params = ",".join(f"{k}={v}" for k, v in params_for(raw).items())
    run = subprocess.run([KEDRO, "run", "--pipelines=fruits", "--env=cpu", f"--params={params}"], cwd=project,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "60"})
    assert run.returncode == 0, run.stderr[-3000:]
    console = (run.stdout + run.stderr).splitlines()
    assert len(console) <= 25, "\n".join(console)
    assert not any("Loading data from" in line or "Saving data to" in line for line in console)
    text = "\n".join(console)
    assert "INFO  training resnet9" in text and "epoch 3/3" in text and "INFO  fruits done." in text
    metrics = json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())
    assert f"test accuracy {metrics['accuracy']:.4f}" in text
    summary = console[console.index(next(line for line in console if "fruits done." in line)):]
    paths = [line.split(what, 1)[1] for line in summary for what in ("submission: ", "model: ", "report folder: ")
             if what in line]
    assert len(paths) == 3 and all((project / path).exists() for path in paths), summary
    store = next(line for line in console if "mlflow ui" in line).split("--backend-store-uri sqlite:///", 1)[1]
    assert Path(store).is_file(), store  # the command to compare runs, whole
    log = (project / "info.log").read_text()
    assert "Saving data to fruits.metrics" in log and "Running node: train_model" in log
