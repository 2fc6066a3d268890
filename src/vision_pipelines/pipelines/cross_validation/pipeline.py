"""Cross-validation, one per dataset: ``kedro run --pipelines=<dataset>_cv``.

The training pipeline's download, split and cache stages (shared: a rerun decodes nothing), the
folds, then one namespaced training per fold (``<dataset>.fold_1``, ... in kedro viz, each with
its own checkpoint, model and history, so a fold resumes like any run), and at the end the CV
report (per fold, mean ± sd, out-of-fold confusion matrix) and the ensemble's submission.
"""

import functools

from kedro.pipeline import Node, Pipeline

from .. import naming_the_dataset
from ..image_classification import create_template as training_template
from ..image_classification.nodes import make_submission
from .nodes import (
    assign_folds,
    ensemble_predictions,
    out_of_fold_predictions,
    plot_cv_confusion,
    predict_fold,
    report_cross_validation,
    train_fold,
)

FOLD_INPUTS = {"image_cache", "data_report", "cv_folds", "manifest"}
FOLD_PARAMETERS = {f"params:{name}" for name in ("model", "images", "train", "compute", "evaluate", "lr_find")}


def for_fold(func, fold: int):
    """``func`` with ``fold=fold``, keeping its name and type hints (Kedro builds the settings
    from them)."""
    return functools.wraps(func)(functools.partial(func, fold=fold))


def fold_template(fold: int) -> Pipeline:
    """Train on the other folds, then predict this fold's images and the test images."""
    return Pipeline([
        Node(for_fold(train_fold, fold), ["image_cache", "data_report", "cv_folds", "checkpoint", "params:model",
                                          "params:images", "params:train", "params:compute", "params:lr_find"],
             ["model_weights", "model_card", "training_history"], name="train_fold", tags="cv"),
        Node(for_fold(predict_fold, fold), ["model_weights", "model_card", "image_cache", "cv_folds", "manifest",
                                            "params:evaluate", "params:compute"],
             "fold_probabilities", name="predict_fold", tags="cv"),
    ])


def create_template(dataset: str = "<dataset>", folds: int = 5) -> Pipeline:
    """download -> split -> cache -> folds -> ``folds`` namespaced trainings -> report, ensemble."""
    data = training_template(dataset).only_nodes_with_tags("download", "split", "cache")
    probabilities = [f"fold_{i}_probabilities" for i in range(1, folds + 1)]
    per_fold = [Pipeline(fold_template(i), namespace=f"fold_{i}", inputs=FOLD_INPUTS, parameters=FOLD_PARAMETERS,
                         outputs={"fold_probabilities": probabilities[i - 1]}) for i in range(1, folds + 1)]
    return data + Pipeline([
        # right after the split, and before the image cache (Kedro runs nodes that are ready at the
        # same time in name order): an impossible cv.folds is refused before any decoding
        Node(naming_the_dataset(dataset, for_fold(assign_folds, folds)), ["manifest", "params:cv"], "cv_folds",
             name="assign_folds", tags="cv"),
        *per_fold,
        Node(ensemble_predictions, ["manifest", "class_names", *probabilities], "ensemble_predictions",
             name="ensemble_predictions", tags="cv"),
        Node(report_cross_validation, ["class_names", "ensemble_predictions", "params:evaluate", *probabilities],
             "cv_report", name="report_cross_validation", tags="cv"),
        Node(out_of_fold_predictions, ["class_names", *probabilities], "oof_predictions",
             name="out_of_fold_predictions", tags="cv"),
        Node(plot_cv_confusion, "cv_report", "cv_confusion_plot", name="plot_cv_confusion", tags="cv"),
        Node(make_submission, ["ensemble_predictions", "manifest", "raw_images", "params:submission"],
             "ensemble_submission", name="make_ensemble_submission", tags="cv"),
    ])


def create_pipeline(dataset: str, folds: int = 5) -> Pipeline:
    """The template for one dataset: ``<dataset>_cv`` in the registry."""
    return Pipeline(create_template(dataset, folds), namespace=dataset, tags=dataset)
