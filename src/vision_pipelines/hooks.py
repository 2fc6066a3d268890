"""Hooks that make a run fail early and clearly instead of late and obscurely."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from omegaconf import OmegaConf

from .config import parse_dataset

log = logging.getLogger(__name__)


class KaggleCredentialsHook:
    """Export ``kaggle: {username, key}`` from credentials.yml for the Kaggle client.

    Environment variables already set win. ``conf/local`` is read even under ``--env=cpu``,
    since that is where Kedro keeps secrets whatever the run environment.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
            return
        kaggle = _kaggle_credentials(context)
        if kaggle.get("username") and kaggle.get("key"):
            os.environ.setdefault("KAGGLE_USERNAME", str(kaggle["username"]))
            os.environ.setdefault("KAGGLE_KEY", str(kaggle["key"]))


def _kaggle_credentials(context) -> dict[str, Any]:
    try:
        found = context.config_loader["credentials"].get("kaggle") or {}
    except Exception:  # noqa: BLE001 - no credentials files is a normal state
        found = {}
    if found:
        return found
    for path in sorted((Path(context.project_path) / "conf" / "local").glob("credentials*.yml")):
        found = OmegaConf.to_container(OmegaConf.load(path)).get("kaggle") or {}
        if found:
            return found
    return {}


class ValidateRunHook:
    """Before any node runs: validate each dataset's parameters and check outputs are writable."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        namespaces = sorted({n.namespace.split(".")[0] for n in pipeline.nodes if n.namespace})
        parameters = catalog.load("parameters")
        for name in namespaces:
            if name not in parameters:
                raise KeyError(f"no parameters for dataset {name!r}: add conf/base/parameters_{name}.yml")
            parse_dataset(parameters[name], name)
        for folder in sorted({_folder_of(catalog, name) for name in pipeline.all_outputs()} - {None}):
            _check_writable(folder)


def _folder_of(catalog, name: str) -> Path | None:
    try:
        dataset = catalog.get(name)
    except Exception:  # noqa: BLE001 - a memory dataset or an unknown entry has no folder
        return None
    path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", None)
    if path is None or "://" in str(path):
        return None
    return Path(str(path)).parent


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise PermissionError(f"output folder {folder} is not writable ({error.strerror}): "
                              "fix its permissions before training, nothing has run yet") from error
