"""Same seed, same results: a byte-identical manifest and, on CPU, identical metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import FOLDERS_SOURCE, SPLIT, fast_params, latest, make_contest_csv_layout, make_project, run_kedro
from vision_pipelines.config import SourceConfig, SplitConfig
from vision_pipelines.pipelines.image_classification import nodes


def test_two_cpu_runs_give_identical_manifest_and_metrics(fruits_like: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = []
    for name in ("first", "second"):
        project = make_project(tmp_path / name)
        monkeypatch.chdir(project)
        run_kedro(project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(fruits_like)}))
        data = project / "data"
        outputs.append({"manifest": (data / "02_intermediate/fruits/manifest.parquet").read_bytes(),
                        "metrics": without_version(latest(data / "08_reporting/fruits/metrics.json")),
                        "submission": latest(data / "07_model_output/fruits/submission.csv").read_bytes(),
                        "weights": latest(data / "06_models/fruits/model.safetensors").read_bytes()})
    assert outputs[0] == outputs[1]


def without_version(metrics: Path) -> dict:
    """The metrics, less the version of the model they evaluated: the run's start time."""
    return {key: value for key, value in json.loads(metrics.read_text()).items() if key != "model_version"}


class Listing:
    """What ``os.scandir`` returns, with its entries in an order of our choosing."""

    def __init__(self, entries: list[os.DirEntry]) -> None:
        self.entries = entries

    def __iter__(self):
        return iter(self.entries)

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc_info) -> None:
        pass


def list_folders_in_order(monkeypatch: pytest.MonkeyPatch, reverse: bool) -> None:
    """Make every folder list its entries sorted by name, forwards or backwards.

    File systems list folders in their own order (creation order, hash order, ...): the
    manifest must come out the same whatever it is.
    """
    scandir, listdir = os.scandir, os.listdir

    def ordered_scandir(path="."):
        with scandir(path) as entries:
            return Listing(sorted(entries, key=lambda e: e.name, reverse=reverse))

    monkeypatch.setattr(os, "scandir", ordered_scandir)
    monkeypatch.setattr(os, "listdir", lambda path=".": sorted(listdir(path), reverse=reverse))


@pytest.mark.parametrize("layout", ["folders", "csv"])
def test_split_does_not_depend_on_the_order_folders_are_listed(fruits_like: Path, tmp_path: Path, layout: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if layout == "folders":
        root, source = fruits_like, FOLDERS_SOURCE
    else:
        root = make_contest_csv_layout(tmp_path / "contest", classes=3, train_per_class=10)
        source = SourceConfig(path="unused", layout="csv", train_csv="train*/train.csv", test_csv="test*/test.csv",
                              class_names=["x", "y", "z"])
    manifests = []
    for reverse in (False, True):
        with monkeypatch.context() as patch:
            list_folders_in_order(patch, reverse)
            folder = root / ("fruits-360/Training" if layout == "folders" else "train_AB/train")
            listed = [p.name for p in folder.iterdir()]
            assert listed == sorted(listed, reverse=reverse)  # the listing order really changed
            manifests.append(nodes.build_manifest(root, source, SPLIT)[0])
    pd.testing.assert_frame_equal(manifests[0], manifests[1])
    assert set(manifests[0]["subset"]) >= {"train", "val"}


def test_same_seed_same_split_other_seed_other_split(fruits_like: Path) -> None:
    first, _ = nodes.build_manifest(fruits_like, FOLDERS_SOURCE, SPLIT)
    again, _ = nodes.build_manifest(fruits_like, FOLDERS_SOURCE, SPLIT)
    other, _ = nodes.build_manifest(fruits_like, FOLDERS_SOURCE, SplitConfig(seed=44))
    assert first.equals(again) and not first.equals(other)


