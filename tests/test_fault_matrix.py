"""The fault matrix: each fault gives a clear error or a counted skip, and nothing already
produced is lost. (Missing Kaggle credentials and a cut download: tests/test_downloads.py.)"""

from __future__ import annotations

import io
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import DatasetError
from PIL import Image

from conftest import fast_params, make_class_folders, make_image, run_kedro
from vision_pipelines.config import ConfigError
from vision_pipelines.images import decode_image
from vision_pipelines.pipelines.image_classification import nodes
from vision_pipelines.sources import LayoutError

SOURCE = {"kind": "local", "path": "unused", "train_dir": "Training", "test_dir": "Test"}
SPLIT = {"val_fraction": 0.2, "seed": 43}
IMAGES = {"size": 16}


def dataset(root: Path, classes=("apple", "kiwi", "lime")) -> Path:
    make_class_folders(root / "Training", list(classes), 6)
    make_class_folders(root / "Test", list(classes), 2, start_seed=50)
    return root


def truncated_jpeg(path: Path) -> None:
    make_image(path, 0, (64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_FILES = {  # file written into a class folder -> reason the data report gives
    "truncated.jpg": (truncated_jpeg, "unreadable image"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "unreadable image"),
    "text.jpg": (lambda p: p.write_text("<html>not an image</html>"), "unreadable image"),
    ".DS_Store": (lambda p: p.write_bytes(b"\0\0\0\1Bud1"), "not an image file"),
    "Thumbs.db": (lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0"), "not an image file"),
    "notes.txt": (lambda p: p.write_text("shot on a phone"), "not an image file"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_skipped_and_counted(name: str, tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw")
    write, reason = BAD_FILES[name]
    write(root / "Training" / "kiwi" / name)
    manifest, classes = nodes.build_manifest(root, SOURCE, SPLIT)
    cache, report = nodes.build_image_cache(root, manifest, classes, IMAGES)
    assert report["found"] == 25 and report["used"] == 24 and report["skipped"] == 1
    assert report["skipped_files"][0]["file"] == f"Training/kiwi/{name}"
    assert report["skipped_files"][0]["reason"].startswith(reason)
    assert report["per_class"]["kiwi"]["skipped"] == 1
    assert sum(len(cache[f"{s}.labels"]) for s in ("train", "val", "test")) == 24


def test_a_run_with_every_bad_file_completes(kedro_project: Path, tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw")
    for name, (write, _) in BAD_FILES.items():
        write(root / "Training" / "lime" / name)
    run_kedro(kedro_project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(root)}))
    report = json.loads((kedro_project / "data/08_reporting/fruits/data_report.json").read_text())
    assert report["skipped"] == len(BAD_FILES)
    assert report["skipped_by_reason"] == {"unreadable image": 3, "not an image file": 3}
    assert (kedro_project / "data/07_model_output/fruits/submission.csv").is_file()


def pixel(image: Image.Image, channels: int = 3) -> np.ndarray:
    """What the cache holds for ``image``: the centre pixel after decoding."""
    buffer = io.BytesIO()
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    image.save(buffer, format=fmt)
    path = Path(tempfile.mkdtemp()) / f"image.{fmt.lower()}"
    path.write_bytes(buffer.getvalue())
    array, _, _ = decode_image(path, 8, channels)
    return array[:, 4, 4]


def test_grey_becomes_three_equal_channels() -> None:
    assert pixel(Image.new("L", (10, 10), 77)).tolist() == [77, 77, 77]


def test_transparent_rgba_is_shown_on_white() -> None:
    assert pixel(Image.new("RGBA", (10, 10), (255, 0, 0, 0))).tolist() == [255, 255, 255]
    assert pixel(Image.new("RGBA", (10, 10), (255, 0, 0, 255))).tolist() == [255, 0, 0]


def test_palette_image_is_expanded() -> None:
    palette = Image.new("RGB", (10, 10), (0, 0, 255)).convert("P")
    assert pixel(palette).tolist() == [0, 0, 255]


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    red = pixel(Image.new("CMYK", (10, 10), (0, 255, 255, 0)))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_16_bit_png_is_scaled_not_clipped() -> None:
    grey16 = Image.fromarray(np.full((10, 10), 32768, dtype=np.uint16))
    assert pixel(grey16, channels=1).tolist() == [127]


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: Path) -> None:
    """Stored sideways with the left half white and EXIF orientation 6 (rotate 90° clockwise):
    upright, the white half is on top."""
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    array, original_size, _ = decode_image(tmp_path / "phone.jpg", 16, 3)
    assert original_size == (32, 16)
    assert array[:, :6].mean() > 200 and array[:, 10:].mean() < 50  # top white, bottom black


def test_empty_class_folder_is_not_a_class(tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw")
    (root / "Training" / "melon").mkdir()
    manifest, classes = nodes.build_manifest(root, SOURCE, SPLIT)
    assert classes == ["apple", "kiwi", "lime"]
    assert "empty class folder" in manifest["reason"].tolist()


def test_class_only_in_test_is_skipped_with_reason(tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw")
    make_class_folders(root / "Test", ["melon"], 2)
    manifest, classes = nodes.build_manifest(root, SOURCE, SPLIT)
    melon = manifest[manifest["label"] == "melon"]
    assert "melon" not in classes and len(melon) == 2
    assert set(melon["subset"]) == {"skipped"} and set(melon["reason"]) == {"class not in the training set"}


def test_single_class_dataset_is_a_clear_error(tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw", classes=("apple",))
    with pytest.raises(LayoutError, match="a classifier needs at least 2"):
        nodes.build_manifest(root, SOURCE, SPLIT)


def test_class_names_with_spaces_unicode_and_dots_travel_end_to_end(kedro_project: Path, tmp_path: Path) -> None:
    names = ("Apple Red 1", "Pomme de terre — déjà vu", "v1.2 banana")
    root = dataset(tmp_path / "raw", classes=names)
    run_kedro(kedro_project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(root)}))
    card = json.loads((kedro_project / "data/06_models/fruits/model_card.json").read_text(encoding="utf-8"))
    assert card["class_names"] == sorted(names)
    submission = (kedro_project / "data/07_model_output/fruits/submission.csv").read_text(encoding="utf-8")
    assert "Training" not in submission and len(submission.splitlines()) == 7


@pytest.fixture
def finished_run(kedro_project: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A completed run whose artifacts later failures must not lose."""
    root = dataset(tmp_path / "raw")
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(root)})
    run_kedro(kedro_project, "fruits", params)
    return kedro_project, params


def snapshot(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in (project / "data").rglob("*") if p.is_file()}


@pytest.mark.parametrize("setting, value, message", [
    ("model.name", "resnet1000", "fruits.model.name must be one of"),
    ("train.epochs", 0, "fruits.train.epochs must be a positive integer"),
    ("images.size", 4, "images.size=4 is too small for model.name=resnet9"),
    ("split.val_fraction", 1.0, "fruits.split.val_fraction must be in"),
    ("split.val_fraction", -0.1, "fruits.split.val_fraction must be in"),
])
def test_invalid_parameter_stops_the_run_before_any_work(finished_run, setting: str, value, message: str) -> None:
    project, params = finished_run
    before = snapshot(project)
    with pytest.raises(ConfigError, match=message):
        run_kedro(project, "fruits", {**params, f"fruits.{setting}": value})
    assert snapshot(project) == before


def test_unwritable_output_folder_stops_the_run_before_training(finished_run) -> None:
    project, params = finished_run
    reporting = project / "data/08_reporting/fruits"
    kept = snapshot(project)
    # A file where the folder should be: unwritable even for root, which ignores permissions.
    moved = reporting.with_name("fruits.previous")
    reporting.rename(moved)
    reporting.write_text("not a folder")
    before = snapshot(project)
    with pytest.raises(PermissionError, match="08_reporting/fruits is not writable"):
        run_kedro(project, "fruits", {**params, "fruits.train.epochs": 2})
    assert snapshot(project) == before
    assert kept["data/06_models/fruits/model.safetensors"] == before["data/06_models/fruits/model.safetensors"]


class Payload:
    """Unpickling this would create ``marker``: a model file must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tampered_checkpoint_is_refused_never_executed(finished_run, tmp_path: Path) -> None:
    project, params = finished_run
    marker = tmp_path / "code_was_executed"
    checkpoint = project / "data/06_models/fruits/checkpoint.pt"
    torch.save({"epoch": 1, "model": Payload(marker)}, checkpoint, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    run_kedro(project, "fruits", params)  # warns, trains from scratch
    assert not marker.exists()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3  # replaced by a clean one


def test_tampered_model_file_is_refused_at_load(finished_run) -> None:
    project, params = finished_run
    weights = project / "data/06_models/fruits/model.safetensors"
    weights.write_bytes(pickle.dumps({"not": "safetensors"}))
    with pytest.raises(DatasetError, match="model_weights"):
        run_kedro(project, "fruits", params, tags=["evaluate"])
