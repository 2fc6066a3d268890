"""Project settings: https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import logging
import os
import warnings
from pathlib import Path

from kedro.utils import find_kedro_project

from vision_pipelines.hooks import (
    KaggleCredentialsHook,
    KernelTracebackHook,
    RunGuardHook,
    RunSummaryHook,
    ValidateParametersHook,
)
from vision_pipelines.tracking import MlflowTrackingHook, artifact_location, tracking_uri

# Warnings a user can do nothing about, printed on every run: kedro-mlflow 2.0 registers its
# resolver with a deprecated OmegaConf call, and importing it makes mlflow ask for type hints on
# its own model class. mlflow shows that one under a "once" filter of its own, which overrides
# warning filters, so it is dropped where Kedro logs warnings.
warnings.filterwarnings("ignore", message=".*register_new_resolver", category=UserWarning)
logging.getLogger("py.warnings").addFilter(lambda record: "Add type hints to the `predict`" not in record.getMessage())
# MLflow gives its loggers a console handler of their own when imported (after this file, by
# kedro-mlflow), at INFO unless told otherwise: it would print its database set-up every run.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

HOOKS = (KernelTracebackHook(), KaggleCredentialsHook(), ValidateParametersHook(), RunGuardHook(), RunSummaryHook(),
         MlflowTrackingHook())


def _project_path(relative: str) -> str:
    """``${project_path:mlflow.db}``: a path under the project root, wherever kedro is started."""
    return ((find_kedro_project(Path.cwd()) or Path.cwd()) / relative).as_posix()


# `--env=cpu` layers conf/cpu over conf/base; "soft" merges nested parameter keys, so an
# environment overrides single settings (fruits.train.epochs) rather than whole datasets.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
    "custom_resolvers": {"project_path": _project_path, "mlflow_tracking_uri": tracking_uri,
                         "mlflow_artifact_location": artifact_location},
}
