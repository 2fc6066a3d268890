"""The learning-rate finder, one per dataset: ``kedro run --pipelines=<dataset>_lr_find``.

It runs the range test on the dataset's image cache (``<dataset>.image_cache``, made by the
training pipeline's cache stage, which this pipeline shares: a rerun decodes nothing) with its
model, optimizer, augmentation and batch size, and writes ``<dataset>.lr_find_report`` (the
suggested rates and the curve) and ``<dataset>.lr_find_plot``. No weights are saved.
"""

from kedro.pipeline import Node, Pipeline

from .. import naming_the_dataset
from ..image_classification import create_template as training_template
from .nodes import find_learning_rate, plot_range_test


def create_template(dataset: str = "<dataset>") -> Pipeline:
    """download -> split -> cache (the training pipeline's nodes) -> range test -> plot."""
    data = training_template(dataset).only_nodes_with_tags("download", "split", "cache")
    return data + Pipeline([
        Node(naming_the_dataset(dataset, find_learning_rate),
             ["image_cache", "data_report", "params:model", "params:images", "params:train", "params:compute",
              "params:lr_find"], "lr_find_report", name="find_learning_rate", tags="lr_find"),
        Node(plot_range_test, "lr_find_report", "lr_find_plot", name="plot_range_test", tags="lr_find"),
    ])


def create_pipeline(dataset: str) -> Pipeline:
    """The template for one dataset: ``<dataset>_lr_find`` in the registry."""
    return Pipeline(create_template(dataset), namespace=dataset, tags=dataset)
