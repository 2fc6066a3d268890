"""The fault matrix: each fault gives a clear error or a counted skip, and nothing already
produced is lost: bad files, odd image modes, odd class folders, missing Kaggle credentials, a
download cut off half-way, invalid parameters, an unwritable output folder, tampered model files.

(tests/test_downloads.py covers the download code paths themselves in more detail.)"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import DatasetError
import torchvision
from PIL import Image

from conftest import fast_params, make_class_folders, make_image, make_project, run_kedro
from vision_pipelines.config import ConfigError
from vision_pipelines.images import decode_image
from vision_pipelines.pipelines.image_classification import nodes
from vision_pipelines.sources import DownloadError, LayoutError
from vision_pipelines.sources.downloads import COMPLETE_MARKER

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
def test_bad_file_is_skipped_with_a_warning_and_counted(name: str, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = dataset(tmp_path / "raw")
    write, reason = BAD_FILES[name]
    write(root / "Training" / "kiwi" / name)
    caplog.set_level(logging.WARNING, logger="vision_pipelines")
    manifest, classes = nodes.build_manifest(root, SOURCE, SPLIT)
    cache, report = nodes.build_image_cache(root, manifest, classes, IMAGES)
    assert any(f"Training/kiwi/{name}" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
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
    assert report["skipped_by_class"] == {"lime": {"unreadable image": 3, "not an image file": 3}}
    lime = report["per_class"]["lime"]
    assert (lime["found"], lime["used"], lime["skipped"], lime["test"]) == (14, 8, 6, 2)
    assert report["image_sizes"]["most_common_sizes"] == {"24x24": 24}
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




# --- failures after a completed run: a clear error, and the earlier run's outputs untouched ----


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One completed run (made once per module) of the fruits pipeline on a tiny dataset."""
    base = tmp_path_factory.mktemp("finished")
    project = make_project(base / "project")
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(dataset(base / "raw"))})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        run_kedro(project, "fruits", params)
    return project, params


@pytest.fixture
def finished_run(finished_template: tuple[Path, dict], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A copy of the completed run, as the working directory: what a later failure must not lose."""
    template, params = finished_template
    project = tmp_path / "project"
    shutil.copytree(template, project, symlinks=True)  # data/01_raw/fruits stays a link to the raw data
    monkeypatch.chdir(project)
    return project, params


def snapshot(project: Path) -> dict[str, tuple[bytes, int]]:
    """Content and modification time of every output file and of the raw data behind the link.

    Modification times catch a node that ran and wrote the same bytes again.
    """
    raw = (project / "data/01_raw/fruits").resolve()
    files = {f"raw/{p.relative_to(raw)}": p for p in raw.rglob("*") if p.is_file()}
    files.update({str(p.relative_to(project)): p for p in (project / "data").rglob("*") if p.is_file()})
    return {name: (path.read_bytes(), path.stat().st_mtime_ns) for name, path in files.items()}


def raised_by_the_validation_hook(error: pytest.ExceptionInfo) -> bool:
    return any(entry.name == "before_pipeline_run" for entry in error.traceback)


@pytest.mark.parametrize("setting, value, message", [
    ("model.name", "resnet1000", "fruits.model.name must be one of"),
    ("train.epochs", 0, "fruits.train.epochs must be a positive integer, got 0"),
    ("train.epochs", -2, "fruits.train.epochs must be a positive integer, got -2"),
    ("train.epoch", 3, "fruits.train.epoch is not a known setting"),
    ("images.size", 4, "images.size=4 is too small for model.name=resnet9"),
    ("split.val_fraction", 1.0, "fruits.split.val_fraction must be in"),
    ("split.val_fraction", -0.1, "fruits.split.val_fraction must be in"),
    ("split.val_fraction", 0.0, "fruits.split.val_fraction \\+ split.test_fraction must be in \\(0, 1\\)"),
])
def test_invalid_parameter_stops_the_run_before_any_work(finished_run, setting: str, value, message: str) -> None:
    project, params = finished_run
    before = snapshot(project)
    with pytest.raises(ConfigError, match=message) as error:
        run_kedro(project, "fruits", {**params, f"fruits.{setting}": value})
    assert raised_by_the_validation_hook(error)
    assert snapshot(project) == before


def test_unwritable_output_folder_stops_the_run_before_training(finished_run) -> None:
    project, params = finished_run
    reporting = project / "data/08_reporting/fruits"
    # A file where the folder should be: unwritable even for root, which ignores permissions.
    reporting.rename(reporting.with_name("fruits.previous"))
    reporting.write_text("not a folder")
    before = snapshot(project)
    with pytest.raises(PermissionError, match="08_reporting/fruits is not writable") as error:
        run_kedro(project, "fruits", {**params, "fruits.train.epochs": 2})
    assert raised_by_the_validation_hook(error)
    assert snapshot(project) == before


def test_missing_kaggle_credentials_fail_within_seconds_without_a_prompt(finished_run, tmp_path: Path) -> None:
    """The real command, stdin closed, an empty home and no KAGGLE_* variables."""
    project, params = finished_run
    params = {**params, "fruits.source.kind": "kaggle"}
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "empty_home"), "KEDRO_DISABLE_TELEMETRY": "true"}
    before = snapshot(project)
    started = time.time()
    done = subprocess.run([str(Path(sys.executable).parent / "kedro"), "run", "--pipelines=fruits", "--env=cpu",
                           "--params=" + ",".join(f"{k}={v}" for k, v in params.items())],
                          cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "No Kaggle credentials found" in done.stdout + done.stderr
    assert time.time() - started < 30
    assert snapshot(project) == before


def test_network_failure_mid_download_keeps_no_partial_data_and_loses_nothing(
        finished_run, cut_stream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torchvision download, cut off by the server: a clear error, no half download."""
    project, params = finished_run
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [cut_stream_url])
    downloads = tmp_path / "downloads"
    earlier = downloads / "torchvision__CIFAR10"  # another dataset, downloaded before
    make_class_folders(earlier / "train", ["cat", "dog"], 2)
    (earlier / COMPLETE_MARKER).write_text("{}")
    before, earlier_files = snapshot(project), sorted(earlier.rglob("*"))
    with pytest.raises(DownloadError, match="(?s)downloading torchvision FashionMNIST failed.*127.0.0.1"):
        run_kedro(project, "fruits", {**params, "fruits.source.kind": "torchvision",
                                      "fruits.source.dataset": "FashionMNIST",
                                      "fruits.source.download_dir": str(downloads)})
    assert [p.name for p in downloads.iterdir()] == ["torchvision__CIFAR10"]  # no .partial-*, no final folder
    assert sorted(earlier.rglob("*")) == earlier_files
    assert snapshot(project) == before


class Payload:
    """Unpickling this would create ``marker``: a model file must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tampered_checkpoint_is_refused_never_executed(finished_run, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    project, params = finished_run
    marker = tmp_path / "code_was_executed"
    checkpoint = project / "data/06_models/fruits/checkpoint.pt"
    torch.save({"epoch": 1, "model": Payload(marker)}, checkpoint)
    caplog.set_level(logging.WARNING, logger="vision_pipelines.engine")
    run_kedro(project, "fruits", params)  # warns, trains from scratch
    assert not marker.exists()
    assert "checkpoint.pt is unreadable" in caplog.text and "training from scratch" in caplog.text
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3  # replaced by a clean one


def test_tampered_model_file_is_refused_at_load_never_executed(finished_run, tmp_path: Path) -> None:
    project, params = finished_run
    marker = tmp_path / "code_was_executed"
    weights = project / "data/06_models/fruits/model.safetensors"
    weights.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DatasetError, match="(?s)fruits.model_weights.*model.safetensors.*deserializ"):
        run_kedro(project, "fruits", params, tags=["evaluate"])
    assert not marker.exists()
