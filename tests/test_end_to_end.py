"""The whole fruits pipeline through a Kedro session on a tiny made-up dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from conftest import fast_params, run_kedro
from vision_pipelines import engine, images
from vision_pipelines.models import model_from_card

PLOTS = ["accuracy", "loss", "lr", "confusion", "per_class_accuracy", "error_gallery", "sample_batch"]


def test_fruits_pipeline_produces_every_artifact(kedro_project: Path, fruits_like: Path) -> None:
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(fruits_like)})
    run_kedro(kedro_project, "fruits", params)
    data = kedro_project / "data"

    manifest = pd.read_parquet(data / "02_intermediate/fruits/manifest.parquet")
    counts = manifest["subset"].value_counts().to_dict()
    assert counts == {"train": 29, "val": 7, "test": 12}  # 36 training images, 20 % validation

    submission = pd.read_csv(data / "07_model_output/fruits/submission.csv")
    assert list(submission.columns) == ["id", "label"]
    assert len(submission) == 12
    assert set(submission["id"]) == set(manifest.loc[manifest["subset"] == "test", "file"])

    metrics = json.loads((data / "08_reporting/fruits/metrics.json").read_text())
    assert metrics["subset"] == "test" and metrics["images"] == 12
    assert 0 <= metrics["accuracy"] <= 1
    assert sum(map(sum, metrics["confusion_matrix"])) == 12
    for plot in PLOTS:
        assert (data / f"08_reporting/fruits/{plot}.png").stat().st_size > 1000, plot

    history = pd.read_csv(data / "08_reporting/fruits/training_history.csv")
    assert list(history["epoch"]) == [1, 2, 3]

    # The saved model, rebuilt from its card alone, reproduces the saved predictions.
    card = json.loads((data / "06_models/fruits/model_card.json").read_text())
    network = model_from_card(card, load_file(data / "06_models/fruits/model.safetensors"))
    cache = load_file(data / "05_model_input/fruits/image_cache.safetensors")
    x, _, _ = images.subset_tensors(cache, "test")
    logits = engine.predict_logits(network, x, torch.tensor(card["input"]["mean"]),
                                   torch.tensor(card["input"]["std"]), 64, torch.device("cpu"))
    predicted = [card["class_names"][i] for i in logits.argmax(1).tolist()]
    predictions = pd.read_parquet(data / "07_model_output/fruits/predictions.parquet")
    assert predicted == predictions.loc[predictions["subset"] == "test", "predicted"].tolist()
