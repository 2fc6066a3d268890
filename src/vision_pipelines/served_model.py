"""The model MLflow serves, as code (MLflow's "models from code"): ``serving.log_model`` logs this
file, and loading the model runs it, so no pickled object is ever loaded. See serving.py."""

from mlflow.models import set_model

from vision_pipelines.serving import ImageClassifier

set_model(ImageClassifier())
