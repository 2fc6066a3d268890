"""The fault matrix: each fault gives a clear error or a counted skip, and nothing already
produced is lost: bad files, odd image modes, odd class folders, too few images, missing Kaggle
credentials, a download cut off half-way, invalid parameters, an unwritable output folder,
tampered or mismatched model files, a damaged or tampered image cache, a diverging training,
artifacts of different runs paired, concurrent runs, and runs interrupted (Ctrl-C, SIGTERM,
SIGKILL) at any stage.

(tests/test_downloads.py and tests/test_sources.py cover downloads and layouts in more detail;
tests/test_cache.py a cache build killed half-way and every kind of damaged cache,
tests/test_datasets.py a full disk.)"""

from __future__ import annotations

import functools
import http.server
import io
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from kedro.io import DatasetError
from PIL import Image

from conftest import (
    FOLDERS_SOURCE,
    IMAGES,
    KEDRO,
    SPLIT,
    download_entries,
    fast_params,
    latest,
    make_class_folders,
    make_folders_dataset,
    make_image,
    make_project,
    run_kedro,
    wait_until,
    write_cache,
)
from vision_pipelines.cache import CacheError
from vision_pipelines.config import ConfigError, EvaluateConfig, SubmissionConfig
from vision_pipelines.engine import TrainingDiverged
from vision_pipelines.images import decode_image
from vision_pipelines.lineage import LineageError
from vision_pipelines.model_card import ModelCardError
from vision_pipelines.pipelines.image_classification import nodes
from vision_pipelines.sources import DownloadError, LayoutError
from vision_pipelines.sources.downloads import COMPLETE_MARKER
from vision_pipelines.versions import VersionError


def dataset(root: Path, classes=("apple", "kiwi", "lime")) -> Path:
    return make_folders_dataset(root, classes, train=6, test=2)


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
    manifest, classes = nodes.build_manifest(root, FOLDERS_SOURCE, SPLIT)
    cache = write_cache(nodes.build_image_cache(root, manifest, classes, IMAGES), tmp_path / "cache")
    report = nodes.summarise_data(manifest, cache, classes, SPLIT, EvaluateConfig(), SubmissionConfig())
    assert any(f"Training/kiwi/{name}" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert report["found"] == 25 and report["used"] == 24 and report["skipped"] == 1
    assert report["skipped_files"][0]["file"] == f"Training/kiwi/{name}"
    assert report["skipped_files"][0]["reason"].startswith(reason)
    assert report["per_class"]["kiwi"]["skipped"] == 1
    assert sum(cache.count(s) for s in ("train", "val", "test")) == 24


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
    assert latest(kedro_project / "data/07_model_output/fruits/submission.csv").is_file()


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
    assert pixel(grey16, channels=1).tolist() == [128]


def float_tiff(values: np.ndarray, path: Path) -> Path:
    Image.fromarray(values.astype(np.float32), mode="F").save(path)
    return path


@pytest.mark.parametrize("low, high, expected", [(0.0, 1.0, [0, 255]), (0.0, 255.0, [0, 255]),
                                                 (-3.5, 1200.0, [0, 255]), (0.25, 0.75, [64, 191])])
def test_float_images_are_scaled_by_their_real_range(low: float, high: float, expected: list[int],
                                                     tmp_path: Path) -> None:
    """TIFF mode F: [0, 1] floats are fractions of white, [0, 255] are 8-bit values, anything
    else is stretched from its minimum to its maximum (not clipped to [0, 1])."""
    values = np.full((8, 8), low)
    values[:, 4:] = high
    array, _, mode = decode_image(float_tiff(values, tmp_path / "f.tif"), 8, 1)
    assert mode == "F" and [array[0, 0, 0], array[0, 0, 7]] == expected


def test_float_image_with_nan_is_skipped_with_a_reason(tmp_path: Path) -> None:
    path = float_tiff(np.full((8, 8), np.nan), tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="NaN or infinite"):
        decode_image(path, 8, 1)


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
    manifest, classes = nodes.build_manifest(root, FOLDERS_SOURCE, SPLIT)
    assert classes == ["apple", "kiwi", "lime"]
    assert "empty class folder" in manifest["reason"].tolist()


def test_class_only_in_test_is_skipped_with_reason(tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw")
    make_class_folders(root / "Test", ["melon"], 2)
    manifest, classes = nodes.build_manifest(root, FOLDERS_SOURCE, SPLIT)
    melon = manifest[manifest["label"] == "melon"]
    assert "melon" not in classes and len(melon) == 2
    assert set(melon["subset"]) == {"skipped"} and set(melon["reason"]) == {"class not in the training set"}


def test_single_class_dataset_is_a_clear_error(tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw", classes=("apple",))
    with pytest.raises(LayoutError, match="a classifier needs at least 2"):
        nodes.build_manifest(root, FOLDERS_SOURCE, SPLIT)


def test_class_names_with_spaces_unicode_and_dots_travel_end_to_end(kedro_project: Path, tmp_path: Path) -> None:
    names = ("Apple Red 1", "Pomme de terre — déjà vu", "v1.2 banana")
    root = dataset(tmp_path / "raw", classes=names)
    run_kedro(kedro_project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(root)}))
    card = json.loads(latest(kedro_project / "data/06_models/fruits/model_card.json").read_text(encoding="utf-8"))
    assert card["class_names"] == sorted(names)
    submission = latest(kedro_project / "data/07_model_output/fruits/submission.csv").read_text(encoding="utf-8")
    assert "Training" not in submission and len(submission.splitlines()) == 7


def test_class_names_too_long_for_mlflow_metric_names_still_leave_the_evaluation_logged(kedro_project: Path,
                                                                                       tmp_path: Path) -> None:
    """MLflow refuses a metric name over 250 characters, and with it the whole batch: fruits.accuracy
    too. Two long names alike but for their ends must stay two metrics."""
    mlflow = pytest.importorskip("mlflow")
    root = dataset(tmp_path / "raw", classes=("L" * 230 + " apple", "L" * 230 + " kiwi", "lime"))
    seed = 7240  # finds this run among the session's
    run_kedro(kedro_project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(root),
                                                                "train.seed": seed}))
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("vision-pipelines")
    (run,) = client.search_runs([experiment.experiment_id], f"params.`fruits.train.seed` = '{seed}'")
    assert {"fruits.accuracy", "fruits.macro_f1"} <= set(run.data.metrics)
    assert len([key for key in run.data.metrics if key.startswith("fruits.class_accuracy.")]) == 3


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

    Modification times catch a node that ran and wrote the same bytes again. Locks (of runs and of
    downloads) and run records (data/.runs) are bookkeeping, not outputs.
    """
    raw = (project / "data/01_raw/fruits").resolve()
    files = {f"raw/{p.relative_to(raw)}": p for p in raw.rglob("*") if p.is_file()}
    files.update({str(p.relative_to(project)): p for p in (project / "data").rglob("*")
                  if p.is_file() and p.suffix != ".lock" and not {".locks", ".runs"} & set(p.parts)})
    return {name: (path.read_bytes(), path.stat().st_mtime_ns) for name, path in files.items()}


def raised_before_any_node_ran(error: pytest.ExceptionInfo) -> bool:
    """Raised by a hook that runs before the runner starts (parameters, output folders)."""
    return any(entry.name in ("after_context_created", "before_pipeline_run") for entry in error.traceback)


@pytest.mark.parametrize("setting, value, message", [
    ("model.name", "resnet1000", "fruits.model.name must be one of"),
    ("train.epochs", 0, "fruits.train.epochs must be a positive integer, got 0"),
    ("train.epochs", -2, "fruits.train.epochs must be a positive integer, got -2"),
    ("train.epoch", 3, "fruits.train.epoch is not a known setting"),
    ("images.size", 4, "images.size=4 is too small for model.name=resnet9"),
    ("split.val_fraction", 1.0, "fruits.split.val_fraction must be in"),
    ("split.val_fraction", -0.1, "fruits.split.val_fraction must be in"),
    ("split.val_fraction", 0.0, "fruits.split.val_fraction \\+ split.test_fraction must be in \\(0, 1\\)"),
    ("train.epochs", 2.5, "fruits.train.epochs must be an integer, got 2.5"),
    ("train.epochs", "abc", "fruits.train.epochs must be an integer, got 'abc'"),
    ("train.batch_size", 1.5, "fruits.train.batch_size must be an integer, got 1.5"),
    ("images.size", 40.5, "fruits.images.size must be an integer, got 40.5"),
    ("images.decode_workers", -1, "fruits.images.decode_workers must be a positive integer, got -1"),
    ("train.distributed.nproc_per_node", 0, "fruits.train.distributed.nproc_per_node must be a positive integer"),
    ("split.seed", 2**70, r"fruits.split.seed must be in \[0, 2\*\*63\), got 1180591620717411303424"),
])
def test_invalid_parameter_stops_the_run_before_any_work(finished_run, setting: str, value, message: str) -> None:
    project, params = finished_run
    before = snapshot(project)
    with pytest.raises(ConfigError, match=message) as error:
        run_kedro(project, "fruits", {**params, f"fruits.{setting}": value})
    assert raised_before_any_node_ran(error)
    assert snapshot(project) == before


def test_params_for_a_dataset_that_does_not_exist_are_refused(finished_run) -> None:
    project, params = finished_run
    before = snapshot(project)
    with pytest.raises(ConfigError, match="--params names 'fruitz', which is no dataset of this project"):
        run_kedro(project, "fruits", {**params, "fruitz.train.epochs": 1})
    assert snapshot(project) == before


def test_a_dataset_named_like_another_s_predict_pipeline_is_refused_naming_its_file(finished_run) -> None:
    """conf/base/parameters_fruits_predict.yml would replace fruits' predict pipeline in silence."""
    project, params = finished_run
    fruits_yml = (project / "conf/base/parameters_fruits.yml").read_text()
    predict_yml = project / "conf/base/parameters_fruits_predict.yml"
    predict_yml.write_text(fruits_yml.replace("fruits:", "fruits_predict:", 1))
    before = snapshot(project)
    with pytest.raises(ConfigError, match="parameters_fruits_predict.yml: the dataset name 'fruits_predict' is "
                                          "taken by a pipeline of 'fruits'") as error:
        run_kedro(project, "fruits_predict", {**params, "fruits.predict.input": params["fruits.source.path"]})
    assert raised_before_any_node_ran(error)
    assert snapshot(project) == before


@pytest.mark.parametrize("version, message", [
    ("../../x", r"--load-versions=fruits.model_card:../../x: '../../x' is not a version; expected "
                r"fruits.model_card:YYYY-MM-DDThh.mm.ss.sssZ, the name of a folder in .*model_card.json"),
    ("2020-01-01T00.00.00.000Z", r"--load-versions=fruits.model_card:2020-01-01T00.00.00.000Z: fruits.model_card "
                                 r"has no version 2020-01-01T00.00.00.000Z"),
])
def test_a_load_version_that_is_no_version_or_does_not_exist_is_refused_listing_the_kept_ones(
        finished_run, version: str, message: str) -> None:
    project, params = finished_run
    kept = latest(project / "data/06_models/fruits/model_card.json").parent.name
    before = snapshot(project)
    with pytest.raises(VersionError, match=message) as error:
        run_kedro(project, "fruits_predict", {**params, "fruits.predict.input": params["fruits.source.path"]},
                  load_versions={"fruits.model_card": version})
    assert str(error.value).endswith(f"versions kept, newest first: {kept}")
    assert raised_before_any_node_ran(error)
    assert snapshot(project) == before


def corrupt(store: Path) -> None:
    store.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)


def read_only(store: Path) -> None:
    """A valid store (a copy of the session's) that cannot be written, even by root (chattr +i)."""
    shutil.copy(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"), store)
    store.chmod(0o444)
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode != 0:
        pytest.skip("root can write a read-only file, and chattr +i is not allowed here")


@pytest.mark.parametrize("spoil, reason", [(corrupt, "file is not a database"),
                                           (read_only, "attempt to write a readonly database")])
def test_a_broken_mlflow_db_leaves_the_run_untracked_with_one_warning_naming_it(
        spoil, reason: str, finished_run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    project, params = finished_run
    store = project / "mlflow.db"
    spoil(store)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the project's own store, mlflow.db at its root
    spoiled, metrics = store.read_bytes(), project / "data/08_reporting/fruits/metrics.json"
    evaluations = len(list(metrics.iterdir()))
    caplog.set_level(logging.WARNING)
    try:
        run_kedro(project, "fruits", params, tags=["evaluate"])
    finally:
        subprocess.run(["chattr", "-i", str(store)], capture_output=True)
    warnings = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage() and r.levelno >= logging.WARNING]
    assert warnings == [f"MLflow store {store} cannot be used ({reason}): this run goes on without tracking. Move the "
                        f"file away to start a new store (mv {store} {store}.broken), or set MLFLOW_TRACKING_URI "
                        "to another store"]
    assert len(list(metrics.iterdir())) == evaluations + 1  # the run went on
    assert store.read_bytes() == spoiled


def test_unwritable_output_folder_stops_the_run_before_training(finished_run) -> None:
    project, params = finished_run
    reporting = project / "data/08_reporting/fruits"
    # A file where the folder should be: unwritable even for root, which ignores permissions.
    reporting.rename(reporting.with_name("fruits.previous"))
    reporting.write_text("not a folder")
    before = snapshot(project)
    with pytest.raises(PermissionError, match="08_reporting/fruits is not writable") as error:
        run_kedro(project, "fruits", {**params, "fruits.train.epochs": 2})
    assert raised_before_any_node_ran(error)
    assert snapshot(project) == before


def test_missing_kaggle_credentials_fail_without_a_prompt(finished_run, tmp_path: Path) -> None:
    """The real command, stdin closed, an empty home and no KAGGLE_* variables: it fails with the
    way out, never waits for input (the timeout catches a hang; no wall-time bound, which a busy
    machine breaks: start-up time is measured by benchmarks/startup_time.py)."""
    project, params = finished_run
    params = {**params, "fruits.source.kind": "kaggle"}
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "empty_home"), "KEDRO_DISABLE_TELEMETRY": "true"}
    before = snapshot(project)
    done = subprocess.run([str(Path(sys.executable).parent / "kedro"), "run", "--pipelines=fruits", "--env=cpu",
                           "--params=" + ",".join(f"{k}={v}" for k, v in params.items())],
                          cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "No Kaggle credentials found" in done.stdout + done.stderr
    assert '--params="fruits.source.kind=local,fruits.source.path=' in done.stdout + done.stderr  # not <dataset>
    assert snapshot(project) == before


def test_network_failure_mid_download_keeps_no_partial_data_and_loses_nothing(
        finished_run, cut_stream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torchvision download, cut off by the server: a clear error, no half download."""
    project, params = finished_run
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [cut_stream_url])
    downloads = project / "data/01_raw/downloads"
    earlier = downloads / "torchvision__CIFAR10"  # another dataset, downloaded before
    make_class_folders(earlier / "train", ["cat", "dog"], 2)
    (earlier / COMPLETE_MARKER).write_text("{}")
    before, earlier_files = snapshot(project), sorted(earlier.rglob("*"))
    with pytest.raises(DownloadError, match="(?s)downloading torchvision FashionMNIST failed.*127.0.0.1"):
        run_kedro(project, "fruits", {**params, "fruits.source.kind": "torchvision",
                                      "fruits.source.dataset": "FashionMNIST"})
    assert download_entries(downloads) == ["torchvision__CIFAR10"]  # no .partial-*, no final folder
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
    assert torch.load(checkpoint, weights_only=True)["state"]["epoch"] == 3  # replaced by a clean one


def test_tampered_model_file_is_refused_at_load_never_executed(finished_run, tmp_path: Path) -> None:
    project, params = finished_run
    marker = tmp_path / "code_was_executed"
    weights = latest(project / "data/06_models/fruits/model.safetensors")
    weights.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DatasetError, match="(?s)fruits.model_weights.*model.safetensors.*deserializ"):
        run_kedro(project, "fruits", params, tags=["evaluate"])
    assert not marker.exists()


# --- artifacts of different runs or datasets are never paired in silence ---------------------


def test_new_images_with_an_old_model_are_refused_naming_the_stage_to_rerun(finished_run, tmp_path: Path) -> None:
    """The image folder changes; only download and split re-run; evaluate must not pair the new
    manifest with the old cache and model."""
    project, params = finished_run
    # a copy of the images: the run's raw folder is the module's template's, which other tests read
    raw = shutil.copytree((project / "data/01_raw/fruits").resolve(), tmp_path / "raw")
    params = {**params, "fruits.source.path": str(raw)}
    (raw / "Test" / "kiwi" / "0.jpg").unlink()
    make_image(raw / "Test" / "lime" / "new.jpg", 2)
    run_kedro(project, "fruits", params, tags=["download", "split"])
    before = snapshot(project)
    with pytest.raises(LineageError, match="image cache was built from another manifest.*--tags=cache,train"):
        run_kedro(project, "fruits", params, tags=["evaluate", "submit"])
    after = snapshot(project)
    assert before.items() <= after.items()  # everything produced before is untouched
    new = after.keys() - before.keys()  # plots of the old run's own history may be redrawn
    assert not {n for n in new if any(k in n for k in ("predictions", "metrics", "submission"))}


def test_another_dataset_s_model_dropped_in_place_is_refused(finished_run, tmp_path: Path) -> None:
    project, params = finished_run
    other = make_project(tmp_path / "other")
    run_kedro(other, "fruits", {**params, "fruits.source.path": str(dataset(tmp_path / "other_raw", ("a", "b", "c"))),
                                "fruits.train.seed": 7})
    ours = latest(project / "data/06_models/fruits/model.safetensors")
    ours.write_bytes(latest(other / "data/06_models/fruits/model.safetensors").read_bytes())
    with pytest.raises(LineageError, match="weights are not the ones the model card describes"):
        run_kedro(project, "fruits", params, tags=["evaluate"])


def test_a_model_card_with_a_key_missing_is_a_clear_error(finished_run) -> None:
    project, params = finished_run
    card_path = latest(project / "data/06_models/fruits/model_card.json")
    card = json.loads(card_path.read_text())
    del card["input"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match=r"the model card has no \['input'.*re-run the train stage"):
        run_kedro(project, "fruits", params, tags=["evaluate"])


@pytest.mark.parametrize("pipeline, tags", [("fruits_predict", None), ("fruits", ["evaluate"])])
def test_a_model_card_with_its_class_names_reversed_is_refused(finished_run, pipeline: str, tags) -> None:
    """Predicting with it would answer the wrong class for every image, with rc 0."""
    project, params = finished_run
    card_path = latest(project / "data/06_models/fruits/model_card.json")
    card = json.loads(card_path.read_text())
    card["class_names"].reverse()
    card_path.write_text(json.dumps(card))
    params = {**params, "fruits.predict.input": params["fruits.source.path"]}
    with pytest.raises(ModelCardError, match=f"model card of version {card_path.parent.name} was edited after"):
        run_kedro(project, pipeline, params, tags=tags)


def test_cifar_layout_with_repeated_file_stems_gets_unique_submission_ids(kedro_project: Path, tmp_path: Path) -> None:
    """test/<class>/0.png, 1.png ... in every class: stems repeat, submission ids must not."""
    root = tmp_path / "cifar"
    make_class_folders(root / "train", ["cat", "dog", "ship"], 8, extension=".png")
    make_class_folders(root / "test", ["cat", "dog", "ship"], 3, extension=".png", start_seed=300)
    run_kedro(kedro_project, "cifar10", fast_params("cifar10", **{"source.kind": "local", "source.path": str(root)}))
    submission = pd.read_csv(latest(kedro_project / "data/07_model_output/cifar10/submission.csv"), dtype=str)
    assert len(submission) == 9 and submission["id"].is_unique
    report = json.loads((kedro_project / "data/08_reporting/cifar10/data_report.json").read_text())
    assert any("submission ids from id_from='stem' repeat" in w for w in report["warnings"])


# --- a damaged image cache is refused naming the file; the same command then rebuilds it -----


def _rot_a_test_shard(folder: Path, index: dict, outside: Path) -> str:
    """Bit rot: a test shard's pixels permuted, its size and modification time as they were."""
    shard = folder / index["subsets"]["test"]["shards"][0]["file"]
    stat, array = shard.stat(), np.load(shard)
    np.save(shard, np.ascontiguousarray(array.reshape(-1)[::-1].reshape(array.shape)))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return f"{shard.name} is damaged: its content does not match the checksum"


def _point_the_index_outside(folder: Path, index: dict, outside: Path) -> str:
    """The test rows read from another folder (a file there that must never be read)."""
    np.save(outside / "rows.npy", np.zeros(index["subsets"]["test"]["count"], dtype=np.int64))
    index["subsets"]["test"]["rows"] = str(outside / "rows.npy")
    index["checksums"][str(outside / "rows.npy")] = "whatever"
    (folder / "index.json").write_text(json.dumps(index))
    return f"index.json names '{outside / 'rows.npy'}', which is not a file of the cache's folder"


def _garble_the_index(folder: Path, index: dict, outside: Path) -> str:
    (folder / "index.json").write_text('{"format_version": 2, "subsets": {"train"')
    return "index.json is unreadable"


@pytest.mark.parametrize("damage", [_rot_a_test_shard, _point_the_index_outside, _garble_the_index],
                         ids=["bit rot in a shard", "index pointing outside the cache", "index not JSON"])
def test_a_damaged_image_cache_is_refused_naming_the_file_and_the_same_command_rebuilds_it(
        damage, finished_run, tmp_path: Path) -> None:
    project, params = finished_run
    metrics = json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())
    folder = project / "data/05_model_input/fruits/image_cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    message = damage(folder, json.loads((folder / "index.json").read_text()), outside)
    # (a cache whose index is refused fails as it is loaded: Kedro wraps the error in a DatasetError)
    with pytest.raises((CacheError, DatasetError), match=f"{message}.*--tags=cache.*a rerun rebuilds a damaged cache"):
        run_kedro(project, "fruits", params, tags=["evaluate"])
    run_kedro(project, "fruits", params)  # the cache rebuilt; the finished training returns at once
    again = json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())
    assert again["accuracy"] == metrics["accuracy"] and again["model"] == metrics["model"]
    assert [p.name for p in outside.iterdir()] == (["rows.npy"] if "outside" in damage.__name__ else [])


# --- a diverging training stops before saving anything ----------------------------------------


def test_a_diverging_training_stops_naming_the_learning_rate_and_saves_no_model(finished_run) -> None:
    project, params = finished_run
    trained = {name: value for name, value in snapshot(project).items()
               if any(part in name for part in ("06_models", "07_model_output", "training_", "metrics"))}
    with pytest.raises(TrainingDiverged, match=r"training diverged in epoch \d: train loss .* lower train.max_lr "
                                               r"\(now 100000\)"):
        run_kedro(project, "fruits", {**params, "fruits.train.max_lr": 1e5})
    after = snapshot(project)
    assert {name: after.get(name) for name in trained} == trained  # the previous model is still the latest
    assert not {name for name in after.keys() - trained.keys() if "06_models" in name or "training_" in name}


# --- data that cannot train stops before training, with the data report written --------------


@pytest.mark.parametrize("fault, error", [
    ("no readable training image", "0 readable training image"),
    ("no image to submit", "submission.subset='predict' has no readable images"),
])
def test_data_that_cannot_train_stops_before_training_with_the_report_written(
        fault: str, error: str, kedro_project: Path, tmp_path: Path) -> None:
    root = dataset(tmp_path / "raw")
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(root)})
    if fault == "no readable training image":
        for image in (root / "Training").rglob("*.jpg"):
            image.write_bytes(b"not a jpeg")
    else:
        params["fruits.submission.subset"] = "predict"
    with pytest.raises(ValueError, match=error):
        run_kedro(kedro_project, "fruits", params)
    report = json.loads((kedro_project / "data/08_reporting/fruits/data_report.json").read_text())
    assert any(error in e for e in report["errors"])
    assert not [p for p in (kedro_project / "data/06_models").rglob("*") if p.is_file()]  # training never started


def test_a_validation_fraction_that_leaves_one_training_image_stops_clearly(kedro_project: Path,
                                                                           tmp_path: Path) -> None:
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(dataset(tmp_path / "raw")),
                                      "split.val_fraction": 0.99999999})
    with pytest.raises(ValueError, match="1 readable training image"):
        run_kedro(kedro_project, "fruits", params)
    report = json.loads((kedro_project / "data/08_reporting/fruits/data_report.json").read_text())
    assert report["subsets"]["train"] == 1 and len(report["class_balance"]["below_minimum"]) == 3


# --- one run of a dataset at a time; paths belong to the dataset and the project --------------


def test_a_second_run_of_the_same_dataset_is_refused_naming_the_first(finished_run) -> None:
    project, params = finished_run
    from filelock import FileLock

    lock_path = project / "data/.locks/fruits.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):  # as a first run in progress holds it
        lock_path.with_suffix(".json").write_text(json.dumps({"pid": 4242, "host": "here", "started": "10:00:00",
                                                              "command": "kedro run --pipelines=fruits"}))
        before = snapshot(project)
        with pytest.raises(RuntimeError, match="another run of fruits is in progress in this project "
                                               r"\(pid 4242 on here, started 10:00:00: kedro run --pipelines=fruits\)"):
            run_kedro(project, "fruits", params)
        assert snapshot(project) == before
        run_kedro(project, "garbage", fast_params("garbage", **{"source.kind": "local", "source.path": params[
            "fruits.source.path"], "source.train_dir": "Training"}), tags=["download", "split"])  # others go ahead
    run_kedro(project, "fruits", params, tags=["evaluate"])  # and once the first is done, this one can run


@pytest.mark.parametrize("record", [b"\xff\xfe\x00garbage", b"{\"pid\": 42", b"[1, 2]"])
def test_a_second_run_is_refused_even_when_the_first_s_record_is_garbled(finished_run, record: bytes) -> None:
    """data/.locks/fruits.json unreadable (garbage, or caught half-written): still "in progress"."""
    project, params = finished_run
    from filelock import FileLock

    lock_path = project / "data/.locks/fruits.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):
        lock_path.with_suffix(".json").write_bytes(record)
        with pytest.raises(RuntimeError, match=r"another run of fruits is in progress in this project \(which one is "
                                               r"unknown: .*fruits.json is unreadable\). Wait for it to finish"):
            run_kedro(project, "fruits", params)


def test_a_dataset_copied_from_another_s_parameters_keeps_its_own_files(finished_run) -> None:
    """conf/base/parameters_<new>.yml copied from fruits' (as the README suggests): the new
    dataset's checkpoint and outputs are its own; fruits' are untouched."""
    project, params = finished_run
    fruits_yml = (project / "conf/base/parameters_fruits.yml").read_text()
    (project / "conf/base/parameters_veggies.yml").write_text(fruits_yml.replace("fruits:", "veggies:", 1))
    before = {k: v for k, v in snapshot(project).items() if "fruits" in k}
    run_kedro(project, "veggies", {k.replace("fruits.", "veggies."): v for k, v in params.items()})
    assert (project / "data/06_models/veggies/checkpoint.pt").is_file()
    assert {k: v for k, v in snapshot(project).items() if "fruits" in k} == before


def test_kedro_run_from_a_subfolder_writes_in_the_project(finished_run) -> None:
    project, params = finished_run
    notebooks = project / "notebooks"
    notebooks.mkdir()
    run = subprocess.run([KEDRO, "run", "--pipelines=fruits", "--env=cpu", "--tags=train,evaluate",
                          "--params=" + ",".join(f"{k}={v}" for k, v in params.items())],
                         cwd=notebooks, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (notebooks / "data").exists() and not (notebooks / "mlflow.db").exists()
    assert len(list((project / "data/08_reporting/fruits/metrics.json").iterdir())) == 2


# --- interrupted at any stage: exits within seconds, leaves no half files or orphan processes --

SLOW_DOWN = '''
import os, time, importlib, signal
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background (as CI may be):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works as in a terminal
target = os.environ.get("SLOW_DOWN")  # "module:attribute[.attribute]": make each call take SLOW_SECONDS
if target:
    module_name, path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)

    def slowed(*args, **kwargs):
        try:  # the first call anywhere (main process or worker) announces itself
            os.close(os.open(os.environ["SLOW_STARTED"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        time.sleep(float(os.environ["SLOW_SECONDS"]))
        return original(*args, **kwargs)

    setattr(owner, name, slowed)
'''


def start_slowed(project: Path, params: dict, tmp_path: Path, target: str, seconds: float) -> subprocess.Popen:
    """``kedro run`` in its own process group, with ``target`` made slow (a sitecustomize module),
    so a test can interrupt it in the middle of that stage."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_DOWN)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(site), "SLOW_DOWN": target,
           "SLOW_SECONDS": str(seconds), "SLOW_STARTED": str(tmp_path / "slow_started")}
    command = [KEDRO, "run", "--pipelines=fruits", "--env=cpu",
               "--params=" + ",".join(f"{k}={v}" for k, v in params.items())]
    process = subprocess.Popen(command, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_until(lambda: (tmp_path / "slow_started").exists() or process.poll() is not None, 120,
               f"{target} to be called")
    assert process.poll() is None, process.stderr.read()[-3000:]
    return process


def processes_of(tmp_path: Path) -> list[int]:
    """Pids of live processes started by ``start_slowed`` in ``tmp_path``: kedro and every process
    it started (they inherit its environment, which names ``tmp_path``)."""
    token = f"SLOW_STARTED={tmp_path / 'slow_started'}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and token in (proc / "environ").read_bytes() \
                    and (proc / "stat").read_text().split()[2] != "Z":
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def half_written(project: Path) -> list[Path]:
    return [p for p in (project / "data").rglob("*") if ".partial" in p.name]


def big_dataset(root: Path) -> Path:
    """Enough images that the decode pool really runs (it starts at more than 64 files)."""
    return make_folders_dataset(root, train=40, test=4)


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_ctrl_c_during_the_parallel_decode_stops_at_once(attempt: int, finished_run, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's whole process group) while workers decode: one Ctrl-C is
    enough, the run ends within seconds, no worker is left, the previous cache is whole."""
    project, params = finished_run
    cache_before = (project / "data/05_model_input/fruits/image_cache/index.json").read_bytes()
    raw = big_dataset(tmp_path / f"big{attempt}")
    params = {**params, "fruits.source.path": str(raw)}
    process = start_slowed(project, params, tmp_path, "vision_pipelines.images:decode_image", 0.2)
    wait_until(lambda: len(processes_of(tmp_path)) >= 2, 30, "kedro and its decode workers")
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=15)  # a hang fails here
    assert process.returncode != 0
    wait_until(lambda: processes_of(tmp_path) == [], 10, "every decode worker to end")
    assert (project / "data/05_model_input/fruits/image_cache/index.json").read_bytes() == cache_before
    run_kedro(project, "fruits", params)  # the same command then completes
    assert half_written(project) == []


def test_killing_only_kedro_s_process_leaves_no_decode_worker_behind(finished_run, tmp_path: Path) -> None:
    """As `timeout -s KILL` or the OOM killer do: the workers die with their parent."""
    project, params = finished_run
    raw = big_dataset(tmp_path / "big")
    process = start_slowed(project, {**params, "fruits.source.path": str(raw)}, tmp_path,
                           "vision_pipelines.images:decode_image", 0.2)
    assert len(processes_of(tmp_path)) >= 2  # kedro and its decode workers
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    wait_until(lambda: processes_of(tmp_path) == [], 10, "every decode worker to end")


def test_sigterm_during_training_stops_within_seconds_and_the_rerun_completes(finished_run, tmp_path: Path) -> None:
    project, params = finished_run
    params = {**params, "fruits.train.epochs": 4, "fruits.train.seed": 5}
    process = start_slowed(project, params, tmp_path, "vision_pipelines.engine:TrainStep.__call__", 0.3)
    started = time.time()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)
    stderr = process.stderr.read()
    assert process.returncode != 0 and time.time() - started < 15
    assert "Aborted!" in stderr  # as after Ctrl-C: SIGTERM is a clean stop, not a crash
    assert half_written(project) == []
    run_kedro(project, "fruits", params)
    assert half_written(project) == []


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_killed_in_mlflow(stop: signal.Signals, finished_run, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    project, params = finished_run
    seed = 9000 + stop  # finds this run among the session's
    process = start_slowed(project, {**params, "fruits.train.seed": seed}, tmp_path,
                           "vision_pipelines.engine:TrainStep.__call__", 0.3)
    os.killpg(process.pid, stop)
    process.wait(timeout=30)
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("vision-pipelines")
    (run,) = client.search_runs([experiment.experiment_id], f"params.`fruits.train.seed` = '{seed}'")
    assert run.info.status == "KILLED"
    record = json.loads((project / "data/.runs" / f"{run.data.tags['run_id']}.json").read_text())
    assert record["status"] == "running"  # never finished: none of its outputs is loaded as the latest


def test_a_run_killed_during_training_is_never_taken_for_a_finished_one(finished_run, tmp_path: Path) -> None:
    """Killed after the split and cache of new data: the old model now sits beside a new manifest
    and cache. Evaluating refuses the pair; the same command then completes."""
    project, params = finished_run
    raw = dataset(tmp_path / "new", ("fig", "kiwi", "lime"))
    params = {**params, "fruits.source.path": str(raw)}
    process = start_slowed(project, params, tmp_path, "vision_pipelines.engine:TrainStep.__call__", 0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    with pytest.raises(LineageError, match="trained on another image cache"):
        run_kedro(project, "fruits", params, tags=["evaluate"])
    run_kedro(project, "fruits", params)
    metrics = json.loads(latest(project / "data/08_reporting/fruits/metrics.json").read_text())
    assert metrics["class_names"] == ["fig", "kiwi", "lime"]


# --- secrets in a source URL --------------------------------------------------------------------


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_password_or_signature_in_the_source_url_is_recorded_nowhere(tmp_path: Path) -> None:
    """``source.url`` with a user's password and a signed URL's signature: the run downloads with
    them, and neither is in MLflow (params, tags), info.log, the download's marker or any lock or
    run record."""
    password, signature = "S3cretPassw0rd", "5ignatureF00d"
    make_folders_dataset(tmp_path / "tree" / "fruits-360", ("Apple", "Banana", "Kiwi"), train=8, test=3)
    (tmp_path / "served").mkdir()
    shutil.make_archive(str(tmp_path / "served" / "fruits"), "zip", tmp_path / "tree")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietFiles, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://reader:{password}@127.0.0.1:{server.server_address[1]}/fruits.zip?X-Amz-Signature={signature}"
    project = make_project(tmp_path / "project")
    params = fast_params("fruits", **{"source.kind": "url", "source.url": url, "train.epochs": 1})
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")}
    try:
        run = subprocess.run([KEDRO, "run", "--pipelines=fruits", "--env=cpu",
                              "--params=" + ",".join(f"{k}={v}" for k, v in params.items())],
                             cwd=project, env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (tracked,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    recorded = {**tracked.data.params, **tracked.data.tags}
    assert recorded["fruits.source.url"].startswith("http://***@127.0.0.1:")  # tracked, without the secrets
    assert not [key for key, value in recorded.items() if password in value or signature in value]
    (marker,) = (project / "data/01_raw/downloads").glob(f"*/{COMPLETE_MARKER}")
    records = [project / "info.log", marker, *(project / "data/.locks").iterdir(),
               *(project / "data/01_raw/downloads").glob("*.lock"), *(project / "data/.runs").iterdir()]
    assert (project / "info.log").is_file() and len(records) >= 5
    for path in [*records, *(p for p in project.rglob("*") if p.is_file())]:
        text = path.read_bytes()
        assert password.encode() not in text and signature.encode() not in text, path
