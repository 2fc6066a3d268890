"""The image-classification template, instantiated once per dataset under its namespace.

``create_pipeline("fruits")`` reads ``params:fruits.*`` and writes ``fruits.*`` catalog
entries, which the dataset factories in ``conf/base/catalog.yml`` resolve to files under
``data/<layer>/fruits/``. Every node carries its stage as a tag, so one stage can be re-run from
saved artifacts: ``kedro run --pipelines=fruits --tags=evaluate``.
"""

from kedro.pipeline import Node, Pipeline

from .. import naming_the_dataset
from .nodes import (
    build_image_cache,
    build_manifest,
    download_images,
    evaluate_predictions,
    make_submission,
    plot_confusion_matrix,
    plot_error_gallery,
    plot_learning_curves,
    plot_lr_schedule,
    plot_per_class_accuracy,
    plot_sample_batch,
    predict,
    summarise_data,
    train_model,
)

STAGES = ("download", "split", "cache", "train", "evaluate", "submit")


def create_template(dataset: str = "<dataset>") -> Pipeline:
    """download -> split -> cache -> train -> evaluate -> submit, without a namespace; ``dataset``
    names the pipeline in the download's errors (``--pipelines=fruits``)."""
    return Pipeline([
        Node(naming_the_dataset(dataset, download_images), ["params:source", "downloads"], "raw_images",
             name="download_images", tags="download"),
        Node(build_manifest, ["raw_images", "params:source", "params:split"], ["manifest", "class_names"],
             name="build_manifest", tags="split"),
        Node(build_image_cache, ["raw_images", "manifest", "class_names", "params:images"], "image_cache",
             name="build_image_cache", tags="cache"),
        Node(summarise_data, ["manifest", "image_cache", "class_names", "params:split", "params:evaluate",
                              "params:submission"], "data_report", name="summarise_data", tags="cache"),
        Node(train_model, ["image_cache", "data_report", "checkpoint", "params:model", "params:images",
                           "params:train", "params:compute", "lr_find_reports", "params:lr_find"],
             ["model_weights", "model_card", "training_history", "training_steps"], name="train_model", tags="train"),
        Node(predict, ["model_weights", "model_card", "image_cache", "manifest", "params:evaluate", "params:compute"],
             "predictions", name="predict", tags="evaluate"),
        Node(evaluate_predictions, ["predictions", "class_names", "params:evaluate"], "metrics",
             name="evaluate_predictions", tags="evaluate"),
        Node(plot_learning_curves, "training_history", ["accuracy_plot", "loss_plot"],
             name="plot_learning_curves", tags="evaluate"),
        Node(plot_lr_schedule, "training_steps", "lr_plot", name="plot_lr_schedule", tags="evaluate"),
        Node(plot_confusion_matrix, "metrics", "confusion_plot", name="plot_confusion_matrix", tags="evaluate"),
        Node(plot_per_class_accuracy, "metrics", "per_class_accuracy_plot", name="plot_per_class_accuracy",
             tags="evaluate"),
        Node(plot_error_gallery, ["predictions", "raw_images", "params:evaluate"], "error_gallery_plot",
             name="plot_error_gallery", tags="evaluate"),
        Node(plot_sample_batch, ["image_cache", "params:train"], "sample_batch_plot",
             name="plot_sample_batch", tags="evaluate"),
        Node(make_submission, ["predictions", "manifest", "raw_images", "params:submission"], "submission",
             name="make_submission", tags="submit"),
    ])


def create_pipeline(dataset: str) -> Pipeline:
    """The template for one dataset: its parameters and artifacts all live under ``dataset``."""
    return Pipeline(create_template(dataset), namespace=dataset, tags=dataset)
