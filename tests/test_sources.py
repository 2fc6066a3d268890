"""Per-source adapter tests: each dataset's real layout, rebuilt from a few tiny made-up images.

Class folders (Fruits-360, Intel, Garbage, CIFAR-10 exports) and the contest CSV layout
(apparel), with the litter real archives carry, plus ``fetch`` of a local folder; then what
is never read (links, names that are not UTF-8, CSV rows that lead elsewhere) and
``list_images``, which lists a folder for prediction by the same rules.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_class_folders, make_image
from vision_pipelines import reporting
from vision_pipelines.config import SourceConfig, SplitConfig
from vision_pipelines.pipelines.image_classification import nodes
from vision_pipelines.sources import LayoutError, fetch, list_images, scan
from vision_pipelines.sources.layouts import Found


def folders(**settings) -> SourceConfig:
    return SourceConfig(kind="local", path="unused", **settings)


def contest_csv(**settings) -> SourceConfig:
    defaults = {"layout": "csv", "train_csv": "train*/train.csv", "test_csv": "test*/test.csv"}
    return SourceConfig(kind="local", path="unused", **{**defaults, **settings})


def by_origin(found, origin: str) -> pd.DataFrame:
    return found.images[found.images["origin"] == origin]


def skip_reasons(found) -> dict[str, str]:
    return dict(zip(found.skipped["file"], found.skipped["reason"]))


def test_found_keeps_rows_and_skipped_files_in_the_order_found(tmp_path: Path) -> None:
    found = Found()
    found.add("train/a/1.png", "a", "train")
    found.skip_path(tmp_path / "train" / "bad\udcff", tmp_path, "a", "folder name is not valid UTF-8", folder=True)
    found.skip("train.csv row 3", None, "empty id")
    found.add("test/2.png", None, "predict")
    result = found.scan(["a", "b"])
    images, skipped = (frame.where(frame.notna(), None) for frame in (result.images, result.skipped))
    assert images.to_dict("records") == [{"file": "train/a/1.png", "label": "a", "origin": "train"},
                                                {"file": "test/2.png", "label": None, "origin": "predict"}]
    assert skipped.to_dict("records") == [
        {"file": "train/bad\\xff/", "label": "a", "reason": "folder name is not valid UTF-8"},
        {"file": "train.csv row 3", "label": None, "reason": "empty id"}]
    assert result.class_names == ["a", "b"]
    nothing = Found().scan([])
    assert list(nothing.images.columns) == ["file", "label", "origin"] and nothing.skipped.empty


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
        fetch(SourceConfig(kind="local", path=str(tmp_path / "nowhere")), tmp_path / "dl")
    (tmp_path / "a_file.zip").write_bytes(b"PK")
    with pytest.raises(LayoutError, match="no such folder"):
        fetch(SourceConfig(kind="local", path=str(tmp_path / "a_file.zip")), tmp_path / "dl")
    (tmp_path / "images").mkdir()
    assert fetch(SourceConfig(kind="local", path=str(tmp_path / "images" / ".." / "images")), tmp_path / "dl") == \
        (tmp_path / "images").resolve()


def test_scan_of_a_missing_root_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        scan(tmp_path / "gone", folders())


# --- links: nothing outside the dataset is listed or read -------------------------------------

FOLDER_LINK = "link to a folder (links to folders are not followed)"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A folder outside the dataset, standing in for /etc: its names must appear nowhere."""
    make_image(tmp_path / "host" / "secret_passwd.jpg", 0)
    make_image(tmp_path / "host" / "nested" / "secret_shadow.png", 1)
    return tmp_path / "host"


def everything_listed(found) -> str:
    return " ".join(map(str, [*found.images["file"], *found.skipped["file"], *found.skipped["reason"]]))


def test_links_to_folders_are_never_followed(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root / "Training", ["a", "b"], 2)
    (root / "Training" / "etc").symlink_to(host)  # would list the host's file names
    (root / "Training" / "itself").symlink_to(".")  # would be a class holding copies of a and b
    (root / "Training" / "a" / "more_b").symlink_to("../b")  # would list b's images as a's
    (root / "Training" / "b" / "loop").symlink_to("..")  # a loop

    found = scan(root, folders(train_dir="Training"))

    assert found.class_names == ["a", "b"]
    assert sorted(found.images["file"]) == ["Training/a/0.jpg", "Training/a/1.jpg", "Training/b/0.jpg",
                                            "Training/b/1.jpg"]
    assert skip_reasons(found) == {"Training/etc/": FOLDER_LINK, "Training/itself/": FOLDER_LINK,
                                   "Training/a/more_b/": FOLDER_LINK, "Training/b/loop/": FOLDER_LINK}
    assert "secret" not in everything_listed(found)


def test_a_link_to_the_root_at_the_root_is_no_class(tmp_path: Path, host: Path) -> None:
    make_class_folders(tmp_path / "data", ["cat", "dog"], 2)
    (tmp_path / "data" / "zz_all").symlink_to(".")
    (tmp_path / "data" / "etc").symlink_to(host)

    found = scan(tmp_path / "data", folders())

    assert found.class_names == ["cat", "dog"]
    assert len(found.images) == 4
    assert skip_reasons(found) == {"zz_all/": FOLDER_LINK, "etc/": FOLDER_LINK}


def test_file_links_are_read_only_when_they_resolve_inside_the_dataset(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root / "Training", ["a", "b"], 2)
    a = root / "Training" / "a"
    (a / "same_as_b0.jpg").symlink_to("../b/0.jpg")  # inside: read, labelled by its own folder
    (a / "passwd.jpg").symlink_to(host / "secret_passwd.jpg")
    (a / "gone.jpg").symlink_to("nowhere.jpg")
    (a / "ping.jpg").symlink_to("pong.jpg")
    (a / "pong.jpg").symlink_to("ping.jpg")
    os.mkfifo(a / "pipe.jpg")  # reading it would block forever

    found = scan(root, folders(train_dir="Training"))

    assert dict(zip(found.images["file"], found.images["label"]))["Training/a/same_as_b0.jpg"] == "a"
    assert skip_reasons(found) == {
        "Training/a/passwd.jpg": "link outside the dataset",
        "Training/a/gone.jpg": "broken link",
        "Training/a/ping.jpg": "broken link",
        "Training/a/pong.jpg": "broken link",
        "Training/a/pipe.jpg": "not a regular file",
    }
    assert "secret" not in everything_listed(found)


def test_the_root_itself_may_be_a_link(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "real" / "Training", ["a", "b"], 2)
    (tmp_path / "raw").symlink_to(tmp_path / "real")  # as data/01_raw/<dataset> links to a download
    (tmp_path / "real" / "Training" / "a" / "twin.jpg").symlink_to(tmp_path / "raw" / "Training" / "b" / "0.jpg")

    found = scan(tmp_path / "raw", folders(train_dir="Training"))

    assert found.class_names == ["a", "b"]
    assert "Training/a/twin.jpg" in found.images["file"].tolist()  # resolves inside the root's target
    assert found.skipped.empty


def test_a_configured_folder_that_is_a_link_is_refused_by_name(tmp_path: Path, host: Path) -> None:
    make_class_folders(tmp_path / "data" / "Training", ["a", "b"], 2)
    (tmp_path / "data" / "Test").symlink_to(host)
    with pytest.raises(LayoutError, match="'Test' under .* is a link to a folder .*not followed"):
        scan(tmp_path / "data", folders(train_dir="Training", test_dir="Test"))
    with pytest.raises(LayoutError, match="no folder named 'nested'"):  # never searched through the link
        scan(tmp_path / "data", folders(train_dir="Training", test_dir="nested"))


def test_a_csv_or_image_folder_reached_through_a_link_is_never_read(tmp_path: Path) -> None:
    outside = write_csv_layout(tmp_path / "elsewhere", [("1", "0"), ("2", "1")], ["3"])
    root = tmp_path / "data"
    root.mkdir()
    (root / "train_X").symlink_to(outside / "train_X")
    with pytest.raises(LayoutError, match="no file matching 'train\\*/train.csv'"):
        scan(root, contest_csv(class_names=NAMES))
    (root / "train_X").unlink()
    (root / "train_X").mkdir()
    (root / "train_X" / "train.csv").write_text("id,label\n1,0\n")
    (root / "train_X" / "train").symlink_to(outside / "train_X" / "train")
    with pytest.raises(LayoutError, match="is a link or lies outside"):
        scan(root, contest_csv(class_names=NAMES, test_csv=None))


# --- names that are not UTF-8 ------------------------------------------------------------------


def write_bytes_named(folder: Path, name: bytes, data: bytes) -> None:
    """A file whose name is raw bytes (not necessarily UTF-8), as foreign archives produce."""
    descriptor = os.open(os.fsencode(folder) + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(descriptor, data)
    os.close(descriptor)


def test_names_that_are_not_utf8_are_skipped_and_the_manifest_saves(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data" / "Training", ["a", "b", "c"], 3).parent
    image = (root / "Training" / "a" / "0.jpg").read_bytes()
    write_bytes_named(root / "Training" / "a", b"bad\xff.jpg", image)
    os.mkdir(os.fsencode(root / "Training") + b"/caf\xe9")  # Latin-1 "café"
    write_bytes_named(root / "Training" / "a", b"../caf\xe9/0.jpg", image)
    write_bytes_named(root / "Training" / "a", b"../caf\xe9/1.jpg", image)

    manifest, classes = nodes.build_manifest(root, folders(train_dir="Training"), SplitConfig(val_fraction=0.2))
    manifest.to_parquet(tmp_path / "manifest.parquet")  # Arrow stores text: no UnicodeEncodeError

    assert classes == ["a", "b", "c"]
    skipped = manifest[manifest["subset"] == "skipped"].set_index("file")["reason"].to_dict()
    assert skipped == {"Training/a/bad\\xff.jpg": "file name is not valid UTF-8",
                       "Training/caf\\xe9/": "folder name is not valid UTF-8 (2 file(s) in it not used)"}
    assert (manifest["subset"] != "skipped").sum() == 9
    assert pd.read_parquet(tmp_path / "manifest.parquet")["file"].tolist() == manifest["file"].tolist()


# --- contest CSV rows that cannot be trusted -----------------------------------------------------


def test_csv_ids_that_are_not_plain_file_names_are_skipped_and_counted(tmp_path: Path) -> None:
    write_csv_layout(tmp_path, [("1", "0"), ("2", "1"), ("3", "2"), ("/etc/passwd", "1"), ("../test/7", "0"),
                                ("..\\..\\boot", "2"), ("", "1")],
                     ["7"], train_images=["1", "2", "3"])

    manifest, classes = nodes.build_manifest(tmp_path, contest_csv(class_names=NAMES), SplitConfig(val_fraction=0.5))

    skipped = manifest[manifest["subset"] == "skipped"].set_index("file")["reason"].to_dict()
    assert skipped == {
        "train_X/train.csv row 4": "not a plain file name (id '/etc/passwd')",
        "train_X/train.csv row 5": "not a plain file name (id '../test/7')",
        "train_X/train.csv row 6": "not a plain file name (id '..\\\\..\\\\boot')",
        "train_X/train.csv row 7": "empty id",
    }
    assert manifest["subset"].isin(["train", "val"]).sum() == 3 and (manifest["subset"] == "predict").sum() == 1
    report = reporting.data_report(manifest, pd.DataFrame(columns=["file", "reason"]), classes)
    assert report["skipped"] == 4
    assert report["skipped_by_reason"] == {"not a plain file name": 3, "empty id": 1}


@pytest.mark.parametrize("class_names", [NAMES, None])
def test_csv_labels_written_as_floats_read_as_integers(tmp_path: Path, class_names) -> None:
    """Labels saved through a float column (pandas, spreadsheets) read 6.0: they are label 6."""
    rows = [("1", "0.0"), ("2", "2.0"), ("3", "1.0"), ("4", "1"), ("5", "02")]
    write_csv_layout(tmp_path, rows + ([("6", "1.5")] if class_names else []), ["9"])

    found = scan(tmp_path, contest_csv(class_names=class_names))

    names = class_names or ["0", "1", "2"]
    assert found.class_names == names
    train = by_origin(found, "train")
    assert dict(zip(train["file"], train["label"])) == {
        "train_X/train/1.png": names[0], "train_X/train/2.png": names[2], "train_X/train/3.png": names[1],
        "train_X/train/4.png": names[1], "train_X/train/5.png": names[2]}
    if class_names:
        assert skip_reasons(found) == {"train_X/train/6.png": "unknown label '1.5'"}


# --- list_images: a folder to predict, by the same rules ----------------------------------------


def test_list_images_of_a_folder_follows_the_dataset_rules(tmp_path: Path, host: Path) -> None:
    folder = tmp_path / "to_predict"
    make_image(folder / "b.jpg", 0)
    make_image(folder / "day 1" / "a.PNG", 1)
    make_image(folder / "__MACOSX" / "._b.jpg", 0)
    (folder / "notes.txt").write_text("not an image")
    (folder / "etc").symlink_to(host)
    (folder / "passwd.jpg").symlink_to(host / "secret_passwd.jpg")
    (folder / "again.jpg").symlink_to("b.jpg")
    write_bytes_named(folder, b"bad\xff.jpg", (folder / "b.jpg").read_bytes())
    (tmp_path / "link").symlink_to(folder)  # the folder given may itself be a link

    files, skipped = list_images(tmp_path / "link")

    assert [f.relative_to(folder).as_posix() for f in files] == ["again.jpg", "b.jpg", "day 1/a.PNG"]
    assert all(f.is_file() for f in files)
    assert sorted(skipped) == [("bad\\xff.jpg", "file name is not valid UTF-8"), ("etc/", FOLDER_LINK),
                               ("notes.txt", "not an image file (notes.txt)"),
                               ("passwd.jpg", "link outside the dataset")]


def test_list_images_of_a_single_file(tmp_path: Path) -> None:
    image = make_image(tmp_path / "photo.jpeg", 0)
    assert list_images(image) == ([image], [])
    (tmp_path / "notes.txt").write_text("hello")
    assert list_images(tmp_path / "notes.txt") == ([], [("notes.txt", "not an image file (notes.txt)")])
    write_bytes_named(tmp_path, b"caf\xe9.jpg", image.read_bytes())
    assert list_images(Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.jpg"))) == \
        ([], [("caf\\xe9.jpg", "file name is not valid UTF-8")])
    with pytest.raises(LayoutError, match="neither an image file nor a folder"):
        list_images(tmp_path / "missing.jpg")
