"""One pipeline per dataset, discovered from configuration.

Every ``conf/base/parameters_<name>.yml`` defines a dataset ``<name>`` and so a pipeline
``<name>``: adding a dataset needs configuration only. ``__default__`` (plain ``kedro run``)
runs the ``fruits`` pipeline alone, never every dataset at once.
"""

from pathlib import Path

from kedro.framework.project import settings
from kedro.pipeline import Pipeline

from .pipelines.image_classification import create_pipeline

DEFAULT_DATASET = "fruits"


def dataset_names(conf_base: Path | None = None) -> list[str]:
    """Names of the datasets configured in ``conf/base/parameters_<name>.yml``."""
    conf_base = conf_base or _conf_base()
    return sorted(p.stem.removeprefix("parameters_") for p in conf_base.glob("parameters_*.yml"))


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {name: create_pipeline(name) for name in dataset_names()}
    pipelines["__default__"] = pipelines.get(DEFAULT_DATASET, Pipeline([]))
    return pipelines


def _conf_base() -> Path:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / settings.CONF_SOURCE / "base"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no {settings.CONF_SOURCE}/base folder: run kedro from the project root")
