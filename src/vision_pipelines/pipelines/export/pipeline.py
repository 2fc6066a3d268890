"""The export pipeline, one per dataset: the trained model as TorchScript and ONNX files.

``kedro run --pipelines=fruits_export`` reads the training pipeline's ``fruits.model_weights``,
``fruits.model_card`` and ``fruits.image_cache`` (so kedro viz draws it from the model it
exports) and writes ``fruits.torchscript_model``, ``fruits.onnx_model`` and
``fruits.export_report``: how closely each file's predictions follow the PyTorch model's.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import check_exports, export_onnx, export_torchscript


def create_template() -> Pipeline:
    """export TorchScript, export ONNX -> check both, without a namespace."""
    return Pipeline([
        Node(export_torchscript, ["model_weights", "model_card"], "torchscript_model", name="export_torchscript",
             tags="export"),
        Node(export_onnx, ["model_weights", "model_card"], "onnx_model", name="export_onnx", tags="export"),
        Node(check_exports, ["torchscript_model", "onnx_model", "model_weights", "model_card", "image_cache",
                             "params:evaluate", "params:compute"], "export_report", name="check_exports",
             tags="export"),
    ])


def create_pipeline(dataset: str) -> Pipeline:
    """The template for one dataset: ``<dataset>_export`` in the registry."""
    return Pipeline(create_template(), namespace=dataset, tags=dataset)
