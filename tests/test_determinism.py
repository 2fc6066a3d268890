"""Same seed, same results: a byte-identical manifest and, on CPU, identical metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import fast_params, make_contest_csv_layout, make_project, run_kedro
from vision_pipelines.config import ModelConfig
from vision_pipelines.models import GlobalMaxPool, build_model
from vision_pipelines.pipelines.image_classification import nodes

SOURCE = {"kind": "local", "path": "unused", "train_dir": "Training", "test_dir": "Test"}


def test_two_cpu_runs_give_identical_manifest_and_metrics(fruits_like: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = []
    for name in ("first", "second"):
        project = make_project(tmp_path / name)
        monkeypatch.chdir(project)
        run_kedro(project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(fruits_like)}))
        outputs.append({f: (project / "data" / f).read_bytes() for f in
                        ("02_intermediate/fruits/manifest.parquet", "08_reporting/fruits/metrics.json",
                         "07_model_output/fruits/submission.csv")})
    assert outputs[0] == outputs[1]


class Listing:
    """What ``os.scandir`` returns, with its entries in an order of our choosing."""

    def __init__(self, entries: list[os.DirEntry]) -> None:
        self.entries = entries

    def __iter__(self):
        return iter(self.entries)

    def __enter__(self) -> "Listing":
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
        root, source = fruits_like, SOURCE
    else:
        root = make_contest_csv_layout(tmp_path / "contest", classes=3, train_per_class=10)
        source = {"kind": "local", "path": "unused", "layout": "csv", "train_csv": "train*/train.csv",
                  "test_csv": "test*/test.csv", "class_names": ["x", "y", "z"]}
    manifests = []
    for reverse in (False, True):
        with monkeypatch.context() as patch:
            list_folders_in_order(patch, reverse)
            listed = [p.name for p in (root / ("fruits-360/Training" if layout == "folders" else "train_AB/train")).iterdir()]
            assert listed == sorted(listed, reverse=reverse)  # the listing order really changed
            manifests.append(nodes.build_manifest(root, source, {"val_fraction": 0.2, "seed": 43})[0])
    pd.testing.assert_frame_equal(manifests[0], manifests[1])
    assert set(manifests[0]["subset"]) >= {"train", "val"}


def test_same_seed_same_split_other_seed_other_split(fruits_like: Path) -> None:
    split = {"val_fraction": 0.2, "seed": 43}
    first, _ = nodes.build_manifest(fruits_like, SOURCE, split)
    again, _ = nodes.build_manifest(fruits_like, SOURCE, split)
    other, _ = nodes.build_manifest(fruits_like, SOURCE, {**split, "seed": 44})
    assert first.equals(again) and not first.equals(other)


def test_deterministic_option_forces_deterministic_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    from vision_pipelines import engine

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        engine.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


# Backward kernels that torch.use_deterministic_algorithms(True) refuses on CUDA (its documentation
# lists them): a model using one could not train with train.deterministic=true on a GPU.
NO_DETERMINISTIC_CUDA_BACKWARD = {
    "AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0", "AdaptiveMaxPool2DBackward0",
    "AdaptiveMaxPool3DBackward0", "AvgPool3DBackward0", "MaxPool3DWithIndicesBackward0",
    "FractionalMaxPool2DBackward0", "ReflectionPad2DBackward0", "ReplicationPad2DBackward0",
    "UpsampleBilinear2DBackward0", "UpsampleNearest2DBackward0",
}


def backward_kernels(output: torch.Tensor) -> set[str]:
    """Names of every autograd node ``output.backward()`` would run."""
    seen, todo = set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("name", ["resnet9", "resnet18"])
def test_every_model_can_train_with_deterministic_cuda_kernels(name: str) -> None:
    network = build_model(ModelConfig(name=name, width=4), 3, 5)
    kernels = backward_kernels(network(torch.rand(2, 3, 32, 32)).sum())
    assert "ConvolutionBackward0" in kernels  # the walk saw the whole network
    assert not kernels & NO_DETERMINISTIC_CUDA_BACKWARD


def test_global_max_pool_gives_what_adaptive_max_pooling_gave() -> None:
    """Models saved before the change behave the same: only the backward kernel differs."""
    features = torch.randn(4, 8, 5, 3)
    assert torch.equal(GlobalMaxPool()(features), torch.nn.AdaptiveMaxPool2d(1)(features))
