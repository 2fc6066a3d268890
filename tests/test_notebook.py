"""notebooks/explore.ipynb runs end to end on a finished run, as CI and a user run it.

The notebook is copied into a throw-away project where a quick fruits run has finished
(``fruits_run``) and executed with papermill in ``notebooks/``, where ``kedro jupyter`` starts
its kernels; a cell that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from conftest import KEDRO, PROJECT_ROOT, latest

NOTEBOOK = PROJECT_ROOT / "notebooks" / "explore.ipynb"
KEDRO_KERNEL = "kedro_vision_pipelines"  # what `kedro jupyter setup|notebook|lab` installs


def run_notebook(project: Path, output: Path, kernel: str, **parameters) -> nbformat.NotebookNode:
    """Execute the notebook with papermill from ``project/notebooks``, as the README says."""
    (project / "notebooks").mkdir(exist_ok=True)
    notebook = shutil.copy(NOTEBOOK, project / "notebooks" / NOTEBOOK.name)
    return papermill.execute_notebook(str(notebook), str(output),
                                      parameters={"dataset": "fruits", "env": "cpu", **parameters},
                                      kernel_name=kernel, cwd=str(project / "notebooks"), progress_bar=False)


def shown_text(notebook: nbformat.NotebookNode) -> str:
    """What the executed notebook shows as text: printed lines and the plain-text form of results."""
    parts = [output.get("text", "") + output.get("data", {}).get("text/plain", "")
             for cell in notebook.cells for output in cell.get("outputs", [])]
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))  # no terminal colours


def shown_images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_notebook_tours_the_run(fruits_run: Path, tmp_path: Path) -> None:
    executed = run_notebook(fruits_run, tmp_path / "explore.ipynb", "python3")
    text = shown_text(executed)
    data = fruits_run / "data"

    assert f"fruits with --env=cpu, project {fruits_run}" in text  # papermill's parameters reached Kedro
    assert "found 48 images, used 48, skipped 0" in text  # the data report
    metrics_file = latest(data / "08_reporting/fruits/metrics.json")
    card_file = latest(data / "06_models/fruits/model_card.json")
    metrics, card = json.loads(metrics_file.read_text()), json.loads(card_file.read_text())
    # which model: the version the catalog loaded, its training score, and its evaluation's
    assert (f"model version {card_file.parent.name} (fruits.model_version=latest): resnet9, "
            f"weights {card['weights_fingerprint']}, "
            f"val accuracy {card['metrics']['val_accuracy']:.1%} in training") in text
    assert (f"evaluated in metrics.json version {metrics_file.parent.name}: test accuracy {metrics['accuracy']:.1%} "
            f"on 12 images") in text
    assert f"test accuracy {metrics['accuracy']:.1%} on 12 images, macro F1 {metrics['macro_f1']:.3f}" in text
    # class balance chart, sample batch, accuracy and loss curves, confusion matrix, mistakes, the image
    assert shown_images(executed) == 7

    # The image classified at the end is the first test image; the saved model's answer in the
    # notebook is the one the pipeline's evaluation gave for that file.
    manifest = pd.read_parquet(data / "02_intermediate/fruits/manifest.parquet")
    first = manifest[manifest["subset"] == "test"].iloc[0]
    predictions = pd.read_parquet(latest(data / "07_model_output/fruits/predictions.parquet")).set_index("file")
    predicted = predictions.loc[first["file"], "predicted"]
    assert re.search(rf"{re.escape(Path(first['file']).name)}: predicted {predicted} \(\d+%\), "
                     rf"true label {first['label']}", text), text[-2000:]


def test_kedro_jupyter_kernel_runs_the_notebook(fruits_run: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`kedro jupyter notebook|lab` install a kernel that loads kedro.ipython, then start Jupyter."""
    for module in ("ipykernel", "notebook", "jupyterlab"):  # what `kedro jupyter setup|notebook|lab` check
        assert importlib.util.find_spec(module), f"{module} is missing: pip install -e '.[jupyter]'"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # not the user's own kernels
    result = subprocess.run([KEDRO, "jupyter", "setup"], cwd=fruits_run, env=os.environ,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    spec = json.loads((tmp_path / "jupyter" / "kernels" / KEDRO_KERNEL / "kernel.json").read_text())
    assert Path(spec["argv"][0]).resolve() == Path(sys.executable).resolve()  # this environment's python
    assert spec["argv"][-2:] == ["--ext", "kedro.ipython"]

    executed = run_notebook(fruits_run, tmp_path / "explore.ipynb", KEDRO_KERNEL)
    metrics = json.loads(latest(fruits_run / "data/08_reporting/fruits/metrics.json").read_text())
    assert f"test accuracy {metrics['accuracy']:.1%}" in shown_text(executed)


def test_a_relative_image_path_is_taken_from_the_project_root(fruits_run: Path, tmp_path: Path) -> None:
    """As catalog paths are; the kernel runs in notebooks/, where this path names nothing."""
    image = Path("data/01_raw/fruits/Test/Kiwi/0.jpg")
    assert (fruits_run / image).is_file() and not (fruits_run / "notebooks" / image).exists()
    text = shown_text(run_notebook(fruits_run, tmp_path / "explore.ipynb", "python3", image=str(image)))
    assert re.search(r"0\.jpg: predicted (Apple|Banana|Kiwi) \(\d+%\)", text), text[-2000:]


def test_a_failing_cell_shows_its_error_in_papermills_message(fruits_run: Path, tmp_path: Path) -> None:
    """Kedro's rich tracebacks used to swallow a notebook's errors: papermill said only
    'Exception encountered at "In [13]":'."""
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        run_notebook(fruits_run, tmp_path / "explore.ipynb", "python3", image="no/such/photo.jpg")
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(failed.value))
    assert failed.value.ename == "ValueError"
    assert f"cannot classify {fruits_run / 'no/such/photo.jpg'}: unreadable image" in message, message
    assert "No such file or directory" in message, message


def test_the_notebook_shows_the_model_model_version_names(fruits_run: Path, tmp_path: Path) -> None:
    """As <dataset>_predict chooses: a version that was never kept is refused, naming the kept ones."""
    kept = latest(fruits_run / "data/06_models/fruits/model_card.json").parent.name
    with pytest.raises(papermill.PapermillExecutionError, match=f"no model of that version .*{kept}"):
        run_notebook(fruits_run, tmp_path / "explore.ipynb", "python3", model_version="2020-01-01T00.00.00.000Z")
    text = shown_text(run_notebook(fruits_run, tmp_path / "best.ipynb", "python3", model_version="best"))
    assert f"model version {kept} (fruits.model_version=best)" in text
