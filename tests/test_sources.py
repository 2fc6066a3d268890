"""Per-source adapter tests: each dataset's real layout, rebuilt from a few tiny made-up images.

Class folders (Fruits-360, Intel, Garbage, CIFAR-10 exports) and the contest CSV layout
(apparel), with the litter real archives carry, plus ``fetch`` of a local folder.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import make_class_folders, make_image
from vision_pipelines.config import SourceConfig
from vision_pipelines.sources import LayoutError, fetch, scan


def folders(**settings) -> SourceConfig:
    return SourceConfig(kind="local", path="unused", **settings)


def contest_csv(**settings) -> SourceConfig:
    defaults = {"layout": "csv", "train_csv": "train*/train.csv", "test_csv": "test*/test.csv"}
    return SourceConfig(kind="local", path="unused", **{**defaults, **settings})


def by_origin(found, origin: str) -> pd.DataFrame:
    return found.images[found.images["origin"] == origin]


def skip_reasons(found) -> dict[str, str]:
    return dict(zip(found.skipped["file"], found.skipped["reason"]))


# --- class folders ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["fruits-360", "x/fruits-360"])
def test_fruits360_nested_one_or_two_levels(tmp_path: Path, prefix: str) -> None:
    classes = ["Apple Red 1", "Banana", "Kiwi"]
    make_class_folders(tmp_path / prefix / "Training", classes, 3)
    make_class_folders(tmp_path / prefix / "Test", classes, 2, start_seed=50)
    # macOS archive litter at the same depth, sorting before the real folders: never used
    litter = tmp_path / "__MACOSX" / prefix.split("/", 1)[-1]
    make_image(litter / "Training" / "Ghost" / "._0.jpg", 0)
    make_image(litter / "Test" / "Ghost" / "._0.jpg", 0)

    found = scan(tmp_path, folders(train_dir="Training", test_dir="Test"))

    assert found.class_names == classes
    assert found.images["origin"].value_counts().to_dict() == {"train": 9, "test": 6}
    assert not found.images["file"].str.contains("__MACOSX").any()
    train, test = by_origin(found, "train"), by_origin(found, "test")
    assert train["file"].str.startswith(f"{prefix}/Training/").all()
    assert test["file"].str.startswith(f"{prefix}/Test/").all()
    # every image is labelled with its class folder's name
    assert (found.images["label"] == found.images["file"].map(lambda f: Path(f).parent.name)).all()
    assert found.skipped.empty


def test_intel_nested_twice_with_unlabelled_predict_folder(tmp_path: Path) -> None:
    classes = ["buildings", "forest", "sea"]
    make_class_folders(tmp_path / "seg_train" / "seg_train", classes, 3)
    make_class_folders(tmp_path / "seg_test" / "seg_test", classes, 1, start_seed=70)
    for n in (3, 1, 2):
        make_image(tmp_path / "seg_pred" / "seg_pred" / f"{n}.jpg", n, seed=n)

    found = scan(tmp_path, folders(train_dir="seg_train", test_dir="seg_test", predict_dir="seg_pred"))

    assert found.class_names == classes  # "seg_train" is a wrapper, never a class
    assert found.images["origin"].value_counts().to_dict() == {"train": 9, "test": 3, "predict": 3}
    assert by_origin(found, "train")["file"].str.startswith("seg_train/seg_train/").all()
    assert by_origin(found, "test")["label"].tolist() == classes
    predict = by_origin(found, "predict")
    assert predict["file"].tolist() == [f"seg_pred/seg_pred/{n}.jpg" for n in (1, 2, 3)]
    assert predict["label"].isna().all()


@pytest.mark.parametrize("train_dir", [None, "Garbage classification"])
def test_garbage_wrapped_twice_beside_kaggle_txt_files(tmp_path: Path, train_dir: str | None) -> None:
    classes = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    make_class_folders(tmp_path / "Garbage classification" / "Garbage classification", classes, 2)
    for name in ("zero-indexed-files.txt", "one-indexed-files.txt", "one-indexed-files-notrash_train.txt"):
        (tmp_path / name).write_text("glass1.jpg 1\n")

    found = scan(tmp_path, folders(train_dir=train_dir))

    assert found.class_names == classes
    assert len(by_origin(found, "train")) == 12
    assert found.images["file"].str.startswith("Garbage classification/Garbage classification/").all()
    assert not found.images["file"].str.endswith(".txt").any()
    assert found.skipped.empty


def test_cifar10_train_and_test_class_folders(tmp_path: Path) -> None:
    classes = ["airplane", "automobile", "bird"]
    make_class_folders(tmp_path / "train", classes, 2, extension=".png")
    make_class_folders(tmp_path / "test", classes, 1, extension=".png", start_seed=9)

    found = scan(tmp_path, folders(train_dir="train", test_dir="test"))

    assert found.class_names == classes
    test = by_origin(found, "test").sort_values("file")
    assert test["file"].tolist() == [f"test/{c}/0.png" for c in classes]
    assert test["label"].tolist() == classes


@pytest.mark.parametrize("missing, settings", [
    ("Test", {"train_dir": "Training", "test_dir": "Test"}),
    ("seg_pred", {"train_dir": "Training", "predict_dir": "seg_pred"}),
    ("Train", {"train_dir": "Train"}),  # "Training" exists, but a name must match exactly
])
def test_a_missing_configured_folder_is_named(tmp_path: Path, missing: str, settings: dict) -> None:
    make_class_folders(tmp_path / "fruits-360" / "Training", ["a", "b"], 2)
    with pytest.raises(LayoutError, match=f"no folder named '{missing}' within 3 levels"):
        scan(tmp_path, folders(**settings))


def test_macosx_litter_beside_an_unnamed_wrapper_is_ignored(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "dataset", ["cat", "dog"], 2)
    make_image(tmp_path / "__MACOSX" / "dataset" / "cat" / "._0.jpg", 0)
    make_image(tmp_path / "dataset" / "__MACOSX" / "cat" / "._1.jpg", 0)

    found = scan(tmp_path, folders())

    assert found.class_names == ["cat", "dog"]  # "dataset" unwrapped; "__MACOSX" is no class
    assert sorted(found.images["file"]) == ["dataset/cat/0.jpg", "dataset/cat/1.jpg",
                                            "dataset/dog/0.jpg", "dataset/dog/1.jpg"]


def test_non_image_files_are_skipped_with_their_reason(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Training", ["a", "b"], 2)
    make_image(tmp_path / "Training" / "a" / "UPPER.JPG", 0)  # extensions are case-insensitive
    (tmp_path / "Training" / "a" / "Thumbs.db").write_bytes(b"\0\1")
    (tmp_path / "Training" / "b" / "notes.txt").write_text("not an image")
    make_image(tmp_path / "Training" / "b" / "._0.jpg", 1)  # AppleDouble metadata, not a photo
    (tmp_path / "Training" / "empty").mkdir()

    found = scan(tmp_path, folders(train_dir="Training"))

    assert found.class_names == ["a", "b"]
    assert "Training/a/UPPER.JPG" in found.images["file"].tolist()
    assert len(found.images) == 5
    assert skip_reasons(found) == {
        "Training/a/Thumbs.db": "not an image file (Thumbs.db)",
        "Training/b/notes.txt": "not an image file (notes.txt)",
        "Training/b/._0.jpg": "not an image file (._0.jpg)",
        "Training/empty/": "empty class folder",
    }


def test_a_single_class_or_no_images_is_refused(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "one" / "Training", ["only"], 2)
    with pytest.raises(LayoutError, match="at least 2"):
        scan(tmp_path / "one", folders(train_dir="Training"))
    (tmp_path / "none" / "Training" / "a").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no training images"):
        scan(tmp_path / "none", folders(train_dir="Training"))


# --- contest CSV (apparel) --------------------------------------------------------------------


def write_csv_layout(root: Path, train_rows: list[tuple[str, str]], test_ids: list[str],
                     train_images: list[str] | None = None, test_images: list[str] | None = None) -> Path:
    """``train_X/train.csv`` (id,label) + ``train_X/train/<id>.png``; ``test_Y/test.csv`` (id)."""
    lines = ["id,label"] + [f"{i},{label}" for i, label in train_rows]
    (root / "train_X").mkdir(parents=True)
    (root / "train_X" / "train.csv").write_text("\n".join(lines) + "\n")
    for n, image_id in enumerate(train_images if train_images is not None else [i for i, _ in train_rows]):
        make_image(root / "train_X" / "train" / f"{image_id}.png", n, (8, 8), "L", seed=n)
    (root / "test_Y").mkdir()
    (root / "test_Y" / "test.csv").write_text("\n".join(["id", *test_ids]) + "\n")
    for n, image_id in enumerate(test_images if test_images is not None else test_ids):
        make_image(root / "test_Y" / "test" / f"{image_id}.png", n, (8, 8), "L", seed=n)
    return root


NAMES = ["T-shirt/top", "Trouser", "Pullover"]


def test_csv_labels_are_mapped_through_class_names(tmp_path: Path) -> None:
    write_csv_layout(tmp_path, [("1", "0"), ("2", "2"), ("3", "1"), ("4", "Trouser"), ("5", "2")], ["6"])

    found = scan(tmp_path, contest_csv(class_names=NAMES))

    assert found.class_names == NAMES  # the configured order is the model's output order
    train = by_origin(found, "train")
    assert dict(zip(train["file"], train["label"])) == {
        "train_X/train/1.png": "T-shirt/top", "train_X/train/2.png": "Pullover",
        "train_X/train/3.png": "Trouser", "train_X/train/4.png": "Trouser",
        "train_X/train/5.png": "Pullover"}
    assert found.skipped.empty


def test_csv_rows_that_cannot_be_trusted_are_skipped_with_reasons(tmp_path: Path) -> None:
    write_csv_layout(tmp_path, [("1", "0"), ("2", "1"), ("3", "7"), ("4", "Jacket"), ("5", "1"), ("6", "0")],
                     ["20", "21"], train_images=["1", "2", "3", "4", "6", "99"], test_images=["20", "21", "22"])

    found = scan(tmp_path, contest_csv(class_names=NAMES))

    assert skip_reasons(found) == {
        "train_X/train/3.png": "unknown label '7'",  # index beyond the class names
        "train_X/train/4.png": "unknown label 'Jacket'",
        "train_X/train/5.png": "listed in train.csv but no image file",
        "train_X/train/99.png": "not listed in train.csv",
        "test_Y/test/22.png": "not listed in test.csv",
    }
    assert sorted(by_origin(found, "train")["file"]) == [f"train_X/train/{i}.png" for i in (1, 2, 6)]
    assert len(by_origin(found, "predict")) == 2


def test_csv_id_listed_twice_is_refused(tmp_path: Path) -> None:
    write_csv_layout(tmp_path, [("1", "0"), ("2", "1"), ("1", "1")], ["3"], train_images=["1", "2"])
    with pytest.raises(LayoutError, match=r"train\.csv lists 1 id\(s\) more than once, e\.g\. \['1'\]"):
        scan(tmp_path, contest_csv(class_names=NAMES))


def test_csv_test_rows_become_predict_images_in_csv_order(tmp_path: Path) -> None:
    write_csv_layout(tmp_path, [("1", "0"), ("2", "1")], ["10", "9", "30", "11"])

    found = scan(tmp_path, contest_csv(class_names=NAMES))

    predict = by_origin(found, "predict")
    assert predict["file"].tolist() == [f"test_Y/test/{i}.png" for i in ("10", "9", "30", "11")]
    assert predict["label"].isna().all()


def test_csv_without_class_names_keeps_numeric_labels_in_numeric_order(tmp_path: Path) -> None:
    """Integer labels 0..11 without configured names: output i must be label i, not "10" at 2."""
    write_csv_layout(tmp_path, [(str(i + 1), str(i)) for i in range(12)], ["50"])

    found = scan(tmp_path, contest_csv())

    assert found.class_names == [str(i) for i in range(12)]


def test_csv_missing_label_column_is_named(tmp_path: Path) -> None:
    write_csv_layout(tmp_path, [("1", "0"), ("2", "1")], ["3"])
    with pytest.raises(LayoutError, match=r"no column\(s\) \['category'\]"):
        scan(tmp_path, contest_csv(class_names=NAMES, label_column="category"))


# --- fetch ------------------------------------------------------------------------------------


def test_fetch_local_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"source\.path=.*nowhere: no such folder"):
        fetch(SourceConfig(kind="local", path=str(tmp_path / "nowhere")))
    (tmp_path / "a_file.zip").write_bytes(b"PK")
    with pytest.raises(LayoutError, match="no such folder"):
        fetch(SourceConfig(kind="local", path=str(tmp_path / "a_file.zip")))
    (tmp_path / "images").mkdir()
    assert fetch(SourceConfig(kind="local", path=str(tmp_path / "images" / ".." / "images"))) == \
        (tmp_path / "images").resolve()


def test_scan_of_a_missing_root_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        scan(tmp_path / "gone", folders())
