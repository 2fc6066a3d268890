"""k-fold cross-validation: the folds, the ensemble and ``<dataset>_cv`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import fast_params, latest, make_folders_dataset, run_kedro
from vision_pipelines.config import ConfigError, CVConfig
from vision_pipelines.cross_validation import ensemble, make_folds


def manifest(per_class: dict[str, int]) -> pd.DataFrame:
    """train and val images of each class, and a few test images the folds must leave alone."""
    rows = [{"file": f"{label}/{n}.png", "label": label, "subset": "val" if n % 5 == 0 else "train"}
            for label, count in per_class.items() for n in range(count)]
    rows += [{"file": f"test/{n}.png", "label": "a", "subset": "test"} for n in range(4)]
    return pd.DataFrame(rows)


def test_folds_are_disjoint_cover_every_image_once_and_keep_class_proportions() -> None:
    images = manifest({"a": 20, "b": 10, "c": 7})
    folds = make_folds(images, 5, seed=1)
    labelled = images[images["subset"] != "test"]
    assert sorted(folds["row"]) == sorted(labelled.index)  # each train/val image in exactly one fold
    assert set(folds["fold"]) == {1, 2, 3, 4, 5}
    per_class = folds.groupby(["label", "fold"]).size().unstack()
    assert (per_class.max(axis=1) - per_class.min(axis=1) <= 1).all()  # stratified


def test_the_same_seed_gives_the_same_folds_and_another_seed_others() -> None:
    images = manifest({"a": 20, "b": 10})
    assert make_folds(images, 4, seed=7).equals(make_folds(images, 4, seed=7))
    assert not make_folds(images, 4, seed=7)["fold"].equals(make_folds(images, 4, seed=8)["fold"])


def test_impossible_fold_counts_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"cv\.folds=8 is more than the 7 image\(s\) of the smallest class \('c'\)"):
        make_folds(manifest({"a": 20, "c": 7}), 8, seed=1)
    with pytest.raises(ConfigError, match=r"cv\.folds must be >= 2, got 1"):
        CVConfig(folds=1)


def test_ensemble_probabilities_are_the_mean_of_the_folds() -> None:
    names = ["cat", "dog"]
    rng = np.random.default_rng(0)
    folds = []
    for fold in (1, 2, 3):
        p = rng.dirichlet([1, 1], size=4)
        folds.append(pd.DataFrame({"file": [f"{i}.png" for i in range(4)], "subset": "test", "fold": fold,
                                   "label": ["cat", "dog", "cat", None], "p_cat": p[:, 0], "p_dog": p[:, 1]}))
    result = ensemble(folds, names)
    mean = np.mean([f[["p_cat", "p_dog"]].to_numpy() for f in folds], axis=0)
    np.testing.assert_allclose(result[["p_cat", "p_dog"]].to_numpy(), mean)
    assert result["predicted"].tolist() == [names[i] for i in mean.argmax(1)]
    assert result["label"].tolist()[:3] == ["cat", "dog", "cat"]


def test_cv_pipeline_trains_each_fold_and_writes_the_report_and_ensemble_submission(
        kedro_project: Path, tmp_path: Path) -> None:
    images = make_folders_dataset(tmp_path / "images", train=8, test=2)
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(images), "train.epochs": 1,
                                      "images.size": 8, "model.width": 4})
    with pytest.raises(ConfigError, match=r"fruits\.cv\.folds=3, but the fruits_cv pipeline has 5 fold trainings"):
        run_kedro(kedro_project, "fruits_cv", {**params, "fruits.cv.folds": 3})
    parameters = kedro_project / "conf" / "base" / "parameters_fruits.yml"
    parameters.write_text(parameters.read_text().replace("folds: 5", "folds: 3"))

    run_kedro(kedro_project, "fruits_cv", params)
    data = kedro_project / "data"
    report = json.loads(latest(data / "08_reporting" / "fruits" / "cv_report.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [1, 2, 3]
    assert report["out_of_fold_images"] == sum(f["images"] for f in report["folds"]) == 24  # every train/val image
    assert set(report["summary"]) == {"accuracy", "macro_f1"} and report["ensemble_test"]["images"] == 6
    assert np.array(report["out_of_fold"]["confusion_matrix"]).sum() == 24
    out_of_fold = pd.read_parquet(latest(data / "07_model_output" / "fruits" / "oof_predictions.parquet"))
    assert out_of_fold["file"].is_unique and len(out_of_fold) == 24 and set(out_of_fold["fold"]) == {1, 2, 3}
    submission = pd.read_csv(latest(data / "07_model_output" / "fruits" / "ensemble_submission.csv"))
    assert len(submission) == 6
    for fold in (1, 2, 3):
        assert latest(data / "06_models" / f"fruits.fold_{fold}" / "model.safetensors").is_file()
    assert latest(data / "08_reporting" / "fruits" / "cv_confusion.png").stat().st_size > 0
