"""Kedro pipelines that turn image-classification datasets into reproducible PyTorch runs."""

__version__ = "0.1.0"
