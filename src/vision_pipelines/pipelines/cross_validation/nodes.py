"""Nodes of the cross-validation pipeline: folds, one training and prediction per fold, the
out-of-fold report and the ensemble of the fold models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from ... import cross_validation, lineage, reporting
from ...cache import ImageCache
from ...config import (
    ComputeConfig,
    ConfigError,
    CVConfig,
    EvaluateConfig,
    ImageConfig,
    LRFindConfig,
    ModelConfig,
    TrainConfig,
)
from ...model_card import read_card
from ...prediction import held_out_probabilities
from ..image_classification.nodes import train_model

log = logging.getLogger(__name__)


def assign_folds(manifest: pd.DataFrame, cv: CVConfig, fold: int = 5) -> pd.DataFrame:
    """Stratified folds of the train and val images; ``fold`` is the number of fold trainings the
    pipeline was made with (from conf/base), which ``cv.folds`` must match."""
    if cv.folds != fold:
        raise ConfigError(f"cv.folds={cv.folds}, but the <dataset>_cv pipeline has {fold} fold trainings: their "
                          "number is read from conf/base/parameters_<dataset>.yml when the pipelines are made "
                          "(--params and --env cannot change a pipeline's shape). Set cv.folds there")
    folds = cross_validation.make_folds(manifest, cv.folds, cv.seed)
    log.info("%d folds of %d images (seed %d): %s images each", cv.folds, len(folds), cv.seed,
             "/".join(str(n) for n in folds["fold"].value_counts().sort_index()))
    return folds


def train_fold(image_cache: ImageCache, data_report: dict[str, Any], cv_folds: pd.DataFrame, checkpoint: Path,
               model: ModelConfig, images: ImageConfig, train: TrainConfig, compute: ComputeConfig,
               lr_find: LRFindConfig, fold: int = 1) -> tuple[dict[str, torch.Tensor], dict[str, Any], pd.DataFrame]:
    """Train on every fold but ``fold``, validating on ``fold``: the training pipeline's train node
    on the fold's view of the image cache."""
    view = cross_validation.FoldCache(image_cache, cv_folds, fold)
    log.info("fold %d/%d: training on %d images, validating on %d", fold, cv_folds["fold"].max(),
             view.count("train"), view.count("val"))
    weights, card, history, _ = train_model(view, {**data_report, "image_cache": view.fingerprint}, checkpoint,
                                            model, images, train, compute, None, lr_find)
    return weights, card, history


def predict_fold(model_weights: dict[str, torch.Tensor], model_card: dict[str, Any], image_cache: ImageCache,
                 cv_folds: pd.DataFrame, manifest: pd.DataFrame, evaluate: EvaluateConfig, compute: ComputeConfig,
                 fold: int = 1) -> pd.DataFrame:
    """Class probabilities of the fold's own images (``subset`` ``val``: its out-of-fold
    predictions) and of the test and predict images, with the evaluation's test-time augmentation."""
    view = cross_validation.FoldCache(image_cache, cv_folds, fold)
    card = read_card(model_card, model_weights)
    lineage.model_matches_cache(card.lineage, view, rerun="the whole cross-validation (--pipelines=<dataset>_cv)")
    frames = []
    for subset, probabilities in held_out_probabilities(card.network(model_weights), view, card, evaluate,
                                                         compute).items():
        labels = view.labels(subset)  # the table's; prediction does not read them
        names = [card.class_names[i] if i >= 0 else None for i in labels.tolist()]
        frame = pd.DataFrame({"file": manifest["file"].to_numpy()[view.rows(subset).numpy()], "subset": subset,
                              "fold": fold, "label": names})
        frames.append(pd.concat([frame, pd.DataFrame(probabilities.numpy(),
                                                     columns=[f"p_{c}" for c in card.class_names])], axis=1))
    return pd.concat(frames, ignore_index=True)


def ensemble_predictions(manifest: pd.DataFrame, class_names: list[str], *fold_probabilities: pd.DataFrame
                         ) -> pd.DataFrame:
    """The test and predict images with the mean of the fold models' probabilities: the ensemble's
    predictions, in the form the training pipeline's ``make_submission`` reads."""
    held_out = [p[p["subset"] != "val"] for p in fold_probabilities]
    predictions = cross_validation.ensemble(held_out, class_names)
    predictions.attrs["lineage"] = {"model": f"ensemble of {len(fold_probabilities)} fold models",
                                    "manifest": lineage.manifest_fingerprint(manifest, class_names),
                                    "class_names": list(class_names)}
    return predictions


def out_of_fold_predictions(class_names: list[str], *fold_probabilities: pd.DataFrame) -> pd.DataFrame:
    """Every train and val image once, predicted by the fold model that did not train on it:
    ``file, fold, label, predicted, confidence`` and the class probabilities."""
    rows = pd.concat([p[p["subset"] == "val"] for p in fold_probabilities], ignore_index=True)
    probabilities = rows[[f"p_{c}" for c in class_names]].to_numpy()
    rows.insert(4, "predicted", [class_names[i] for i in probabilities.argmax(1)])
    rows.insert(5, "confidence", probabilities.max(1))
    return rows.drop(columns="subset").sort_values("file", ignore_index=True)


def report_cross_validation(class_names: list[str], ensemble_predictions: pd.DataFrame, evaluate: EvaluateConfig,
                            *fold_probabilities: pd.DataFrame) -> dict[str, Any]:
    """Accuracy and macro F1 of each fold on its own images, their mean ± sd, the metrics of all
    out-of-fold predictions together (with their confusion matrix), and the ensemble's test score."""
    index = {name: i for i, name in enumerate(class_names)}
    columns = [f"p_{c}" for c in class_names]

    def scores(rows: pd.DataFrame) -> dict[str, Any]:
        return reporting.classification_metrics(rows["label"].map(index).to_numpy(dtype=int),
                                                rows[columns].to_numpy().argmax(1), class_names,
                                                evaluate.top_confused)

    out_of_fold = pd.concat([p[p["subset"] == "val"] for p in fold_probabilities], ignore_index=True)
    per_fold = [{"fold": int(f), **{k: scores(rows)[k] for k in ("accuracy", "macro_f1", "images")}}
                for f, rows in out_of_fold.groupby("fold")]
    summary = cross_validation.summary([{k: r[k] for k in ("accuracy", "macro_f1")} for r in per_fold])
    tested = ensemble_predictions[(ensemble_predictions["subset"] == "test") & ensemble_predictions["label"].notna()]
    ensemble = scores(tested) if len(tested) else None
    log.info("cross-validation: accuracy %.4f ± %.4f, macro F1 %.4f ± %.4f over %d folds%s",
             summary["accuracy"]["mean"], summary["accuracy"]["sd"], summary["macro_f1"]["mean"],
             summary["macro_f1"]["sd"], len(per_fold),
             f"; ensemble test accuracy {ensemble['accuracy']:.4f}" if ensemble else "")
    return {"folds": per_fold, "summary": summary, "out_of_fold": scores(out_of_fold),
            "ensemble_test": ensemble, "out_of_fold_images": len(out_of_fold)}


def plot_cv_confusion(cv_report: dict[str, Any]) -> Figure:
    figure = reporting.plot_confusion(cv_report["out_of_fold"])
    figure.axes[0].set_title("Out-of-fold confusion matrix")
    return figure
