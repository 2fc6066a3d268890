"""Each pipeline on the real samples in ../shared/datasets (or $DATASETS_DIR), as a user runs it:
``kedro run --pipelines=<name> --env=cpu --params="<name>.source.kind=local,<name>.source.path=DIR"``.

Skipped when the samples are absent. Accuracy on a few hundred images is a sanity check, never
a benchmark: the bar is "far above chance".
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import latest, run_kedro, sample_dir

pytestmark = pytest.mark.integration

# dataset -> (sample folder, classes, minimum accuracy: several times chance)
SAMPLES = {
    "fruits": ("fruits360", 10, 0.6),
    "garbage": ("garbage", 6, 0.4),
    "intel": ("intel", 6, 0.45),
    "apparel": ("apparel", 10, 0.5),
    "cifar10": ("cifar10", 10, 0.25),
}


@pytest.mark.parametrize("dataset", sorted(SAMPLES))
def test_pipeline_on_real_sample(dataset: str, kedro_project: Path) -> None:
    folder, classes, min_accuracy = SAMPLES[dataset]
    root = sample_dir(folder)
    run_kedro(kedro_project, dataset, {f"{dataset}.source.kind": "local", f"{dataset}.source.path": str(root)})
    out = kedro_project / "data"

    metrics = json.loads(latest(out / f"08_reporting/{dataset}/metrics.json").read_text())
    assert len(metrics["class_names"]) == classes
    assert metrics["accuracy"] >= min_accuracy, f"{dataset}: {metrics['accuracy']:.3f} on {metrics['images']} images"

    card = json.loads(latest(out / f"06_models/{dataset}/model_card.json").read_text())
    assert card["class_names"] == metrics["class_names"]
    report = json.loads((out / f"08_reporting/{dataset}/data_report.json").read_text())
    assert report["used"] > 0 and report["subsets"]["train"] > report["subsets"]["val"] > 0

    submission = pd.read_csv(latest(out / f"07_model_output/{dataset}/submission.csv"), dtype=str)
    manifest = pd.read_parquet(out / f"02_intermediate/{dataset}/manifest.parquet")
    assert submission.notna().all().all()
    if dataset == "apparel":  # exactly the sample submission's columns and rows, in its order
        sample = pd.read_csv(next(root.glob("sample_submission*.csv")), dtype=str)
        assert list(submission.columns) == list(sample.columns)
        assert submission["id"].tolist() == sample["id"].tolist()
        assert set(submission["label"].astype(int)) <= set(range(10))
    elif dataset == "intel":  # every unlabelled seg_pred image
        assert list(submission.columns) == ["image_name", "label"]
        assert len(submission) == (manifest["subset"] == "predict").sum() == 30
    else:
        assert len(submission) == (manifest["subset"] == "test").sum()
        assert submission["id"].is_unique  # cifar10's file stems repeat across class folders
        assert set(submission["label"]) <= set(card["class_names"])
