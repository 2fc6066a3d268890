"""Project settings: https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from vision_pipelines.hooks import KaggleCredentialsHook, ValidateRunHook

HOOKS = (KaggleCredentialsHook(), ValidateRunHook())

# `--env=cpu` layers conf/cpu over conf/base; "soft" merges nested parameter keys, so an
# environment overrides single settings (fruits.train.epochs) rather than whole datasets.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
}
