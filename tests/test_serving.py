"""Serving: a training run logs and registers an MLflow pyfunc model (``vision_pipelines.serving``),
``mlflow models serve`` answers with what ``<d>_predict`` says, and the demo page shows it in a
real browser."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import (
    FP32_CPU,
    PROJECT_ROOT,
    fast_params,
    latest,
    make_folders_dataset,
    make_project,
    run_kedro,
    wait_until,
)

mlflow = pytest.importorskip("mlflow")
from vision_pipelines import serving  # noqa: E402 - needs mlflow

CLASSES = ("Apple", "Banana", "Kiwi")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project whose one quick fruits run (fp32, CPU) tracked to its own MLflow store, and whose
    ``fruits_predict`` classified the test images: project, store URI, run id, predictions, images."""
    root = tmp_path_factory.mktemp("serving")
    images = make_folders_dataset(root / "images", CLASSES, train=8, test=2)
    project = make_project(root / "project")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(project)
        run_kedro(project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(images)},
                                                 **FP32_CPU))
        run_kedro(project, "fruits_predict", {"fruits.predict.input": str(images / "Test"),
                                              "fruits.model_version": "champion",  # the registry's alias
                                              **{f"fruits.{key}": value for key, value in FP32_CPU.items()}})
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vision-pipelines").experiment_id],
                                "tags.`vision_pipelines.kind` = 'train'")
    predictions = pd.read_csv(latest(project / "data/07_model_output/fruits/new_predictions.csv"))
    return {"project": project, "uri": uri, "run": run, "predictions": predictions,
            "files": [images / "Test" / name for name in predictions["file"]]}


def assert_same_as_predict(answer: pd.DataFrame, predictions: pd.DataFrame) -> None:
    """The same classes, in order, and probabilities within 1e-5, for each file."""
    labels = [c for c in predictions.columns if c.startswith("label")]
    scores = [c for c in predictions.columns if c.startswith("confidence")]
    assert list(answer.columns) == [c for c in predictions.columns if c not in ("file", "reason")]
    assert answer[labels].values.tolist() == predictions[labels].values.tolist()
    assert answer[scores].to_numpy() == pytest.approx(predictions[scores].to_numpy(), abs=1e-5)


def images_frame(files: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"image": [serving.encode_file(f) for f in files]})


def test_a_training_run_logs_its_model_as_pyfunc_with_signature_example_and_card(served: dict) -> None:
    run = served["run"]
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/fruits/pyfunc")
    assert model.metadata.get_input_schema().input_names() == ["image"]
    assert model.metadata.get_output_schema().input_names()[:3] == ["label", "confidence", "label_2"]
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/fruits/pyfunc"))
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["image"]
    card = latest(served["project"] / "data/06_models/fruits/model_card.json")
    assert (local / "artifacts" / "model_card.json").read_bytes() == card.read_bytes()
    assert_same_as_predict(model.predict(images_frame(served["files"])), served["predictions"])


def test_the_first_registered_version_is_champion(served: dict) -> None:
    client = mlflow.MlflowClient(served["uri"])
    champion = client.get_model_version_by_alias("fruits", "champion")
    assert str(champion.version) == "1" and champion.run_id == served["run"].info.run_id
    assert served["run"].data.tags["fruits.registered_version"] == "1"
    assert float(champion.tags["accuracy"]) == served["run"].data.metrics["fruits.accuracy"]
    assert champion.tags["kedro_version"] == served["run"].data.tags["run_id"]
    (predicting,) = client.search_runs([served["run"].info.experiment_id], "tags.`vision_pipelines.kind` = 'predict'")
    assert predicting.data.tags["fruits.model_version"] == champion.tags["kedro_version"]  # model_version=champion


def test_champion_moves_only_when_the_accuracy_beats_it_on_the_same_data_and_by_hand(
        served: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    client = mlflow.MlflowClient(served["uri"])
    run_id = served["run"].info.run_id
    source = client.get_model_version("fruits", "1").source
    register = lambda accuracy, data: serving.register(client, "lemons", run_id, source, accuracy, data, "v")
    assert register(0.5, "split-a/test")[:2] == ("1", True)  # the first version is champion
    assert register(0.5, "split-a/test")[:2] == ("2", False)  # as good is not better
    assert register(0.9, "split-b/test")[:2] == ("3", False)  # other data: not comparable
    version, moved, why = register(0.6, "split-a/test")
    assert (version, moved) == ("4", True) and "0.6000 beats champion version 1's 0.5000" in why
    assert str(client.get_model_version_by_alias("lemons", "champion").version) == "4"
    assert "other data" in client.get_model_version("lemons", "3").tags["champion_decision"]  # logged either way
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    serving.main(["promote", "lemons", "3"])
    assert str(client.get_model_version_by_alias("lemons", "champion").version) == "3"
    with pytest.raises(mlflow.exceptions.MlflowException):
        serving.main(["promote", "lemons", "99"])


def test_malformed_input_is_refused_with_a_clear_message(served: dict) -> None:
    model = mlflow.pyfunc.load_model(f"runs:/{served['run'].info.run_id}/fruits/pyfunc")
    with pytest.raises(mlflow.exceptions.MlflowException, match="row 0 of 'image' is not base64"):
        model.predict(pd.DataFrame({"image": ["%%% not base64"]}))
    with pytest.raises(mlflow.exceptions.MlflowException, match="1 of 2 rows are not an image"):
        model.predict(pd.DataFrame({"image": [serving.encode_file(served["files"][0]),
                                              base64.b64encode(b"hello").decode()]}))


# --- the REST endpoint and the demo page, each in its own process ----------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def start(served: dict):
    """``start(command, url)``: ``python -m vision_pipelines <command>`` in the project, in a session of
    its own, waited for until ``url`` answers; stopped by its pid (its process group) afterwards."""
    started: list[subprocess.Popen] = []

    def starting(command: list[str], url: str) -> subprocess.Popen:
        with open(served["project"] / f"{command[0]}.log", "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "vision_pipelines", *command], cwd=served["project"],
                                       env={**os.environ, "MLFLOW_TRACKING_URI": served["uri"]}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        wait_until(lambda: answers(url) or process.poll() is not None, 180, f"{url} to answer")
        assert process.poll() is None, (served["project"] / f"{command[0]}.log").read_text()[-3000:]
        return process

    yield starting
    for process in started:
        with contextlib.suppress(ProcessLookupError):  # it may have stopped by itself
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_the_rest_endpoint_answers_as_predict_does_and_refuses_bad_payloads(served: dict, start) -> None:
    """``mlflow models serve`` loads models:/fruits@champion in a fresh process, with only the project installed."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start(["serve", "fruits", "--port", str(port)], f"{url}/ping")
    images = images_frame(served["files"])
    status, body = post(f"{url}/invocations", json.dumps({"dataframe_split": images.to_dict("split")}).encode())
    assert status == 200, body
    assert_same_as_predict(pd.DataFrame(json.loads(body)["predictions"]), served["predictions"])
    garbage = os.urandom(20 * 2**20)
    bad = {"not base64": {"dataframe_split": {"columns": ["image"], "data": [["%%% not base64"]]}},
           "not an image": {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"hi").decode()]]}},
           "wrong column": {"dataframe_split": {"columns": ["picture"], "data": [[images["image"][0]]]}},
           "20 MB base64 garbage": {"inputs": {"image": [base64.b64encode(garbage).decode()]}}}
    expected = {"not base64": "is not base64", "not an image": "not an image this model can read",
                "wrong column": "image", "20 MB base64 garbage": "not an image this model can read"}
    for what, payload in bad.items():
        status, body = post(f"{url}/invocations", json.dumps(payload).encode())
        assert status == 400 and expected[what] in json.loads(body)["message"], (what, status, body[:500])
    status, body = post(f"{url}/invocations", garbage)  # 20 MB that is not even JSON
    assert 400 <= status < 500, body[:500]
    assert answers(f"{url}/ping")  # the server is still up, and still classifies
    status, body = post(f"{url}/invocations", json.dumps({"dataframe_split": images[:1].to_dict("split")}).encode())
    assert status == 200 and json.loads(body)["predictions"][0]["label"] == served["predictions"]["label"][0]


def test_the_demo_page_shows_the_label_predict_gives_in_a_real_browser(served: dict, start) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start(["demo", "fruits", "--port", str(port)], url)
    status, body = post(f"{url}predict", json.dumps({"image": serving.encode_file(served["files"][0])}).encode())
    assert status == 200 and json.loads(body)["classes"][0]["label"] == served["predictions"]["label"][0]
    status, body = post(f"{url}predict", b'{"image": "%%%"}')
    assert status == 400 and "not base64" in json.loads(body)["error"]
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 760, "height": 560})
        page.goto(url)
        assert "fruits version 1 (champion)" in page.inner_text("#model")
        for index in (0, len(served["files"]) - 1):
            page.set_input_files("#file", str(served["files"][index]))
            page.wait_for_function("document.getElementById('bars').children.length > 0")
            assert page.inner_text("#label") == served["predictions"]["label"][index]
            assert len(page.query_selector_all("#bars .bar")) == 3
            page.evaluate("document.getElementById('bars').innerHTML = ''")
        page.set_input_files("#file", str(served["files"][0]))
        page.wait_for_function("document.getElementById('bars').children.length > 0")
        shot = served["project"] / "demo.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert shot.stat().st_size > 0
    if os.environ.get("UPDATE_SCREENSHOTS"):  # refresh the picture README shows (docs/serving.md says how)
        shutil.copy(shot, PROJECT_ROOT / "docs" / "images" / "demo.png")
