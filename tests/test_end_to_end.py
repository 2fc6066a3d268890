"""Whole pipelines through a Kedro session on tiny made-up datasets in each source layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import fast_params, latest, make_class_folders, make_contest_csv_layout, make_image, run_kedro
from vision_pipelines import engine
from vision_pipelines.cache import ImageCache
from vision_pipelines.config import ComputeConfig
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.model_card import load_model

PLOTS = ["accuracy", "loss", "lr", "confusion", "per_class_accuracy", "error_gallery", "sample_batch"]


def test_fruits_pipeline_produces_every_artifact(kedro_project: Path, fruits_like: Path) -> None:
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(fruits_like)})
    run_kedro(kedro_project, "fruits", params)
    data = kedro_project / "data"

    manifest = pd.read_parquet(data / "02_intermediate/fruits/manifest.parquet")
    counts = manifest["subset"].value_counts().to_dict()
    assert counts == {"train": 29, "val": 7, "test": 12}  # 36 training images, 20 % validation

    submission = pd.read_csv(latest(data / "07_model_output/fruits/submission.csv"))
    assert list(submission.columns) == ["id", "label"]
    assert len(submission) == 12
    # ids are paths below the folder every file sits in (fruits-360/), so they do not depend on it
    assert set(submission["id"]) == {f.removeprefix("fruits-360/")
                                     for f in manifest.loc[manifest["subset"] == "test", "file"]}

    metrics = json.loads(latest(data / "08_reporting/fruits/metrics.json").read_text())
    assert metrics["subset"] == "test" and metrics["images"] == 12
    assert 0 <= metrics["accuracy"] <= 1
    assert sum(map(sum, metrics["confusion_matrix"])) == 12
    for plot in PLOTS:
        assert latest(data / f"08_reporting/fruits/{plot}.png").stat().st_size > 1000, plot

    history = pd.read_csv(latest(data / "08_reporting/fruits/training_history.csv"))
    assert list(history["epoch"]) == [1, 2, 3]

    # The saved model, rebuilt from its card alone, reproduces the saved predictions.
    card, network = load_model(json.loads(latest(data / "06_models/fruits/model_card.json").read_text()),
                               load_file(latest(data / "06_models/fruits/model.safetensors")))
    cache = ImageCache(data / "05_model_input/fruits/image_cache")
    loader = Loader.create(MemoryImages(cache.images("test")), cache.labels("test"), card.mean, card.std, 64,
                           ComputeConfig(device="cpu"))
    predicted = [card.class_names[i] for i in engine.predict(network, loader).argmax(1).tolist()]
    predictions = pd.read_parquet(latest(data / "07_model_output/fruits/predictions.parquet"))
    assert predicted == predictions.loc[predictions["subset"] == "test", "predicted"].tolist()


def _garbage_like(root: Path) -> Path:
    """Kaggle's garbage archive: class folders nested twice, index files beside them."""
    inner = root / "Garbage classification" / "Garbage classification"
    make_class_folders(inner, ["cardboard", "glass", "metal"], 10, size=(32, 24))
    (root / "one-indexed-files.txt").write_text("cardboard1.jpg 1\n")
    return root


def _intel_like(root: Path) -> Path:
    """seg_train/seg_train/<class>, seg_test/seg_test/<class>, unlabelled seg_pred/seg_pred."""
    classes = ["buildings", "forest", "sea"]
    make_class_folders(root / "seg_train" / "seg_train", classes, 10)
    make_class_folders(root / "seg_test" / "seg_test", classes, 3, start_seed=700)
    for n in range(5):
        make_image(root / "seg_pred" / "seg_pred" / f"{n + 100}.jpg", n % 3, seed=900 + n)
    return root


def _cifar_like(root: Path) -> Path:
    classes = ["airplane", "bird", "cat"]
    make_class_folders(root / "train", classes, 10, size=(32, 32), extension=".png")
    make_class_folders(root / "test", classes, 3, size=(32, 32), extension=".png", start_seed=300)
    return root


# dataset -> (made-up layout, submission columns, rows of the submission)
LAYOUTS = {
    "garbage": (_garbage_like, ["id", "label"], "test"),
    "intel": (_intel_like, ["image_name", "label"], "predict"),
    "apparel": (lambda root: make_contest_csv_layout(root), ["id", "label"], "predict"),
    "cifar10": (_cifar_like, ["id", "label"], "test"),
}


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_every_pipeline_runs_on_its_layout(dataset: str, kedro_project: Path, tmp_path: Path) -> None:
    make_layout, columns, submitted = LAYOUTS[dataset]
    root = make_layout(tmp_path / f"{dataset}_download")
    run_kedro(kedro_project, dataset, fast_params(dataset, **{"source.kind": "local", "source.path": str(root)}))
    data = kedro_project / "data"

    manifest = pd.read_parquet(data / f"02_intermediate/{dataset}/manifest.parquet")
    card = json.loads(latest(data / f"06_models/{dataset}/model_card.json").read_text())
    metrics = json.loads(latest(data / f"08_reporting/{dataset}/metrics.json").read_text())
    submission = pd.read_csv(latest(data / f"07_model_output/{dataset}/submission.csv"), dtype=str)
    assert card["input"]["channels"] == (1 if dataset == "apparel" else 3)
    # apparel's class names come from its configuration (all ten), the others' from the folders
    assert card["input"]["size"] == 16 and len(card["class_names"]) == (10 if dataset == "apparel" else 3)
    assert metrics["images"] > 0 and 0 <= metrics["accuracy"] <= 1
    assert list(submission.columns) == columns
    assert len(submission) == (manifest["subset"] == submitted).sum() > 0
    for plot in PLOTS:
        assert latest(data / f"08_reporting/{dataset}/{plot}.png").is_file(), plot
    if dataset == "apparel":  # the sample submission's row order, labels as class indices
        sample = pd.read_csv(next(root.glob("sample_submission*.csv")), dtype=str)
        assert submission["id"].tolist() == sample["id"].tolist()
        assert set(submission["label"].astype(int)) <= {0, 1, 2}
    if dataset == "garbage":  # no official split: a seeded test split carved from the images
        assert set(manifest["subset"]) >= {"train", "val", "test"}


def test_intel_base_recipe_fine_tunes_pretrained_resnet34(kedro_project: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """conf/base intel = ImageNet ResNet34; weights come from torch's hub cache (here: made up)."""
    import torchvision

    weights = torchvision.models.ResNet34_Weights.DEFAULT
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet34().state_dict(), cached)
    root = _intel_like(tmp_path / "intel_download")
    params = {"intel.source.kind": "local", "intel.source.path": str(root), "intel.images.size": 32,
              "intel.train.epochs": 1, "intel.train.batch_size": 16}
    run_kedro(kedro_project, "intel", params, env="base")
    card = json.loads(latest(kedro_project / "data/06_models/intel/model_card.json").read_text())
    assert card["model"]["name"] == "resnet34" and card["pretrained_init"] is True
    assert card["input"]["mean"] == [0.485, 0.456, 0.406]
