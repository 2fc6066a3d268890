"""The export pipeline, one per dataset: the trained model as an ONNX file.

``kedro run --pipelines=fruits_export`` reads the training pipeline's ``fruits.model_weights``,
``fruits.model_card`` and ``fruits.image_cache`` (so kedro viz draws it from the model it
exports) and writes ``fruits.onnx_model`` and ``fruits.export_report``: how closely the file's
predictions follow the PyTorch model's.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import check_export, export_onnx


def create_template() -> Pipeline:
    """export ONNX -> check it, without a namespace."""
    return Pipeline([
        Node(export_onnx, ["model_weights", "model_card"], "onnx_model", name="export_onnx", tags="export"),
        Node(check_export, ["onnx_model", "model_weights", "model_card", "image_cache", "params:evaluate"],
             "export_report", name="check_export", tags="export"),
    ])


def create_pipeline(dataset: str) -> Pipeline:
    """The template for one dataset: ``<dataset>_export`` in the registry."""
    return Pipeline(create_template(), namespace=dataset, tags=dataset)
