"""Each node of the image-classification template on tiny images, and pipeline slices through
SequentialRunner (src/vision_pipelines/pipelines/image_classification/{nodes,pipeline}.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from conftest import (
    CPU,
    FOLDERS_SOURCE,
    IMAGES,
    MODEL,
    SPLIT,
    make_class_folders,
    make_contest_csv_layout,
    make_folders_dataset,
    write_cache,
)
from vision_pipelines.config import (
    EvaluateConfig,
    ImageConfig,
    LRFindConfig,
    SourceConfig,
    SplitConfig,
    SubmissionConfig,
    TrainConfig,
)
from vision_pipelines.lineage import LineageError, manifest_fingerprint
from vision_pipelines.model_card import card_fingerprint
from vision_pipelines.pipelines.image_classification import create_pipeline, create_template, nodes
from vision_pipelines.threads import ThreadPolicy

TRAIN = TrainConfig(epochs=2, batch_size=8, seed=3)
CLASSES = ["apple", "kiwi", "lime"]


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
    """Training/<class> x 10 and Test/<class> x 2: 30 labelled training images, 6 test images."""
    return make_folders_dataset(tmp_path_factory.mktemp("raw"))


def counts(manifest: pd.DataFrame) -> dict[str, int]:
    return manifest["subset"].value_counts().to_dict()


def cache_of(raw: Path, manifest: pd.DataFrame, classes: list[str], folder: Path, images: ImageConfig = IMAGES):
    return write_cache(nodes.build_image_cache(raw, manifest, classes, images), folder)


# --- build_manifest -----------------------------------------------------------------------------


def test_build_manifest_splits_with_a_seed(raw: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    assert classes == CLASSES
    assert counts(manifest) == {"train": 24, "val": 6, "test": 6}
    again, _ = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    other, _ = nodes.build_manifest(raw, FOLDERS_SOURCE, SplitConfig(seed=44))
    pd.testing.assert_frame_equal(manifest, again)
    assert set(manifest.loc[manifest.subset == "val", "file"]) != set(other.loc[other.subset == "val", "file"])


@pytest.mark.parametrize("val_fraction, val_images", [(0.1, 3), (0.5, 15)])
def test_build_manifest_honours_the_val_fraction_and_lists_each_file_once(
        raw: Path, val_fraction: float, val_images: int) -> None:
    manifest, _ = nodes.build_manifest(raw, FOLDERS_SOURCE, SplitConfig(val_fraction=val_fraction, seed=0))
    assert counts(manifest) == {"train": 30 - val_images, "val": val_images, "test": 6}
    assert manifest["file"].is_unique and len(manifest) == 36
    # validation comes from Training only; the source's own test set is kept whole
    assert manifest.loc[manifest.subset == "val", "file"].str.startswith("Training/").all()
    assert manifest.loc[manifest.subset == "test", "file"].str.startswith("Test/").all()
    assert list(manifest.columns) == ["file", "label", "subset", "reason"]


def test_build_manifest_carves_a_test_split_when_the_source_has_none(raw: Path) -> None:
    source = dataclasses.replace(FOLDERS_SOURCE, test_dir=None)
    manifest, _ = nodes.build_manifest(raw, source, SplitConfig(val_fraction=0.2, test_fraction=0.3, seed=1))
    assert counts(manifest) == {"train": 15, "test": 9, "val": 6}
    assert manifest["file"].str.startswith("Training/").all()


def test_build_manifest_ignores_test_fraction_when_the_source_has_a_test_set(raw: Path) -> None:
    manifest, _ = nodes.build_manifest(raw, FOLDERS_SOURCE, SplitConfig(val_fraction=0.2, test_fraction=0.3, seed=1))
    assert counts(manifest) == {"train": 24, "val": 6, "test": 6}


def test_build_manifest_keeps_skipped_files_with_their_reason(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Training", ["a", "b"], 5)
    make_class_folders(tmp_path / "Test", ["a", "b", "unseen"], 1)
    (tmp_path / "Training" / "a" / "readme.txt").write_text("hello")

    manifest, classes = nodes.build_manifest(tmp_path, FOLDERS_SOURCE, SPLIT)

    assert classes == ["a", "b"]
    skipped = manifest[manifest["subset"] == "skipped"].set_index("file")["reason"].to_dict()
    assert skipped == {"Test/unseen/0.jpg": "class not in the training set",
                       "Training/a/readme.txt": "not an image file (readme.txt)"}
    assert counts(manifest) == {"train": 8, "val": 2, "test": 2, "skipped": 2}


def test_build_manifest_keeps_the_configured_class_order(tmp_path: Path) -> None:
    make_contest_csv_layout(tmp_path, classes=3, train_per_class=4, test=2)
    names = ["zeta", "alpha", "mid"]  # deliberately not alphabetical: label i is names[i]
    source = SourceConfig(path="unused", layout="csv", train_csv="train*/train.csv", test_csv="test*/test.csv",
                          class_names=names)
    manifest, classes = nodes.build_manifest(tmp_path, source, SplitConfig(val_fraction=0.25, seed=0))
    assert classes == names
    labelled = manifest[manifest["subset"].isin(["train", "val"])].set_index("file")["label"]
    assert labelled["train_AB/train/1.png"] == "zeta"  # csv label 0
    assert labelled["train_AB/train/9.png"] == "mid"  # csv label 2
    assert counts(manifest) == {"train": 9, "val": 3, "predict": 2}


def test_split_subsets_is_a_pure_function_of_its_input_and_seed() -> None:
    origin = pd.Series(["train"] * 40 + ["predict"] * 3 + ["skipped"], index=range(100, 144))
    before = torch.get_rng_state()
    torch.manual_seed(1)
    first = nodes.split_subsets(origin, SplitConfig(val_fraction=0.25, test_fraction=0.25, seed=7))
    torch.manual_seed(2)  # the global generator plays no part
    second = nodes.split_subsets(origin, SplitConfig(val_fraction=0.25, test_fraction=0.25, seed=7))
    other = nodes.split_subsets(origin, SplitConfig(val_fraction=0.25, test_fraction=0.25, seed=8))
    torch.set_rng_state(before)
    assert first.equals(second) and not first.equals(other)
    assert first.value_counts().to_dict() == {"train": 20, "val": 10, "test": 10, "predict": 3, "skipped": 1}
    assert (first[origin != "train"] == origin[origin != "train"]).all()  # only training images move
    assert (origin[:40] == "train").all()  # the input is left as it was
    given_test = nodes.split_subsets(origin.where(origin.index != 100, "test"), SplitConfig(test_fraction=0.5))
    assert given_test.value_counts().to_dict() == {"train": 32, "val": 7, "predict": 3, "test": 1, "skipped": 1}


# --- build_image_cache and summarise_data -------------------------------------------------------


def test_image_cache_holds_each_subset_with_its_labels_and_manifest_rows(raw: Path, tmp_path: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    cache = cache_of(raw, manifest, classes, tmp_path / "cache")
    assert cache.images("train").shape == (24, 3, 16, 16) and cache.images("train").dtype == torch.uint8
    for subset, n in (("train", 24), ("val", 6), ("test", 6)):
        rows = cache.rows(subset).numpy()
        assert len(rows) == n and (manifest["subset"].to_numpy()[rows] == subset).all()
        assert [classes[i] for i in cache.labels(subset).tolist()] == manifest["label"].to_numpy()[rows].tolist()
    assert cache.count("predict") == 0
    # the cached tensor of a row is that row's image, resized: red apples stay red
    dominant = cache.images("test").float().mean((2, 3)).argmax(1)  # apple red (0), kiwi green (1), lime blue (2)
    assert dominant.tolist() == cache.labels("test").tolist()


def test_training_images_are_cached_in_a_seeded_random_order(raw: Path, tmp_path: Path) -> None:
    """Each shard of the training subset is a random sample of it, so streaming it mixes classes."""
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    first = cache_of(raw, manifest, classes, tmp_path / "a")
    again = cache_of(raw, manifest, classes, tmp_path / "b")
    assert first.rows("train").tolist() == again.rows("train").tolist()
    assert first.rows("train").tolist() != sorted(first.rows("train").tolist())
    assert first.rows("test").tolist() == sorted(first.rows("test").tolist())


def test_image_cache_in_greyscale(raw: Path, tmp_path: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    grey = cache_of(raw, manifest, classes, tmp_path / "cache", ImageConfig(size=12, channels=1, mean=[0.5], std=[0.5]))
    assert grey.images("test").shape == (6, 1, 12, 12) and grey.images("train").shape == (24, 1, 12, 12)


def test_data_report_counts_what_was_found_used_and_skipped(raw: Path, tmp_path: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    cache = cache_of(raw, manifest, classes, tmp_path / "cache")
    report = nodes.summarise_data(manifest, cache, classes, SPLIT, EvaluateConfig(), SubmissionConfig())
    assert report["found"] == report["used"] == 36 and report["skipped"] == 0
    assert report["subsets"] == {"train": 24, "val": 6, "test": 6, "predict": 0}
    assert report["per_class"]["kiwi"] == {"found": 12, "used": 12, "skipped": 0, "train": 8, "val": 2,
                                           "test": 2, "predict": 0}
    assert report["image_sizes"]["most_common_sizes"] == {"24x24": 36}
    assert report["errors"] == [] and report["warnings"] == []
    assert report["image_cache"] == cache.fingerprint


def test_undecodable_files_are_skipped_and_unlabelled_images_get_minus_one(tmp_path: Path) -> None:
    make_contest_csv_layout(tmp_path, classes=2, train_per_class=5, test=3)
    (tmp_path / "train_AB" / "train" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = SourceConfig(path="unused", layout="csv", train_csv="train*/train.csv", test_csv="test*/test.csv",
                          class_names=["x", "y"])
    manifest, classes = nodes.build_manifest(tmp_path, source, SplitConfig(val_fraction=0.2, seed=0))
    images = ImageConfig(size=8, channels=1, mean=[0.5], std=[0.5])
    cache = cache_of(tmp_path, manifest, classes, tmp_path / "cache", images)
    report = nodes.summarise_data(manifest, cache, classes, SPLIT, EvaluateConfig(subset="val"),
                                  SubmissionConfig(subset="predict"))

    assert report["found"] == 13 and report["used"] == 12 and report["skipped"] == 1
    assert report["skipped_by_reason"] == {"unreadable image": 1}
    assert report["skipped_files"][0]["file"] == "train_AB/train/2.png"
    cached = {manifest["file"][r] for s in ("train", "val", "predict") for r in cache.rows(s).tolist()}
    assert len(cached) == 12 and "train_AB/train/2.png" not in cached
    assert cache.images("predict").shape == (3, 1, 8, 8)
    assert cache.labels("predict").tolist() == [-1, -1, -1]


def test_data_report_lists_what_would_stop_training(raw: Path, tmp_path: Path) -> None:
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    cache = cache_of(raw, manifest, classes, tmp_path / "cache")
    report = nodes.summarise_data(manifest, cache, classes, SPLIT, EvaluateConfig(), SubmissionConfig(subset="predict"))
    assert report["errors"] == ["submission.subset='predict' has no readable images: set submission.subset to "
                                "a subset the source provides"]
    with pytest.raises(ValueError, match="cannot be trained on.*submission.subset='predict'"):
        nodes.train_model(cache, report, tmp_path / "checkpoint.pt", MODEL, IMAGES, TRAIN, CPU)


def test_data_report_flags_classes_with_few_training_images(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Training", ["apple", "kiwi"], 8)
    make_class_folders(tmp_path / "Training", ["lime"], 1, start_seed=99)  # its one image may go to val
    make_class_folders(tmp_path / "Test", ["apple", "kiwi", "lime"], 1, start_seed=200)
    manifest, classes = nodes.build_manifest(tmp_path, FOLDERS_SOURCE, SplitConfig(val_fraction=0.5, seed=0))
    cache = cache_of(tmp_path, manifest, classes, tmp_path / "cache")
    report = nodes.summarise_data(manifest, cache, classes, SplitConfig(min_train_per_class=3),
                                  EvaluateConfig(), SubmissionConfig())
    lime = report["per_class"]["lime"]["train"]
    assert report["class_balance"]["below_minimum"]["lime"] == lime < 3
    assert any("class 'lime' has" in w for w in report["warnings"])


# --- train, predict, evaluate -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(raw: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("trained")
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    cache = cache_of(raw, manifest, classes, folder / "cache")
    report = nodes.summarise_data(manifest, cache, classes, SPLIT, EvaluateConfig(), SubmissionConfig())
    weights, card, history, steps = nodes.train_model(cache, report, folder / "checkpoint.pt", MODEL, IMAGES,
                                                      TRAIN, CPU)
    return raw, manifest, classes, cache, weights, card, history, steps


def test_train_model_outputs(trained) -> None:
    _, _, classes, cache, weights, card, history, steps = trained
    assert list(history.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                                     "seconds"]
    assert history["epoch"].tolist() == [1, 2]
    assert len(steps) == 2 * 3  # 2 epochs x (24 images in batches of 8)
    assert {"step", "epoch", "lr", "loss"} <= set(steps.columns) and steps["step"].tolist() == list(range(1, 7))
    assert steps["lr"].max() == pytest.approx(0.01, rel=0.05)  # one-cycle peak (default max_lr)
    assert card["class_names"] == classes
    assert card["input"]["size"] == 16 and card["input"]["channels"] == 3
    assert card["input"]["mean"] == [0.5, 0.5, 0.5] and card["input"]["std"] == [0.5, 0.5, 0.5]
    assert card["model"] == {"name": "resnet9", "width": 8, "dropout": 0.2, "logit_scale": 1.0, "whiten": False}
    assert card["training"]["config"]["epochs"] == 2 and card["training"]["kept_epoch"] == 2
    assert card["training"]["train_images"] == 24 and card["training"]["val_images"] == 6
    assert card["lineage"] == {"image_cache": cache.fingerprint, "manifest": cache.manifest_fingerprint}
    assert all(w.device.type == "cpu" for w in weights.values())
    assert card["training"]["threads"] == {"setting": None, "used": 1}  # torch's count, as this module sets it


def test_train_model_chooses_the_thread_count_and_says_which(trained, caplog: pytest.LogCaptureFixture) -> None:
    _, _, _, cache, _, card, _, _ = trained
    report = {"image_cache": cache.fingerprint, "errors": []}
    with caplog.at_level("INFO", logger="vision_pipelines"):
        _, auto_card, _, _ = nodes.train_model(cache, report, None, MODEL, IMAGES, dataclasses.replace(TRAIN, epochs=1),
                                               dataclasses.replace(CPU, threads="auto"))
    used = auto_card["training"]["threads"]["used"]
    assert auto_card["training"]["threads"]["setting"] == "auto" and used in ThreadPolicy("auto").candidates
    assert f"{used} thread{'s' if used > 1 else ''} (auto):" in caplog.text  # the start line
    assert torch.get_num_threads() == 1  # the count before training is back
    moved = {**auto_card, "training": {**auto_card["training"], "threads": {"setting": 2, "used": 2}}}
    assert card_fingerprint(moved) == auto_card["fingerprint"]  # informational: not what the model means


def test_predict_evaluate_and_plots(trained) -> None:
    raw, manifest, classes, cache, weights, card, history, steps = trained
    predictions = nodes.predict(weights, card, cache, manifest, EvaluateConfig(), CPU)
    assert predictions["subset"].value_counts().to_dict() == {"val": 6, "test": 6}
    assert predictions["confidence"].between(0, 1).all()
    assert set(predictions["predicted"]) <= set(classes)
    test = predictions[predictions["subset"] == "test"]
    assert (test["label"] == test["file"].map(lambda f: Path(f).parent.name)).all()  # rows align with files
    assert predictions.attrs["lineage"]["model"] == card["weights_fingerprint"]
    metrics = nodes.evaluate_predictions(predictions, classes, EvaluateConfig(subset="test"))
    assert {"subset", "images", "accuracy", "macro_f1", "per_class", "confusion_matrix", "class_names",
            "top_confused", "val_accuracy"} <= set(metrics)
    assert metrics["subset"] == "test" and metrics["images"] == 6
    assert sum(map(sum, metrics["confusion_matrix"])) == 6
    assert metrics["accuracy"] == pytest.approx((test["label"] == test["predicted"]).mean())
    assert set(metrics["per_class"]["apple"]) == {"accuracy", "precision", "recall", "f1", "support"}
    figures = [*nodes.plot_learning_curves(history), nodes.plot_lr_schedule(steps),
               nodes.plot_confusion_matrix(metrics), nodes.plot_per_class_accuracy(metrics),
               nodes.plot_error_gallery(predictions, raw, EvaluateConfig()), nodes.plot_sample_batch(cache, TRAIN)]
    assert len(figures) == 7 and all(isinstance(f, Figure) for f in figures)


def test_predict_refuses_a_model_trained_on_another_cache(trained, tmp_path: Path) -> None:
    raw, manifest, classes, _, weights, card, _, _ = trained
    bigger = cache_of(raw, manifest, classes, tmp_path / "cache", ImageConfig(size=20))
    with pytest.raises(LineageError, match="trained on another image cache.*Re-run the train stage"):
        nodes.predict(weights, card, bigger, manifest, EvaluateConfig(), CPU)


def test_predict_refuses_a_manifest_the_cache_was_not_built_from(trained) -> None:
    _, manifest, _, cache, weights, card, _, _ = trained
    changed = manifest.assign(subset=manifest["subset"].replace({"val": "train"}))
    with pytest.raises(LineageError, match="image cache was built from another manifest.*the cache stage"):
        nodes.predict(weights, card, cache, changed, EvaluateConfig(), CPU)


def manifest_and_predictions(class_names=("apple", "kiwi")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three test images of ``Test/<class>/<n>.jpg`` and predictions made for that manifest."""
    manifest = pd.DataFrame({"file": ["Test/apple/1.jpg", "Test/kiwi/2.jpg", "Test/kiwi/3.jpg", "Training/apple/4.jpg"],
                             "label": ["apple", "kiwi", "kiwi", "apple"], "subset": ["test"] * 3 + ["train"],
                             "reason": None})
    predictions = manifest.iloc[:3][["file", "subset", "label"]].assign(predicted=["apple", "kiwi", "apple"],
                                                                        confidence=0.9)
    predictions.attrs["lineage"] = {"manifest": manifest_fingerprint(manifest, list(class_names)),
                                    "class_names": list(class_names), "model": "m"}
    return manifest, predictions


def test_evaluate_predictions_counts_per_class() -> None:
    _, predictions = manifest_and_predictions(["apple", "kiwi", "lime"])
    both = pd.concat([predictions, predictions.assign(subset="val", predicted="kiwi")])
    both.attrs = predictions.attrs
    metrics = nodes.evaluate_predictions(both, ["apple", "kiwi", "lime"], EvaluateConfig())
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
    _, predictions = manifest_and_predictions()
    mixed = pd.concat([predictions.assign(subset="val"), predictions.assign(subset="predict", label=None)])
    mixed.attrs = predictions.attrs
    metrics = nodes.evaluate_predictions(mixed, ["apple", "kiwi"], EvaluateConfig(subset="test"))
    assert metrics["subset"] == "val" and metrics["images"] == 3


def test_evaluate_predictions_refuses_predictions_of_other_classes() -> None:
    _, predictions = manifest_and_predictions()
    with pytest.raises(LineageError, match="other classes than the current split's"):
        nodes.evaluate_predictions(predictions, ["apple", "kiwi", "melon"], EvaluateConfig())


# --- make_submission ----------------------------------------------------------------------------


@pytest.mark.parametrize("id_from, ids", [("path", ["Test/apple/1.jpg", "Test/kiwi/2.jpg", "Test/kiwi/3.jpg"]),
                                          ("stem", ["1", "2", "3"]), ("name", ["1.jpg", "2.jpg", "3.jpg"])])
def test_make_submission_ids(id_from: str, ids: list[str], tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions()
    submission = nodes.make_submission(predictions, manifest, tmp_path, SubmissionConfig(id_from=id_from))
    assert submission["id"].tolist() == ids and submission["label"].tolist() == ["apple", "kiwi", "apple"]


def test_submission_ids_do_not_depend_on_how_deep_the_source_path_points(tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions()
    deeper = manifest.assign(file="fruits-360/" + manifest["file"])
    deeper_predictions = predictions.assign(file="fruits-360/" + predictions["file"])
    deeper_predictions.attrs = {"lineage": {**predictions.attrs["lineage"],
                                            "manifest": manifest_fingerprint(deeper, ["apple", "kiwi"])}}
    ids = [nodes.make_submission(p, m, tmp_path, SubmissionConfig())["id"].tolist()
           for m, p in ((manifest, predictions), (deeper, deeper_predictions))]
    assert ids[0] == ids[1] == ["Test/apple/1.jpg", "Test/kiwi/2.jpg", "Test/kiwi/3.jpg"]


def test_repeated_ids_fall_back_to_unique_relative_paths(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CIFAR-10 as test/<class>/NNNN.jpg: stems repeat across classes; ids must not."""
    manifest, predictions = manifest_and_predictions()
    repeated = predictions.assign(file=["Test/apple/1.jpg", "Test/kiwi/1.jpg", "Test/kiwi/3.jpg"])
    manifest = manifest.assign(file=[*repeated["file"], "Training/apple/4.jpg"])
    repeated.attrs = {"lineage": {**predictions.attrs["lineage"],
                                  "manifest": manifest_fingerprint(manifest, ["apple", "kiwi"])}}
    submission = nodes.make_submission(repeated, manifest, tmp_path, SubmissionConfig(id_from="stem"))
    assert submission["id"].is_unique
    assert submission["id"].tolist() == ["Test/apple/1.jpg", "Test/kiwi/1.jpg", "Test/kiwi/3.jpg"]
    assert "submission.id_from='stem' repeat (1 duplicates" in caplog.text


def test_make_submission_refuses_predictions_made_for_another_manifest(tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions()
    newer = manifest.iloc[1:]  # an image was removed since the predictions were made
    with pytest.raises(LineageError, match="predictions were made for another manifest"):
        nodes.make_submission(predictions, newer, tmp_path, SubmissionConfig())


def test_make_submission_label_index_and_column_names(tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions(["kiwi", "apple"])
    settings = SubmissionConfig(id_from="name", label_format="index", id_column="image_name", label_column="category")
    submission = nodes.make_submission(predictions, manifest, tmp_path, settings)
    assert list(submission.columns) == ["image_name", "category"]
    assert submission["category"].tolist() == [1, 0, 1]  # indices into class_names, not names


def test_make_submission_copies_the_template(tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions()
    (tmp_path / "sample_submission.csv").write_text("id,label\n3,0\n1,0\n2,0\n")
    settings = SubmissionConfig(id_from="stem", label_format="index", template="sample_submission*.csv")
    submission = nodes.make_submission(predictions, manifest, tmp_path, settings)
    assert submission.values.tolist() == [["3", 0], ["1", 0], ["2", 1]]
    (tmp_path / "sample_submission.csv").write_text("id,label\n3,0\n4,0\n")
    with pytest.raises(ValueError, match=r"1 id\(s\) of the sample submission have no prediction, e\.g\. \['4'\]"):
        nodes.make_submission(predictions, manifest, tmp_path, settings)


def test_make_submission_keeps_the_template_columns_in_a_subfolder(tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions()
    (tmp_path / "contest").mkdir()
    (tmp_path / "contest" / "sample_submission_X.csv").write_text("label,id,note\n0,2,a\n0,3,b\n0,1,c\n")
    settings = SubmissionConfig(id_from="stem", template="sample_submission*.csv")
    submission = nodes.make_submission(predictions, manifest, tmp_path, settings)
    assert submission.values.tolist() == [["kiwi", "2", "a"], ["apple", "3", "b"], ["apple", "1", "c"]]


def test_make_submission_errors_are_clear(tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions()
    with pytest.raises(ValueError, match="submission.subset='predict' has no images"):
        nodes.make_submission(predictions, manifest, tmp_path, SubmissionConfig(subset="predict"))
    with pytest.raises(FileNotFoundError, match="submission.template='sample\\*.csv': no such file"):
        nodes.make_submission(predictions, manifest, tmp_path, SubmissionConfig(template="sample*.csv"))
    (tmp_path / "sample.csv").write_text("image,label\n1,0\n")
    with pytest.raises(ValueError, match="has no column 'id'"):
        nodes.make_submission(predictions, manifest, tmp_path, SubmissionConfig(template="sample*.csv"))


def test_a_template_linking_outside_the_dataset_is_refused(tmp_path: Path) -> None:
    manifest, predictions = manifest_and_predictions()
    dataset, elsewhere = tmp_path / "dataset", tmp_path / "elsewhere"
    dataset.mkdir()
    elsewhere.mkdir()
    (elsewhere / "sample_submission.csv").write_text("id,label\n3,0\n1,0\n2,0\n")
    (dataset / "sample_submission.csv").symlink_to(elsewhere / "sample_submission.csv")
    with pytest.raises(FileNotFoundError, match="no such file under .*links leading outside the dataset"):
        nodes.make_submission(predictions, manifest, dataset, SubmissionConfig(template="sample_submission*.csv"))


def test_download_images_returns_the_local_folder(raw: Path, tmp_path: Path) -> None:
    assert nodes.download_images(SourceConfig(path=str(raw)), tmp_path) == raw.resolve()


# --- slices of the template, run as Kedro runs them -----------------------------------------


def test_split_and_cache_slice_through_sequential_runner(raw: Path, tmp_path: Path) -> None:
    """The template's split and cache stages as Kedro runs them, with the cache on disk."""
    from vision_pipelines.datasets import ImageCacheDataset

    stages = create_template().only_nodes_with_tags("split", "cache")
    assert {n.name for n in stages.nodes} == {"build_manifest", "build_image_cache", "summarise_data"}
    catalog = DataCatalog({
        "raw_images": MemoryDataset(raw), "params:source": MemoryDataset(FOLDERS_SOURCE),
        "params:split": MemoryDataset(SplitConfig(val_fraction=0.25, seed=0)), "params:images": MemoryDataset(IMAGES),
        "params:evaluate": MemoryDataset(EvaluateConfig()), "params:submission": MemoryDataset(SubmissionConfig()),
        "image_cache": ImageCacheDataset(path=str(tmp_path / "cache")),
    })
    SequentialRunner().run(stages, catalog)
    cache = catalog.load("image_cache")
    assert cache.count("train") + cache.count("val") == 30
    assert cache.count("val") == 7  # a quarter of the 30 training images, rounded down
    assert catalog.load("data_report")["used"] == 36
    assert sorted(catalog.load("data_report")["per_class"]) == CLASSES


def test_namespaced_train_evaluate_submit_slice_through_sequential_runner(raw: Path, tmp_path: Path) -> None:
    """train -> predict -> evaluate/submit under the ``fruits`` namespace, from a saved manifest and cache."""
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    cache = cache_of(raw, manifest, classes, tmp_path / "cache")
    report = nodes.summarise_data(manifest, cache, classes, SPLIT, EvaluateConfig(), SubmissionConfig())
    stages = (create_pipeline("fruits").from_nodes("fruits.train_model")
              .to_nodes("fruits.evaluate_predictions", "fruits.make_submission"))
    assert {n.name for n in stages.nodes} == {"fruits.train_model", "fruits.predict",
                                              "fruits.evaluate_predictions", "fruits.make_submission"}
    catalog = DataCatalog({
        "fruits.raw_images": MemoryDataset(raw), "fruits.manifest": MemoryDataset(manifest),
        "fruits.class_names": MemoryDataset(classes), "fruits.image_cache": MemoryDataset(cache, copy_mode="assign"),
        "fruits.data_report": MemoryDataset(report), "fruits.checkpoint": MemoryDataset(tmp_path / "checkpoint.pt"),
        "params:fruits.model": MemoryDataset(MODEL), "params:fruits.images": MemoryDataset(IMAGES),
        "params:fruits.train": MemoryDataset(dataclasses.replace(TRAIN, epochs=1)),
        "params:fruits.compute": MemoryDataset(CPU),
        "fruits.lr_find_reports": MemoryDataset(None), "params:fruits.lr_find": MemoryDataset(LRFindConfig()),
        "params:fruits.evaluate": MemoryDataset(EvaluateConfig(subset="test")),
        "params:fruits.submission": MemoryDataset(SubmissionConfig(subset="test", id_from="path")),
    })
    SequentialRunner().run(stages, catalog)  # intermediate data is released; free outputs stay
    assert catalog.load("fruits.metrics")["images"] == 6
    assert len(catalog.load("fruits.training_history")) == 1
    submission = catalog.load("fruits.submission")
    assert sorted(submission["id"]) == sorted(manifest.loc[manifest.subset == "test", "file"])
