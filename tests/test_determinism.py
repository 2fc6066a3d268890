"""Same seed, same results: a byte-identical manifest and, on CPU, identical metrics."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from conftest import fast_params, make_project, run_kedro
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


def test_split_does_not_depend_on_the_order_files_were_written(fruits_like: Path, tmp_path: Path) -> None:
    """Another machine lists a folder in another order: the manifest must not change."""
    shuffled = tmp_path / "shuffled"
    files = sorted(p for p in fruits_like.rglob("*") if p.is_file())
    random.Random(0).shuffle(files)
    for path in files:  # copy in a different order, so directory listings differ
        target = shuffled / path.relative_to(fruits_like)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    split = {"val_fraction": 0.2, "seed": 43}
    first, _ = nodes.build_manifest(fruits_like, SOURCE, split)
    second, _ = nodes.build_manifest(shuffled, SOURCE, split)
    assert first.equals(second)


def test_deterministic_option_forces_deterministic_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    from vision_pipelines import engine

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        engine.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
