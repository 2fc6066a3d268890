from .pipeline import create_pipeline, create_template

__all__ = ["create_pipeline", "create_template"]
