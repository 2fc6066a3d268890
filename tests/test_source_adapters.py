"""Source adapters on tiny made-up layouts: class folders as Kaggle nests them, and contest CSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_class_folders, make_contest_csv_layout, make_image
from vision_pipelines.config import SourceConfig
from vision_pipelines.sources import LayoutError, fetch, scan


def folders(**settings) -> SourceConfig:
    return SourceConfig(kind="local", path="unused", **settings)


@pytest.mark.parametrize("prefix", ["", "fruits-360", "fruits-360_100x100/fruits-360"])
def test_fruits_folders_found_at_any_nesting(tmp_path: Path, prefix: str) -> None:
    make_class_folders(tmp_path / prefix / "Training", ["Apple", "Kiwi"], 3)
    make_class_folders(tmp_path / prefix / "Test", ["Apple", "Kiwi"], 2)
    found = scan(tmp_path, folders(train_dir="Training", test_dir="Test"))
    assert found.class_names == ["Apple", "Kiwi"]
    assert found.images["origin"].value_counts().to_dict() == {"train": 6, "test": 4}
    assert all(f.startswith(f"{prefix}/Training/".lstrip("/")) for f in
               found.images.loc[found.images["origin"] == "train", "file"])


def test_intel_layout_nested_twice_with_unlabelled_predictions(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "seg_train" / "seg_train", ["forest", "sea"], 3)
    make_class_folders(tmp_path / "seg_test" / "seg_test", ["forest", "sea"], 1)
    for n in range(4):
        make_image(tmp_path / "seg_pred" / "seg_pred" / f"{n}.jpg", 0, seed=n)
    found = scan(tmp_path, folders(train_dir="seg_train", test_dir="seg_test", predict_dir="seg_pred"))
    assert found.class_names == ["forest", "sea"]
    assert found.images["origin"].value_counts().to_dict() == {"train": 6, "predict": 4, "test": 2}
    predict = found.images[found.images["origin"] == "predict"]
    assert predict["label"].isna().all()


def test_garbage_wrappers_are_unwrapped_and_litter_ignored(tmp_path: Path) -> None:
    inner = tmp_path / "Garbage classification" / "Garbage classification"
    make_class_folders(inner, ["glass", "metal", "paper"], 2)
    (tmp_path / "zero-indexed-files.txt").write_text("glass1.jpg 0\n")
    make_image(tmp_path / "__MACOSX" / "Garbage classification" / "._glass1.jpg", 0)
    (inner / "glass" / "notes.txt").write_text("not an image")
    for settings in ({}, {"train_dir": "Garbage classification"}):
        found = scan(tmp_path, folders(**settings))
        assert found.class_names == ["glass", "metal", "paper"]
        assert len(found.images) == 6
        assert found.skipped["reason"].tolist() == ["not an image file (notes.txt)"]


def test_missing_test_folder_is_named(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Training", ["a", "b"], 2)
    with pytest.raises(LayoutError, match="no folder named 'Test'"):
        scan(tmp_path, folders(train_dir="Training", test_dir="Test"))


def test_empty_class_folder_is_reported_not_a_class(tmp_path: Path) -> None:
    make_class_folders(tmp_path, ["a", "b"], 2)
    (tmp_path / "empty").mkdir()
    found = scan(tmp_path, folders())
    assert found.class_names == ["a", "b"]
    assert "empty class folder" in found.skipped["reason"].tolist()


def test_single_class_is_a_clear_error(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Training", ["only"], 3)
    with pytest.raises(LayoutError, match="at least 2"):
        scan(tmp_path, folders(train_dir="Training"))


def test_contest_csv_layout(tmp_path: Path) -> None:
    make_contest_csv_layout(tmp_path, classes=3, train_per_class=2, test=3)
    source = SourceConfig(kind="local", path="unused", layout="csv", train_csv="train*/train.csv",
                          test_csv="test*/test.csv", class_names=["top", "trouser", "pullover"])
    found = scan(tmp_path, source)
    assert found.class_names == ["top", "trouser", "pullover"]
    train = found.images[found.images["origin"] == "train"]
    assert train["label"].tolist() == ["top"] * 2 + ["trouser"] * 2 + ["pullover"] * 2
    predict = found.images[found.images["origin"] == "predict"]
    assert predict["file"].tolist() == [f"test_CD/test/{i}.png" for i in (7, 8, 9)]  # test.csv order


def test_contest_csv_bad_rows_are_skipped_with_reasons(tmp_path: Path) -> None:
    make_contest_csv_layout(tmp_path, classes=2, train_per_class=2, test=1)
    csv = tmp_path / "train_AB" / "train.csv"
    csv.write_text(csv.read_text() + "99,1\n5,7\n")  # no image for id 99; label 7 is no class
    make_image(tmp_path / "train_AB" / "train" / "5.png", 0, mode="L")
    make_image(tmp_path / "train_AB" / "train" / "77.png", 0, mode="L")  # not in the CSV
    source = SourceConfig(kind="local", path="unused", layout="csv", train_csv="train*/train.csv",
                          class_names=["a", "b"])
    found = scan(tmp_path, source)
    reasons = dict(zip(found.skipped["file"], found.skipped["reason"]))
    assert reasons == {"train_AB/train/99.png": "listed in train.csv but no image file",
                       "train_AB/train/5.png": "unknown label '7'",
                       "train_AB/train/77.png": "not listed in train.csv"}
    assert len(found.images) == 4


def test_contest_csv_duplicate_ids_refused(tmp_path: Path) -> None:
    make_contest_csv_layout(tmp_path, classes=2, train_per_class=2, test=1)
    csv = tmp_path / "train_AB" / "train.csv"
    csv.write_text(csv.read_text() + "1,0\n")
    source = SourceConfig(kind="local", path="unused", layout="csv", train_csv="train*/train.csv")
    with pytest.raises(LayoutError, match="more than once"):
        scan(tmp_path, source)


def test_local_source_must_exist(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no such folder"):
        fetch(SourceConfig(kind="local", path=str(tmp_path / "nowhere")))
    assert fetch(SourceConfig(kind="local", path=str(tmp_path))) == tmp_path.resolve()
