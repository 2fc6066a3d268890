"""The hyperparameter search, one per dataset: ``kedro run --pipelines=<dataset>_tune``.

The training pipeline's download, split and cache stages (shared: a rerun decodes nothing), then
the Optuna search in ``<dataset>.tune_study`` (a SQLite file a rerun continues), writing the
trials (``<dataset>.tune_report``), their plot and the best settings as a parameters file
(``<dataset>.best_params``). No weights are saved.
"""

import functools

from kedro.pipeline import Node, Pipeline

from .. import naming_the_dataset
from ..image_classification import create_template as training_template
from .nodes import plot_search, search_hyperparameters


def create_template(dataset: str = "<dataset>") -> Pipeline:
    """download -> split -> cache (the training pipeline's nodes) -> search -> plot."""
    data = training_template(dataset).only_nodes_with_tags("download", "split", "cache")
    return data + Pipeline([
        Node(naming_the_dataset(dataset, functools.wraps(search_hyperparameters)(
                 functools.partial(search_hyperparameters, dataset=dataset))),
             ["image_cache", "data_report", "tune_study", "params:model", "params:images", "params:train",
              "params:compute", "params:tune"], ["tune_report", "best_params"], name="search_hyperparameters",
             tags="tune"),
        Node(plot_search, "tune_report", "tune_plot", name="plot_search", tags="tune"),
    ])


def create_pipeline(dataset: str) -> Pipeline:
    """The template for one dataset: ``<dataset>_tune`` in the registry."""
    return Pipeline(create_template(dataset), namespace=dataset, tags=dataset)
