"""Project settings: https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import warnings
from pathlib import Path

from kedro.utils import find_kedro_project

from vision_pipelines.hooks import KaggleCredentialsHook, RunGuardHook, RunSummaryHook, ValidateParametersHook

# kedro-mlflow 2.0 registers its resolver with an OmegaConf call that warns on every run.
warnings.filterwarnings("ignore", message=".*register_new_resolver", category=UserWarning)

HOOKS = (KaggleCredentialsHook(), ValidateParametersHook(), RunGuardHook(), RunSummaryHook())


def _project_path(relative: str) -> str:
    """``${project_path:mlflow.db}``: a path under the project root, wherever kedro is started."""
    return ((find_kedro_project(Path.cwd()) or Path.cwd()) / relative).as_posix()


# `--env=cpu` layers conf/cpu over conf/base; "soft" merges nested parameter keys, so an
# environment overrides single settings (fruits.train.epochs) rather than whole datasets.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
    "custom_resolvers": {"project_path": _project_path},
}
