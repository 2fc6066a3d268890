"""Serve a trained model: an MLflow pyfunc model per training run, and the registry's champion.

At the end of each training run that MLflow tracks, ``tracking.MlflowTrackingHook`` logs the
model as an MLflow pyfunc model (``log_model``), in the run's artifacts under ``<dataset>/pyfunc``
(``runs:/<run id>/<dataset>/pyfunc``), with the model card and weights as its artifacts, and
registers it under the dataset's name (``register``): ``models:/fruits/<n>``. The alias
``champion`` (``models:/fruits@champion``) moves to the new version only when its evaluation
accuracy beats the champion's on the same data; ``promote`` moves it by hand.

The pyfunc model (``ImageClassifier``) takes one column, ``image``, of base64-encoded image files
and returns ``label``, ``confidence``, ``label_2``, ``confidence_2``, ... down to the
``predict.top_k``-th class: the files go through ``prediction.classify_files``, the predict
pipeline's own path (decoded exactly as training did, ``engine.predict``), in fp32. A row that is
not base64 or not an image the project decodes is refused with an ``MlflowException``
(``INVALID_PARAMETER_VALUE``), which MLflow's scoring server answers with HTTP 400.

Why not kedro-mlflow's ``pipeline_ml_factory``: docs/serving.md.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from .config import ComputeConfig, PredictConfig

log = logging.getLogger(__name__)

INPUT_COLUMN = "image"
CHAMPION = "champion"
ACCURACY_TAG, DATA_TAG, KEDRO_VERSION_TAG = "accuracy", "data", "kedro_version"  # on each model version
REQUIREMENTS = ("torch", "torchvision", "safetensors", "pillow", "numpy", "pandas", "mlflow")


def artifact_path(dataset: str) -> str:
    """Where a training run keeps its pyfunc model: ``runs:/<run id>/<dataset>/pyfunc``."""
    return f"{dataset}/pyfunc"


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The trained network behind MLflow's pyfunc interface: base64 image files in, top-k classes out."""

    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        from .model_card import load_model

        card = json.loads(Path(context.artifacts["model_card"]).read_text())
        self.card, self.network = load_model(card, load_file(context.artifacts["weights"]))
        self.predict_config = PredictConfig(**context.model_config["predict"], grid_size=0)  # <d>_predict's
        self.compute = ComputeConfig(mixed_precision=False)  # fp32: the same probabilities as <d>_predict's

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """One row per input row: ``label, confidence, label_2, confidence_2, ...``. (A DataFrame type
        hint: MLflow infers no schema from it, the signature stays the one ``log_model`` gives.)"""
        from .prediction import classify_files

        files = image_files(model_input)
        with tempfile.TemporaryDirectory() as folder:
            paths = [Path(folder) / f"{row}" for row in range(len(files))]
            for path, data in zip(paths, files):
                path.write_bytes(data)
            table, _ = classify_files(paths, self.card, self.network, self.compute, self.predict_config, workers=1)
        refused = table["reason"].dropna()
        if len(refused):
            rows = ", ".join(f"row {i}: {reason.replace(table['file'][i], f'row {i}')}"  # not the temporary file
                             for i, reason in refused.head(5).items())
            raise MlflowException(f"{len(refused)} of {len(table)} rows are not an image this model can read "
                                  f"({rows})", error_code=INVALID_PARAMETER_VALUE)
        return table.drop(columns=["file", "reason"]).reset_index(drop=True)


def image_files(model_input: Any) -> list[bytes]:
    """The bytes of each row's image: column ``image`` holds base64-encoded files."""
    if not isinstance(model_input, pd.DataFrame) or INPUT_COLUMN not in model_input.columns:
        columns = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise MlflowException(f"expected one column {INPUT_COLUMN!r} of base64-encoded image files, got {columns}",
                              error_code=INVALID_PARAMETER_VALUE)
    files = []
    for row, value in enumerate(model_input[INPUT_COLUMN]):
        try:
            files.append(base64.b64decode(value, validate=True))
        except (binascii.Error, TypeError, ValueError) as error:
            raise MlflowException(f"row {row} of {INPUT_COLUMN!r} is not base64 ({error}): send each image file "
                                  "base64-encoded", error_code=INVALID_PARAMETER_VALUE) from None
    return files


def encode_file(path: Path) -> str:
    """A file as the model's input column holds it: base64 text."""
    return base64.b64encode(Path(path).read_bytes()).decode()


def signature(top_k: int) -> ModelSignature:
    ranked = [ColSpec(kind, f"{name}_{rank}") for rank in range(2, top_k + 1)
              for kind, name in (("string", "label"), ("double", "confidence"))]
    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
                          outputs=Schema([ColSpec("string", "label"), ColSpec("double", "confidence"), *ranked]))


def input_example(size: int, channels: int) -> pd.DataFrame:
    """One mid-grey PNG at the model's input size, base64-encoded."""
    from PIL import Image

    pixels = np.full((size, size) if channels == 1 else (size, size, 3), 128, np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    return pd.DataFrame({INPUT_COLUMN: [base64.b64encode(png.getvalue()).decode()]})


def log_model(client: mlflow.MlflowClient, run_id: str, dataset: str, card_path: Path, weights_path: Path,
              predict: PredictConfig) -> str:
    """Log the model ``card_path`` describes to ``run_id`` as a pyfunc model that classifies as
    ``<dataset>_predict`` does with ``predict`` (top-k, flip TTA, batch size); its artifact URI."""
    card = json.loads(Path(card_path).read_text())
    top_k = min(predict.top_k, len(card["class_names"]))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file in a run's log
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "pyfunc"
        mlflow.pyfunc.save_model(
            local, python_model=Path(__file__).with_name("served_model.py"),
            artifacts={"model_card": str(card_path), "weights": str(weights_path)},
            model_config={"predict": {"top_k": top_k, "tta_flip": predict.tta_flip, "batch_size": predict.batch_size}},
            signature=signature(top_k),
            input_example=input_example(card["input"]["size"], card["input"]["channels"]),
            pip_requirements=[f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS],
            metadata={"dataset": dataset, "class_names": card["class_names"]})
        client.log_artifacts(run_id, str(local), artifact_path(dataset))
    return f"{client.get_run(run_id).info.artifact_uri}/{artifact_path(dataset)}"


def register(client: mlflow.MlflowClient, dataset: str, run_id: str, source: str, accuracy: float, data: str,
             kedro_version: str) -> tuple[str, bool, str]:
    """Register the model at ``source`` under ``dataset``'s name and move the alias ``champion`` to it
    when its evaluation ``accuracy`` beats the champion's on the same ``data``: (version, moved, why)."""
    try:
        client.create_registered_model(dataset, description=f"{dataset} image classifier (vision-pipelines)")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    champion = current_champion(client, dataset)
    version = str(client.create_model_version(dataset, source, run_id, tags={
        ACCURACY_TAG: repr(float(accuracy)), DATA_TAG: data, KEDRO_VERSION_TAG: kedro_version}).version)
    moves, why = champion_decision(champion, accuracy, data)
    client.set_model_version_tag(dataset, version, "champion_decision", why)
    if moves:
        client.set_registered_model_alias(dataset, CHAMPION, version)
    return version, moves, why


def current_champion(client: mlflow.MlflowClient, dataset: str):
    """The model version the alias ``champion`` names; None when there is none."""
    try:
        return client.get_model_version_by_alias(dataset, CHAMPION)
    except MlflowException:
        return None


def champion_decision(champion, accuracy: float, data: str) -> tuple[bool, str]:
    """Whether a new version with this evaluation ``accuracy`` on ``data`` replaces ``champion``, and why."""
    if champion is None:
        return True, "no champion yet"
    theirs = float(champion.tags.get(ACCURACY_TAG, "nan"))
    if champion.tags.get(DATA_TAG) != data:
        return False, (f"champion version {champion.version} was evaluated on other data "
                       f"({champion.tags.get(DATA_TAG)}, not {data}): accuracies not comparable; promote by hand")
    if accuracy > theirs:
        return True, f"accuracy {accuracy:.4f} beats champion version {champion.version}'s {theirs:.4f}, same data"
    return False, f"accuracy {accuracy:.4f} does not beat champion version {champion.version}'s {theirs:.4f}"


def promote(client: mlflow.MlflowClient, dataset: str, version: str) -> None:
    """Point ``champion`` at ``version`` of the registered model ``dataset``, whatever its accuracy."""
    client.get_model_version(dataset, version)  # refuses a version that does not exist, naming it
    client.set_registered_model_alias(dataset, CHAMPION, version)
    client.set_model_version_tag(dataset, version, "champion_decision", "promoted by hand")


# --- commands: python -m vision_pipelines promote | serve | demo ---------------------------------

def project_tracking_uri() -> str:
    """The store the project's runs are tracked to (conf/base/mlflow.yml): ``MLFLOW_TRACKING_URI``
    when set, else ``mlflow.db`` at the root of the Kedro project the command runs in."""
    from kedro.utils import find_kedro_project

    from .tracking import tracking_uri

    return tracking_uri(((find_kedro_project(Path.cwd()) or Path.cwd()) / "mlflow.db").as_posix())


def model_uri(dataset: str, model: str) -> str:
    """``models:/fruits@champion`` for an alias, ``models:/fruits/3`` for a version number."""
    return f"models:/{dataset}/{model}" if model.isdigit() else f"models:/{dataset}@{model}"


def main(argv: list[str]) -> None:
    """``promote <dataset> <version>``, ``serve <dataset>`` (mlflow models serve) or ``demo <dataset>``."""
    import argparse
    import subprocess
    import sys

    parser = argparse.ArgumentParser(prog="python -m vision_pipelines", description="Serve a registered model")
    commands = parser.add_subparsers(dest="command", required=True)
    promoting = commands.add_parser("promote", help="point the alias champion at a registered model version")
    promoting.add_argument("dataset")
    promoting.add_argument("version")
    for name, port, what in (("serve", 5001, "the REST endpoint (mlflow models serve)"),
                             ("demo", 5002, "the demo page")):
        command = commands.add_parser(name, help=f"start {what} for a registered model")
        command.add_argument("dataset")
        command.add_argument("--model", default=CHAMPION, help="an alias or a version number (default: champion)")
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=port)
    args = parser.parse_args(argv)
    uri = project_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri  # models:/ URIs are looked up in the project's registry
    if args.command == "promote":
        promote(mlflow.MlflowClient(uri), args.dataset, args.version)
        print(f"{model_uri(args.dataset, CHAMPION)} is now version {args.version}")
    elif args.command == "serve":
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri(args.dataset, args.model),
                   "--env-manager", "local", "-h", args.host, "-p", str(args.port)]
        print("+", " ".join(command), flush=True)
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # mlflow runs uvicorn
        raise SystemExit(subprocess.call(command, env={**os.environ, "PATH": path}))
    else:
        from . import demo

        client = mlflow.MlflowClient(uri)
        found = (client.get_model_version(args.dataset, args.model) if args.model.isdigit()
                 else client.get_model_version_by_alias(args.dataset, args.model))
        name = f"{args.dataset} version {found.version}" + ("" if args.model.isdigit() else f" ({args.model})")
        model = mlflow.pyfunc.load_model(model_uri(args.dataset, str(found.version)))
        demo.serve(model, f"{args.dataset} classifier", name, args.host, args.port)
