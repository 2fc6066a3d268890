"""The project's Kedro datasets (src/vision_pipelines/datasets.py): every save is atomic, so a
crash or a full disk never leaves half a file, nor an empty one where the previous was."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io import DatasetError, Version
from matplotlib.figure import Figure

from vision_pipelines import datasets
from vision_pipelines.atomic import PARTIAL


class FullDisk:
    """Make every write to a partial file fail as a full disk does (half written, then ENOSPC)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open = open

        def safetensors_save_file(tensors, filename, metadata=None):  # written by Rust, not Python's open
            Path(filename).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr("safetensors.torch.save_file", safetensors_save_file)

        def opener(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if "w" in mode and PARTIAL in str(file):
                def no_space(*_):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                handle.write = no_space
            return handle

        monkeypatch.setattr("builtins.open", opener)


def figure() -> Figure:
    fig = Figure()
    fig.add_subplot().plot([1, 2, 3])
    return fig


CASES = {  # dataset class, settings, what to save first, what to save when the disk is full
    "json": (datasets.JSONDataset, {}, {"accuracy": 0.5}, {"accuracy": 0.9}),
    "csv": (datasets.CSVDataset, {"save_args": {"index": False}}, pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [2]})),
    "parquet": (datasets.ParquetDataset, {}, pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [2]})),
    "png": (datasets.MatplotlibDataset, {}, figure(), figure()),
    "safetensors": (datasets.SafetensorsDataset, {"backend": "torch"}, {"w": torch.zeros(3)}, {"w": torch.ones(3)}),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_save_that_fails_half_way_keeps_the_previous_file_whole(kind: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cls, settings, first, second = CASES[kind]
    path = tmp_path / f"artifact.{kind}"
    cls(filepath=str(path), **settings).save(first)
    previous = path.read_bytes()
    with monkeypatch.context() as patch:
        FullDisk(patch)
        with pytest.raises((OSError, DatasetError), match="No space left on device"):
            cls(filepath=str(path), **settings).save(second)
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left behind


def test_a_versioned_save_appears_only_once_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The latest version is never a half-written one: a failed save adds no loadable version."""
    path = tmp_path / "metrics.json"
    datasets.JSONDataset(filepath=str(path), version=Version(None, "2026-01-01T00.00.00.000Z")).save({"run": 1})
    with monkeypatch.context() as patch:
        FullDisk(patch)
        with pytest.raises((OSError, DatasetError)):
            datasets.JSONDataset(filepath=str(path), version=Version(None, "2026-01-02T00.00.00.000Z")).save({"run": 2})
    assert datasets.JSONDataset(filepath=str(path), version=Version(None, None)).load() == {"run": 1}


def test_saved_files_are_what_kedro_datasets_write(tmp_path: Path) -> None:
    datasets.JSONDataset(filepath=str(tmp_path / "a.json"), save_args={"indent": 2}).save({"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    frame = pd.DataFrame({"a": [1, 2]})
    frame.attrs["lineage"] = {"model": "abc"}
    parquet = datasets.ParquetDataset(filepath=str(tmp_path / "p.parquet"))
    parquet.save(frame)
    assert parquet.load().attrs["lineage"] == {"model": "abc"}  # lineage travels with the table


def test_a_plot_loads_as_the_saved_picture(tmp_path: Path) -> None:
    plot = datasets.MatplotlibDataset(filepath=str(tmp_path / "plot.png"))
    plot.save(figure())
    assert plot.load().size == (640, 480)


def test_file_dataset_keeps_versions_of_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    datasets.FileDataset(filepath=str(path), version=Version(None, "2026-01-01T00.00.00.000Z")).save(b"first")
    datasets.FileDataset(filepath=str(path), version=Version(None, "2026-01-02T00.00.00.000Z")).save(b"second")
    assert datasets.FileDataset(filepath=str(path), version=Version(None, None)).load() == b"second"
    first = datasets.FileDataset(filepath=str(path), version=Version("2026-01-01T00.00.00.000Z", None))
    assert first.load() == b"first"


def test_location_dataset_gives_an_absolute_path_and_refuses_saves(tmp_path: Path) -> None:
    location = datasets.LocationDataset(path=str(tmp_path / "checkpoint.pt"))
    assert location.load() == tmp_path / "checkpoint.pt" and location.load().is_absolute()
    with pytest.raises(DatasetError, match="written by the node that uses it"):
        location.save(tmp_path)


def test_image_folder_dataset_links_the_folder_and_refuses_to_replace_a_real_one(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    link = datasets.ImageFolderDataset(path=str(tmp_path / "raw" / "fruits"), pipeline="fruits")
    with pytest.raises(DatasetError, match=r"no image folder .*kedro run --pipelines=fruits --tags=download"):
        link.load()
    link.save(images)
    assert link.load() == images.resolve() and (tmp_path / "raw" / "fruits").is_symlink()
    real = tmp_path / "real"
    real.mkdir()
    with pytest.raises(DatasetError, match="is a real folder, not a link"):
        datasets.ImageFolderDataset(path=str(real)).save(images)
