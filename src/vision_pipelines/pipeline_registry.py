"""Three pipelines per dataset, discovered from configuration.

Every ``conf/base/parameters_<name>.yml`` defines a dataset ``<name>`` and so the pipelines
``<name>`` (download -> ... -> submit), ``<name>_predict`` (classify new images with its trained
model) and ``<name>_export`` (an ONNX file of that model): adding a dataset needs
configuration only. ``__default__`` (plain ``kedro run``) runs the ``fruits`` pipeline alone,
never every dataset at once.

The pipelines' modules (torch, pandas, matplotlib) are imported by ``register_pipelines`` only,
so that ``dataset_names`` (which ``hooks.ValidateParametersHook`` uses before a run) is quick.
"""

from pathlib import Path

from kedro.framework.project import settings
from kedro.pipeline import Pipeline

from .config import ConfigError

DEFAULT_DATASET = "fruits"
GENERATED = ("predict", "export", "lr_find", "cv", "tune")  # each dataset <d> also has the pipelines <d>_<kind>


def dataset_names(conf_base: Path | None = None) -> list[str]:
    """Names of the datasets configured in ``conf/base/parameters_<name>.yml``; a name that is
    also a pipeline the registry makes (``fruits_predict``, ``__default__``) is refused, naming
    its file: that dataset's pipeline would silently replace the other."""
    conf_base = conf_base or _conf_base()
    names = sorted(p.stem.removeprefix("parameters_") for p in conf_base.glob("parameters_*.yml"))
    made = {f"{name}_{kind}": name for name in names for kind in GENERATED} | {"__default__": DEFAULT_DATASET}
    for name in names:
        if name in made:
            raise ConfigError(f"{conf_base / f'parameters_{name}.yml'}: the dataset name {name!r} is taken by a "
                              f"pipeline of {made[name]!r} (every dataset <d> has the pipelines <d> and "
                              f"{', '.join(f'<d>_{kind}' for kind in GENERATED)}; __default__ runs "
                              f"{DEFAULT_DATASET}): rename the file and its top-level key")
    return names


def register_pipelines() -> dict[str, Pipeline]:
    from .pipelines import cross_validation, export, image_classification, lr_find, prediction, tuning

    pipelines = {}
    for name in dataset_names():
        pipelines[name] = image_classification.create_pipeline(name)
        pipelines[f"{name}_predict"] = prediction.create_pipeline(name)
        pipelines[f"{name}_export"] = export.create_pipeline(name)
        pipelines[f"{name}_lr_find"] = lr_find.create_pipeline(name)
        pipelines[f"{name}_cv"] = cross_validation.create_pipeline(name, cv_folds(name))
        pipelines[f"{name}_tune"] = tuning.create_pipeline(name)
    pipelines["__default__"] = pipelines.get(DEFAULT_DATASET, Pipeline([]))
    return pipelines


def cv_folds(name: str, conf_base: Path | None = None) -> int:
    """``<name>.cv.folds`` of conf/base/parameters_<name>.yml (the default when absent): how many
    fold trainings ``<name>_cv`` has. Read from conf/base, since a pipeline is made before any run
    parameters (--env, --params) are known; the folds node checks the run's value matches."""
    import yaml

    from .config import CVConfig

    path = (conf_base or _conf_base()) / f"parameters_{name}.yml"
    settings = ((yaml.safe_load(path.read_text()) or {}).get(name) or {}).get("cv") or {}
    folds = settings.get("folds") if isinstance(settings, dict) else None
    return folds if isinstance(folds, int) and folds >= 2 else CVConfig.folds  # else the parameters hook says why


def _conf_base() -> Path:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / settings.CONF_SOURCE / "base"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no {settings.CONF_SOURCE}/base folder: run kedro from the project root")
