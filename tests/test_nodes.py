"""Each node of the template on tiny images, and pipeline slices through SequentialRunner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from conftest import make_class_folders, make_contest_csv_layout
from vision_pipelines.pipelines.image_classification import create_pipeline, create_template
from vision_pipelines.pipelines.image_classification import nodes

SOURCE = {"kind": "local", "path": "unused", "train_dir": "Training", "test_dir": "Test"}
SPLIT = {"val_fraction": 0.2, "seed": 43}
IMAGES = {"size": 16, "channels": 3}
MODEL = {"name": "resnet9", "width": 8}
TRAIN = {"epochs": 2, "batch_size": 8, "seed": 3}
CLASSES = ["apple", "kiwi", "lime"]


def make_raw(root: Path) -> Path:
    """Training/<class> x 10 and Test/<class> x 2: 30 labelled training images, 6 test images."""
    make_class_folders(root / "Training", CLASSES, 10)
    make_class_folders(root / "Test", CLASSES, 2, start_seed=99)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks gain nothing from intra-op threads, and on shared, busy cores the thread
    pool turns milliseconds per step into a second. Restored afterwards for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tests of this module, which only read it."""
    return make_raw(tmp_path_factory.mktemp("raw"))


def counts(manifest: pd.DataFrame) -> dict[str, int]:
    return manifest["subset"].value_counts().to_dict()


# --- build_manifest -----------------------------------------------------------------------------


def test_build_manifest_splits_with_a_seed(raw: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, SOURCE, SPLIT)
    assert classes == CLASSES
    assert counts(manifest) == {"train": 24, "val": 6, "test": 6}
    again, _ = nodes.build_manifest(raw, SOURCE, SPLIT)
    other, _ = nodes.build_manifest(raw, SOURCE, {**SPLIT, "seed": 44})
    pd.testing.assert_frame_equal(manifest, again)
    assert set(manifest.loc[manifest.subset == "val", "file"]) != set(other.loc[other.subset == "val", "file"])


@pytest.mark.parametrize("val_fraction, val_images", [(0.1, 3), (0.5, 15)])
def test_build_manifest_honours_the_val_fraction_and_lists_each_file_once(
        raw: Path, val_fraction: float, val_images: int) -> None:
    manifest, _ = nodes.build_manifest(raw, SOURCE, {"val_fraction": val_fraction, "seed": 0})
    assert counts(manifest) == {"train": 30 - val_images, "val": val_images, "test": 6}
    assert manifest["file"].is_unique and len(manifest) == 36
    # validation comes from Training only; the source's own test set is kept whole
    assert manifest.loc[manifest.subset == "val", "file"].str.startswith("Training/").all()
    assert manifest.loc[manifest.subset == "test", "file"].str.startswith("Test/").all()
    assert list(manifest.columns) == ["file", "label", "subset", "reason"]


def test_build_manifest_carves_a_test_split_when_the_source_has_none(raw: Path) -> None:
    source = {**SOURCE, "test_dir": None}
    manifest, _ = nodes.build_manifest(raw, source, {"val_fraction": 0.2, "test_fraction": 0.3, "seed": 1})
    assert counts(manifest) == {"train": 15, "test": 9, "val": 6}
    assert manifest["file"].str.startswith("Training/").all()


def test_build_manifest_ignores_test_fraction_when_the_source_has_a_test_set(raw: Path) -> None:
    manifest, _ = nodes.build_manifest(raw, SOURCE, {"val_fraction": 0.2, "test_fraction": 0.3, "seed": 1})
    assert counts(manifest) == {"train": 24, "val": 6, "test": 6}


def test_build_manifest_keeps_skipped_files_with_their_reason(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Training", ["a", "b"], 5)
    make_class_folders(tmp_path / "Test", ["a", "b", "unseen"], 1)
    (tmp_path / "Training" / "a" / "readme.txt").write_text("hello")

    manifest, classes = nodes.build_manifest(tmp_path, SOURCE, SPLIT)

    assert classes == ["a", "b"]
    skipped = manifest[manifest["subset"] == "skipped"].set_index("file")["reason"].to_dict()
    assert skipped == {"Test/unseen/0.jpg": "class not in the training set",
                       "Training/a/readme.txt": "not an image file (readme.txt)"}
    assert counts(manifest) == {"train": 8, "val": 2, "test": 2, "skipped": 2}


def test_build_manifest_keeps_the_configured_class_order(tmp_path: Path) -> None:
    make_contest_csv_layout(tmp_path, classes=3, train_per_class=4, test=2)
    names = ["zeta", "alpha", "mid"]  # deliberately not alphabetical: label i is names[i]
    source = {"kind": "local", "path": "unused", "layout": "csv", "train_csv": "train*/train.csv",
              "test_csv": "test*/test.csv", "class_names": names}
    manifest, classes = nodes.build_manifest(tmp_path, source, {"val_fraction": 0.25, "seed": 0})
    assert classes == names
    labelled = manifest[manifest["subset"].isin(["train", "val"])]
    assert labelled.set_index("file")["label"]["train_AB/train/1.png"] == "zeta"  # csv label 0
    assert labelled.set_index("file")["label"]["train_AB/train/9.png"] == "mid"  # csv label 2
    assert counts(manifest) == {"train": 9, "val": 3, "predict": 2}


# --- build_image_cache --------------------------------------------------------------------------


def test_build_image_cache_and_data_report(raw: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, SOURCE, SPLIT)
    cache, report = nodes.build_image_cache(raw, manifest, classes, IMAGES)
    assert cache["train.images"].shape == (24, 3, 16, 16) and cache["train.images"].dtype == torch.uint8
    for subset, n in (("train", 24), ("val", 6), ("test", 6)):
        rows = cache[f"{subset}.rows"].numpy()
        assert cache[f"{subset}.labels"].dtype == torch.int64 and len(rows) == n
        assert (manifest["subset"].to_numpy()[rows] == subset).all()
        assert [classes[i] for i in cache[f"{subset}.labels"].tolist()] == manifest["label"].to_numpy()[rows].tolist()
    assert "predict.images" not in cache
    assert report["found"] == report["used"] == 36 and report["skipped"] == 0
    assert report["subsets"] == {"train": 24, "val": 6, "test": 6, "predict": 0}
    assert report["per_class"]["kiwi"] == {"found": 12, "used": 12, "skipped": 0, "train": 8, "val": 2,
                                           "test": 2, "predict": 0}
    assert report["image_sizes"]["most_common_sizes"] == {"24x24": 36}


def test_build_image_cache_pixels_follow_the_file(raw: Path) -> None:
    """The cached tensor of a row is that row's image, resized: red apples stay red."""
    manifest, classes = nodes.build_manifest(raw, SOURCE, SPLIT)
    cache, _ = nodes.build_image_cache(raw, manifest, classes, IMAGES)
    mean_colour = cache["test.images"].float().mean((2, 3))  # [N, 3]
    dominant = mean_colour.argmax(1).tolist()  # apple red (0), kiwi green (1), lime blue (2)
    assert dominant == cache["test.labels"].tolist()


def test_build_image_cache_in_greyscale(raw: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, SOURCE, SPLIT)
    grey, _ = nodes.build_image_cache(raw, manifest, classes, {"size": 12, "channels": 1, "mean": [0.5], "std": [0.5]})
    assert grey["test.images"].shape == (6, 1, 12, 12) and grey["test.images"].dtype == torch.uint8
    assert grey["train.images"].shape == (24, 1, 12, 12)


def test_build_image_cache_skips_undecodable_files_and_unlabelled_images_get_minus_one(tmp_path: Path) -> None:
    make_contest_csv_layout(tmp_path, classes=2, train_per_class=5, test=3)
    (tmp_path / "train_AB" / "train" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = {"kind": "local", "path": "unused", "layout": "csv", "train_csv": "train*/train.csv",
              "test_csv": "test*/test.csv", "class_names": ["x", "y"]}
    manifest, classes = nodes.build_manifest(tmp_path, source, {"val_fraction": 0.2, "seed": 0})

    cache, report = nodes.build_image_cache(tmp_path, manifest, classes, {"size": 8, "channels": 1,
                                                                         "mean": [0.5], "std": [0.5]})

    assert report["found"] == 13 and report["used"] == 12 and report["skipped"] == 1
    assert report["skipped_by_reason"] == {"unreadable image": 1}
    assert report["skipped_files"][0]["file"] == "train_AB/train/2.png"
    cached = {manifest["file"][r] for s in ("train", "val", "predict") for r in cache[f"{s}.rows"].tolist()}
    assert len(cached) == 12 and "train_AB/train/2.png" not in cached
    assert cache["predict.images"].shape == (3, 1, 8, 8)
    assert cache["predict.labels"].tolist() == [-1, -1, -1]


# --- train, predict, evaluate -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(raw: Path):
    manifest, classes = nodes.build_manifest(raw, SOURCE, SPLIT)
    cache, _ = nodes.build_image_cache(raw, manifest, classes, IMAGES)
    weights, card, history, steps = nodes.train_model(cache, classes, MODEL, IMAGES, TRAIN)
    return raw, manifest, classes, cache, weights, card, history, steps


def test_train_model_outputs(trained) -> None:
    _, _, classes, _, weights, card, history, steps = trained
    assert list(history.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert history["epoch"].tolist() == [1, 2]
    assert len(steps) == 2 * 3  # 2 epochs x (24 images in batches of 8)
    assert {"step", "epoch", "lr", "loss"} <= set(steps.columns) and steps["step"].tolist() == list(range(1, 7))
    assert steps["lr"].max() == pytest.approx(0.01, rel=0.05)  # one-cycle peak (default max_lr)
    assert card["class_names"] == classes
    assert card["input"]["size"] == 16 and card["input"]["channels"] == 3
    assert card["input"]["mean"] == [0.5, 0.5, 0.5] and card["input"]["std"] == [0.5, 0.5, 0.5]
    assert card["model"] == {"name": "resnet9", "width": 8, "dropout": 0.2}
    assert card["parameters"] == sum(w.numel() for k, w in weights.items() if "running" not in k and "num_batches" not in k)
    assert card["training"]["config"]["epochs"] == 2
    assert card["training"]["train_images"] == 24 and card["training"]["val_images"] == 6
    assert all(w.device.type == "cpu" for w in weights.values())


def test_predict_evaluate_and_plots(trained) -> None:
    raw, manifest, classes, cache, weights, card, history, steps = trained
    predictions = nodes.predict(weights, card, cache, manifest, {})
    assert predictions["subset"].value_counts().to_dict() == {"val": 6, "test": 6}
    assert predictions["confidence"].between(0, 1).all()
    assert set(predictions["predicted"]) <= set(classes)
    test = predictions[predictions["subset"] == "test"]
    assert (test["label"] == test["file"].map(lambda f: Path(f).parent.name)).all()  # rows align with files
    metrics = nodes.evaluate_predictions(predictions, classes, {"subset": "test"})
    assert {"subset", "images", "accuracy", "macro_f1", "per_class", "confusion_matrix", "class_names",
            "top_confused", "val_accuracy"} <= set(metrics)
    assert metrics["subset"] == "test" and metrics["images"] == 6
    assert sum(map(sum, metrics["confusion_matrix"])) == 6
    assert metrics["accuracy"] == pytest.approx((test["label"] == test["predicted"]).mean())
    assert set(metrics["per_class"]["apple"]) == {"accuracy", "precision", "recall", "f1", "support"}
    figures = [*nodes.plot_learning_curves(history), nodes.plot_lr_schedule(steps),
               nodes.plot_confusion_matrix(metrics), nodes.plot_per_class_accuracy(metrics),
               nodes.plot_error_gallery(predictions, raw, {}), nodes.plot_sample_batch(cache, classes, TRAIN)]
    assert len(figures) == 7 and all(isinstance(f, Figure) for f in figures)


PREDICTIONS = pd.DataFrame({
    "file": ["Test/apple/1.jpg", "Test/kiwi/2.jpg", "Test/kiwi/3.jpg"], "subset": "test",
    "label": ["apple", "kiwi", "kiwi"], "predicted": ["apple", "kiwi", "apple"], "confidence": 0.9,
})


def test_evaluate_predictions_counts_per_class() -> None:
    val = PREDICTIONS.assign(subset="val", predicted="kiwi")
    metrics = nodes.evaluate_predictions(pd.concat([PREDICTIONS, val]), ["apple", "kiwi", "lime"], {})
    assert metrics["subset"] == "test" and metrics["images"] == 3
    assert metrics["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]  # rows: true class
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["apple"] == pytest.approx(
        {"accuracy": 1.0, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert metrics["per_class"]["kiwi"] == pytest.approx(
        {"accuracy": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert metrics["per_class"]["lime"]["support"] == 0
    assert metrics["top_confused"] == [{"true": "kiwi", "predicted": "apple", "count": 1}]
    assert metrics["val_accuracy"] == pytest.approx(2 / 3)


def test_evaluate_predictions_falls_back_to_val_without_labelled_test_images() -> None:
    val = PREDICTIONS.assign(subset="val")
    unlabelled = PREDICTIONS.assign(subset="predict", label=None)
    metrics = nodes.evaluate_predictions(pd.concat([val, unlabelled]), ["apple", "kiwi"], {"subset": "test"})
    assert metrics["subset"] == "val" and metrics["images"] == 3


# --- make_submission ----------------------------------------------------------------------------


@pytest.mark.parametrize("id_from, ids", [("path", ["Test/apple/1.jpg", "Test/kiwi/2.jpg", "Test/kiwi/3.jpg"]),
                                          ("stem", ["1", "2", "3"]), ("name", ["1.jpg", "2.jpg", "3.jpg"])])
def test_make_submission_ids(id_from: str, ids: list[str], tmp_path: Path) -> None:
    submission = nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], {"id_from": id_from})
    assert submission["id"].tolist() == ids and submission["label"].tolist() == ["apple", "kiwi", "apple"]


def test_make_submission_label_index_and_column_names(tmp_path: Path) -> None:
    params = {"id_from": "name", "label_format": "index", "id_column": "image_name", "label_column": "category"}
    submission = nodes.make_submission(PREDICTIONS, tmp_path, ["kiwi", "apple"], params)
    assert list(submission.columns) == ["image_name", "category"]
    assert submission["category"].tolist() == [1, 0, 1]  # indices into class_names, not names


def test_make_submission_copies_the_template(tmp_path: Path) -> None:
    (tmp_path / "sample_submission.csv").write_text("id,label\n3,0\n1,0\n2,0\n")
    params = {"id_from": "stem", "label_format": "index", "template": "sample_submission*.csv"}
    submission = nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], params)
    assert submission.values.tolist() == [["3", 0], ["1", 0], ["2", 1]]
    (tmp_path / "sample_submission.csv").write_text("id,label\n3,0\n4,0\n")
    with pytest.raises(ValueError, match=r"1 id\(s\) of the sample submission have no prediction, e\.g\. \['4'\]"):
        nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], params)


def test_make_submission_keeps_the_template_columns_in_a_subfolder(tmp_path: Path) -> None:
    (tmp_path / "contest").mkdir()
    (tmp_path / "contest" / "sample_submission_X.csv").write_text("label,id,note\n0,2,a\n0,3,b\n0,1,c\n")
    params = {"id_from": "stem", "template": "sample_submission*.csv"}
    submission = nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], params)
    assert submission.values.tolist() == [["kiwi", "2", "a"], ["apple", "3", "b"], ["apple", "1", "c"]]


def test_make_submission_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="submission.subset='predict' has no images"):
        nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], {"subset": "predict"})
    with pytest.raises(FileNotFoundError, match="submission.template='sample\\*.csv': no such file"):
        nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], {"template": "sample*.csv"})
    (tmp_path / "sample.csv").write_text("image,label\n1,0\n")
    with pytest.raises(ValueError, match="has no column 'id'"):
        nodes.make_submission(PREDICTIONS, tmp_path, ["apple", "kiwi"], {"template": "sample*.csv"})


def test_download_images_returns_the_local_folder(raw: Path) -> None:
    assert nodes.download_images({"kind": "local", "path": str(raw)}) == raw.resolve()


# --- slices of the template, run as Kedro runs them -----------------------------------------


def test_split_and_cache_slice_through_sequential_runner(raw: Path) -> None:
    """The template's split and cache stages as Kedro runs them, on an in-memory catalog."""
    stages = create_template().only_nodes_with_tags("split", "cache")
    assert {n.name for n in stages.nodes} == {"build_manifest", "build_image_cache"}
    catalog = DataCatalog({
        "raw_images": MemoryDataset(raw), "params:source": MemoryDataset(SOURCE),
        "params:split": MemoryDataset({"val_fraction": 0.25, "seed": 0}), "params:images": MemoryDataset(IMAGES),
    })
    SequentialRunner().run(stages, catalog)
    cache = catalog.load("image_cache")
    assert cache["train.images"].shape[0] + cache["val.images"].shape[0] == 30
    assert cache["val.images"].shape[0] == 7  # a quarter of the 30 training images, rounded down
    assert catalog.load("data_report")["used"] == 36
    assert sorted(catalog.load("data_report")["per_class"]) == CLASSES


def test_namespaced_train_evaluate_submit_slice_through_sequential_runner(raw: Path) -> None:
    """train -> predict -> evaluate/submit under the ``fruits`` namespace, from a saved manifest and cache."""
    manifest, classes = nodes.build_manifest(raw, SOURCE, SPLIT)
    cache, _ = nodes.build_image_cache(raw, manifest, classes, IMAGES)
    stages = (create_pipeline("fruits").from_nodes("fruits.train_model")
              .to_nodes("fruits.evaluate_predictions", "fruits.make_submission"))
    assert {n.name for n in stages.nodes} == {"fruits.train_model", "fruits.predict",
                                              "fruits.evaluate_predictions", "fruits.make_submission"}
    catalog = DataCatalog({
        "fruits.raw_images": MemoryDataset(raw), "fruits.manifest": MemoryDataset(manifest),
        "fruits.class_names": MemoryDataset(classes), "fruits.image_cache": MemoryDataset(cache),
        "params:fruits.model": MemoryDataset(MODEL), "params:fruits.images": MemoryDataset(IMAGES),
        "params:fruits.train": MemoryDataset({**TRAIN, "epochs": 1}),
        "params:fruits.evaluate": MemoryDataset({"subset": "test"}),
        "params:fruits.submission": MemoryDataset({"subset": "test", "id_from": "path"}),
    })
    SequentialRunner().run(stages, catalog)  # intermediate data is released; free outputs stay
    assert catalog.load("fruits.metrics")["images"] == 6
    assert len(catalog.load("fruits.training_history")) == 1
    submission = catalog.load("fruits.submission")
    assert sorted(submission["id"]) == sorted(manifest.loc[manifest.subset == "test", "file"])
