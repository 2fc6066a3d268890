"""The predict pipeline, one per dataset: classify new images with the dataset's trained model.

``kedro run --pipelines=fruits_predict --params="fruits.predict.input=DIR"`` reads the training
pipeline's ``fruits.model_weights`` and ``fruits.model_card`` (so kedro viz draws it from the
model it uses) and writes ``fruits.new_predictions`` (CSV) and ``fruits.new_predictions_plot``.
"""

from kedro.pipeline import Node, Pipeline

from .. import naming_the_dataset
from .nodes import classify_new_images, list_new_images, plot_new_predictions


def create_template(dataset: str = "<dataset>") -> Pipeline:
    """list -> classify -> plot, without a namespace; ``dataset`` names its settings in errors."""
    return Pipeline([
        Node(naming_the_dataset(dataset, list_new_images), "params:predict", "new_images",
             name="list_new_images", tags="predict"),
        Node(classify_new_images, ["new_images", "model_weights", "model_card", "params:predict", "params:compute"],
             ["new_predictions", "new_prediction_images"], name="classify_new_images", tags="predict"),
        Node(plot_new_predictions, ["new_predictions", "new_prediction_images"], "new_predictions_plot",
             name="plot_new_predictions", tags="predict"),
    ])


def create_pipeline(dataset: str) -> Pipeline:
    """The template for one dataset: ``<dataset>_predict`` in the registry."""
    return Pipeline(create_template(dataset), namespace=dataset, tags=dataset)
