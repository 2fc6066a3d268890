"""The predict pipeline: ``kedro run --pipelines=fruits_predict --params=fruits.predict.input=PATH``
on a model trained once (``fruits_fp32_run``), as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FP32_CPU, latest, make_class_folders, make_image, run_kedro, sample_dir
from vision_pipelines import engine
from vision_pipelines.cache import ImageCache
from vision_pipelines.config import ComputeConfig, ConfigError, EvaluateConfig, PredictConfig
from vision_pipelines.lineage import LineageError
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.model_card import load_model
from vision_pipelines.pipeline_registry import register_pipelines
from vision_pipelines.prediction import classify_files, held_out_probabilities

CLASSES = ["Apple", "Banana", "Kiwi"]
COMPUTE = ComputeConfig(device="cpu", mixed_precision=False)  # FP32_CPU, as settings
OUTPUT = Path("data/07_model_output/fruits/new_predictions.csv")


@pytest.fixture
def project(fruits_fp32_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(fruits_fp32_run)
    return fruits_fp32_run


def predict(project: Path, path: Path | str | None, **settings) -> pd.DataFrame:
    """Run the predict pipeline and read the CSV it wrote."""
    params = {f"fruits.{key}": value for key, value in FP32_CPU.items()}
    params["fruits.predict.input"] = None if path is None else str(path)  # as --params passes it
    params.update({f"fruits.predict.{key}": value for key, value in settings.items()})
    run_kedro(project, "fruits_predict", params)
    return pd.read_csv(latest(project / OUTPUT))


def test_predicting_a_folder_writes_top_k_probabilities_and_a_grid(project: Path, tmp_path: Path) -> None:
    new = make_class_folders(tmp_path / "new", CLASSES, 3, start_seed=900)
    (new / "Kiwi" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (new / "notes.txt").write_text("not an image")

    table = predict(project, new, top_k=3)

    assert list(table.columns) == ["file", "label", "confidence", "label_2", "confidence_2", "label_3",
                                   "confidence_3", "reason"]
    assert len(table) == 9 + 2  # every file has a row: 9 classified, 2 skipped
    skipped = table.set_index("file").loc[["Kiwi/broken.jpg", "notes.txt"]]
    assert skipped["reason"].str.startswith("unreadable image").tolist() == [True, False]
    assert skipped.loc["notes.txt", "reason"] == "not an image file (notes.txt)"
    assert skipped["label"].isna().all()
    classified = table[table["reason"].isna()]
    assert classified["file"].tolist() == [f"{c}/{n}.jpg" for c in CLASSES for n in range(3)]
    confidences = classified[["confidence", "confidence_2", "confidence_3"]].to_numpy()
    assert (np.diff(confidences, axis=1) <= 0).all()  # most likely first
    assert np.allclose(confidences.sum(1), 1, atol=1e-5)  # three classes: the three probabilities
    labels = classified[["label", "label_2", "label_3"]]
    assert all(sorted(row) == CLASSES for row in labels.itertuples(index=False))
    assert latest(project / "data/08_reporting/fruits/new_predictions.png").stat().st_size > 1000


def test_top_k_is_capped_and_one_image_can_be_classified(project: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "photo.png", 1, seed=901)

    table = predict(project, image, top_k=2)

    assert list(table.columns) == ["file", "label", "confidence", "label_2", "confidence_2", "reason"]
    assert table["file"].tolist() == ["photo.png"]
    assert table["confidence"][0] >= table["confidence_2"][0]


def test_predictions_equal_engine_predict_on_the_training_cache(project: Path) -> None:
    """The Test images decoded by the predict pipeline give what the same model gives on the
    image cache, which training and evaluation read: same decode, same normalisation."""
    images_root = project.parent / "images"
    table = predict(project, images_root / "Test").set_index("file")

    data = project / "data"
    card, network = load_model(json.loads(latest(data / "06_models/fruits/model_card.json").read_text()),
                               load_file(latest(data / "06_models/fruits/model.safetensors")))
    cache = ImageCache(data / "05_model_input/fruits/image_cache")
    manifest = pd.read_parquet(data / "02_intermediate/fruits/manifest.parquet")
    files = [f.removeprefix("Test/") for f in manifest["file"].to_numpy()[cache.rows("test").numpy()]]
    loader = Loader.create(MemoryImages(cache.images("test")), cache.labels("test"), card.mean, card.std, 256,
                           COMPUTE)
    probabilities = engine.predict(network, loader).softmax(1)
    confidence, predicted = probabilities.max(1)

    assert table.loc[files, "label"].tolist() == [card.class_names[i] for i in predicted.tolist()]
    assert np.allclose(table.loc[files, "confidence"], confidence.numpy(), rtol=0, atol=1e-6)
    # and the pixels themselves: the files decode to the cache's bytes
    _, seen = classify_files([images_root / "Test" / f for f in files], card, network, COMPUTE,
                             PredictConfig(grid_size=len(files)), workers=1)
    assert torch.equal(torch.from_numpy(seen), cache.images("test"))


def test_held_out_probabilities_are_each_subsets_prediction_with_the_evaluation_settings(project: Path) -> None:
    """Evaluation and the cross-validation folds both predict through ``held_out_probabilities``:
    every held-out subset the cache has, in its order, with the evaluation's test-time augmentation."""
    data = project / "data"
    card, network = load_model(json.loads(latest(data / "06_models/fruits/model_card.json").read_text()),
                               load_file(latest(data / "06_models/fruits/model.safetensors")))
    cache = ImageCache(data / "05_model_input/fruits/image_cache")
    evaluate = EvaluateConfig(tta_flip=True, tta_crops=True, batch_size=7)

    probabilities = held_out_probabilities(network, cache, card, evaluate, COMPUTE)

    assert list(probabilities) == [subset for subset in ("val", "test") if cache.count(subset)] == ["val", "test"]
    for subset, table in probabilities.items():
        loader = Loader.unlabelled(cache.images(subset), card.mean, card.std, 64, COMPUTE)
        expected = engine.predict(network, loader, tta_flip=True, tta_crops=True).softmax(1)
        torch.testing.assert_close(table, expected)
        assert not torch.allclose(table, engine.predict(network, loader).softmax(1))  # the augmentation counts


@pytest.mark.integration
def test_predicting_real_photos_gives_what_evaluation_gave(kedro_project: Path) -> None:
    """The Fruits-360 sample's Test folder, as JPEG files: the predict pipeline classifies each one
    as the training pipeline's evaluation did from the image cache."""
    sample = sample_dir("fruits360")
    params = {"fruits.source.kind": "local", "fruits.source.path": str(sample),
              **{f"fruits.{key}": value for key, value in FP32_CPU.items()}}
    run_kedro(kedro_project, "fruits", params)
    table = predict(kedro_project, sample / "fruits-360" / "Test").set_index("file")

    evaluated = pd.read_parquet(latest(kedro_project / "data/07_model_output/fruits/predictions.parquet"))
    evaluated = evaluated[evaluated["subset"] == "test"]
    files = evaluated["file"].str.removeprefix("fruits-360/Test/")
    assert len(table) == len(files) == 120 and table["reason"].isna().all()
    assert table.loc[files, "label"].tolist() == evaluated["predicted"].tolist()
    assert np.allclose(table.loc[files, "confidence"], evaluated["confidence"], rtol=0, atol=1e-6)


def test_flip_tta_changes_no_rows_or_columns(project: Path, tmp_path: Path) -> None:
    new = make_class_folders(tmp_path / "new", CLASSES, 2, start_seed=950)
    (new / "empty.png").write_bytes(b"")

    plain = predict(project, new)
    flipped = predict(project, new, tta_flip=True)

    assert list(flipped.columns) == list(plain.columns)
    assert flipped["file"].tolist() == plain["file"].tolist()
    assert flipped["reason"].isna().tolist() == plain["reason"].isna().tolist() == [True] * 6 + [False]
    assert not np.allclose(flipped["confidence"][:6], plain["confidence"][:6])  # it did average something
    assert (flipped["confidence"][:6] >= flipped["confidence_2"][:6]).all()


def test_unset_input_fails_before_any_work_naming_the_setting(project: Path) -> None:
    before = set((project / OUTPUT).glob("*"))
    with pytest.raises(ConfigError, match=r"fruits\.predict\.input is not set.*--params=\"fruits\.predict\.input=PATH"):
        predict(project, None)
    with pytest.raises(ConfigError, match=r"fruits\.predict\.input=.*nowhere: no such file or folder"):
        predict(project, project / "nowhere")
    assert set((project / OUTPUT).glob("*")) == before  # no predictions written


def test_a_folder_without_images_is_refused(project: Path, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"holds no image file to classify \(1 file\(s\) skipped, e\.g\. readme"):
        predict(project, tmp_path / "docs")


def test_without_a_trained_model_it_says_to_train_first(kedro_project: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "photo.png", 0)
    with pytest.raises(FileNotFoundError, match=r"fruits\.model_card has not been made yet \(no .*model_card\.json\): "
                       r"run the training pipeline first, which makes it: kedro run --pipelines=fruits "):
        run_kedro(kedro_project, "fruits_predict", {"fruits.predict.input": str(image)})


def test_weights_the_card_does_not_describe_are_refused(fruits_fp32_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    shutil.copytree(fruits_fp32_run, project, symlinks=True)
    monkeypatch.chdir(project)
    weights_path = latest(project / "data/06_models/fruits/model.safetensors")
    weights = load_file(weights_path)
    weights = {name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    save_file(weights, weights_path)  # other weights under the card's version
    with pytest.raises(LineageError, match="not the ones the model card describes"):
        predict(project, fruits_fp32_run.parent / "images" / "Test")


def test_the_pipelines_read_the_training_pipelines_model_entries() -> None:
    """What attaches them to the training pipeline in kedro viz: the very same catalog entries."""
    pipelines = register_pipelines()
    trained = pipelines["fruits"].all_outputs()
    for name, tag in (("fruits_predict", "predict"), ("fruits_export", "export")):
        pipeline = pipelines[name]
        assert {"fruits.model_weights", "fruits.model_card"} <= pipeline.inputs() & trained
        assert not pipeline.all_outputs() & trained  # they never overwrite the training's artifacts
        for node in pipeline.nodes:
            assert node.namespace == "fruits" and node.name == f"fruits.{node.func.__name__}"
            assert node.tags == {"fruits", tag}
    assert pipelines["fruits_predict"].inputs() == {"fruits.model_weights", "fruits.model_card",
                                                    "params:fruits.predict", "params:fruits.compute"}
