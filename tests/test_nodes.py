"""Each node of the template on tiny images, and a pipeline slice through SequentialRunner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from conftest import make_class_folders
from vision_pipelines.pipelines.image_classification import create_template
from vision_pipelines.pipelines.image_classification import nodes

SOURCE = {"kind": "local", "path": "unused", "train_dir": "Training", "test_dir": "Test"}
IMAGES = {"size": 16, "channels": 3}
MODEL = {"name": "resnet9", "width": 8}
TRAIN = {"epochs": 2, "batch_size": 8, "seed": 3}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    make_class_folders(tmp_path / "Training", ["apple", "kiwi", "lime"], 10)
    make_class_folders(tmp_path / "Test", ["apple", "kiwi", "lime"], 2, start_seed=99)
    return tmp_path


def test_build_manifest_splits_with_a_seed(raw: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, SOURCE, {"val_fraction": 0.2, "seed": 43})
    assert classes == ["apple", "kiwi", "lime"]
    assert manifest["subset"].value_counts().to_dict() == {"train": 24, "val": 6, "test": 6}
    again, _ = nodes.build_manifest(raw, SOURCE, {"val_fraction": 0.2, "seed": 43})
    other, _ = nodes.build_manifest(raw, SOURCE, {"val_fraction": 0.2, "seed": 44})
    pd.testing.assert_frame_equal(manifest, again)
    assert set(manifest.loc[manifest.subset == "val", "file"]) != set(other.loc[other.subset == "val", "file"])


def test_build_manifest_carves_a_test_split_when_the_source_has_none(raw: Path) -> None:
    source = {**SOURCE, "test_dir": None}
    manifest, _ = nodes.build_manifest(raw, source, {"val_fraction": 0.2, "test_fraction": 0.3, "seed": 1})
    assert manifest["subset"].value_counts().to_dict() == {"train": 15, "test": 9, "val": 6}


def test_build_image_cache_and_data_report(raw: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, SOURCE, {"val_fraction": 0.2, "seed": 43})
    cache, report = nodes.build_image_cache(raw, manifest, classes, IMAGES)
    assert cache["train.images"].shape == (24, 3, 16, 16) and cache["train.images"].dtype == torch.uint8
    rows = cache["val.rows"].numpy()
    assert [classes[i] for i in cache["val.labels"].tolist()] == manifest["label"].to_numpy()[rows].tolist()
    assert report["found"] == report["used"] == 36 and report["skipped"] == 0
    assert report["per_class"]["kiwi"] == {"found": 12, "used": 12, "skipped": 0, "train": 8, "val": 2,
                                           "test": 2, "predict": 0}
    assert report["image_sizes"]["most_common_sizes"] == {"24x24": 36}
    grey, _ = nodes.build_image_cache(raw, manifest, classes, {"size": 12, "channels": 1, "mean": [0.5], "std": [0.5]})
    assert grey["test.images"].shape == (6, 1, 12, 12)


@pytest.fixture
def trained(raw: Path):
    manifest, classes = nodes.build_manifest(raw, SOURCE, {"val_fraction": 0.2, "seed": 43})
    cache, _ = nodes.build_image_cache(raw, manifest, classes, IMAGES)
    weights, card, history, steps = nodes.train_model(cache, classes, MODEL, IMAGES, TRAIN)
    return raw, manifest, classes, cache, weights, card, history, steps


def test_train_model_outputs(trained) -> None:
    _, _, classes, _, weights, card, history, steps = trained
    assert list(history.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert len(history) == 2 and len(steps) == 2 * 3  # 24 images, batches of 8
    assert steps["lr"].max() == pytest.approx(0.01, rel=0.05)  # one-cycle peak (default max_lr)
    assert card["class_names"] == classes and card["input"]["size"] == 16 and card["input"]["channels"] == 3
    assert card["parameters"] == sum(w.numel() for k, w in weights.items() if "running" not in k and "num_batches" not in k)
    assert card["training"]["config"]["epochs"] == 2


def test_predict_evaluate_and_plots(trained) -> None:
    raw, manifest, classes, cache, weights, card, history, steps = trained
    predictions = nodes.predict(weights, card, cache, manifest, {})
    assert predictions["subset"].value_counts().to_dict() == {"val": 6, "test": 6}
    assert predictions["confidence"].between(0, 1).all()
    metrics = nodes.evaluate_predictions(predictions, classes, {"subset": "test"})
    assert metrics["subset"] == "test" and metrics["images"] == 6
    assert sum(map(sum, metrics["confusion_matrix"])) == 6
    assert set(metrics["per_class"]["apple"]) == {"accuracy", "precision", "recall", "f1", "support"}
    figures = [*nodes.plot_learning_curves(history), nodes.plot_lr_schedule(steps),
               nodes.plot_confusion_matrix(metrics), nodes.plot_per_class_accuracy(metrics),
               nodes.plot_error_gallery(predictions, raw, {}), nodes.plot_sample_batch(cache, classes, TRAIN)]
    assert all(isinstance(f, Figure) for f in figures)


PREDICTIONS = pd.DataFrame({
    "file": ["Test/apple/1.jpg", "Test/kiwi/2.jpg", "Test/kiwi/3.jpg"], "subset": "test",
    "label": ["apple", "kiwi", "kiwi"], "predicted": ["apple", "kiwi", "apple"], "confidence": 0.9,
})


@pytest.mark.parametrize("id_from, ids", [("path", ["Test/apple/1.jpg", "Test/kiwi/2.jpg", "Test/kiwi/3.jpg"]),
                                          ("stem", ["1", "2", "3"]), ("name", ["1.jpg", "2.jpg", "3.jpg"])])
def test_make_submission_ids(id_from: str, ids: list[str], tmp_path: Path) -> None:
    submission = nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], {"id_from": id_from})
    assert submission["id"].tolist() == ids and submission["label"].tolist() == ["apple", "kiwi", "apple"]


def test_make_submission_copies_the_template(tmp_path: Path) -> None:
    (tmp_path / "sample_submission.csv").write_text("id,label\n3,0\n1,0\n2,0\n")
    params = {"id_from": "stem", "label_format": "index", "template": "sample_submission*.csv"}
    submission = nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], params)
    assert submission.values.tolist() == [["3", 0], ["1", 0], ["2", 1]]
    (tmp_path / "sample_submission.csv").write_text("id,label\n3,0\n4,0\n")
    with pytest.raises(ValueError, match="no prediction"):
        nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], params)


def test_split_and_cache_slice_through_sequential_runner(raw: Path) -> None:
    """The template's split and cache stages as Kedro runs them, on an in-memory catalog."""
    stages = create_template().only_nodes_with_tags("split", "cache")
    catalog = DataCatalog({
        "raw_images": MemoryDataset(raw), "params:source": MemoryDataset(SOURCE),
        "params:split": MemoryDataset({"val_fraction": 0.25, "seed": 0}), "params:images": MemoryDataset(IMAGES),
    })
    SequentialRunner().run(stages, catalog)
    assert catalog.load("image_cache")["train.images"].shape[0] + catalog.load("image_cache")["val.images"].shape[0] == 30
    assert catalog.load("data_report")["used"] == 36
