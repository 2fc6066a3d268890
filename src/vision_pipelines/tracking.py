"""Experiment tracking with MLflow, when the ``mlflow`` extra (kedro-mlflow) is installed.

kedro-mlflow's own hook opens an MLflow run for each ``kedro run`` (``conf/base/mlflow.yml``
says where: a SQLite file at the project root unless ``MLFLOW_TRACKING_URI`` is set), logs
each node's parameter sections whole, and closes the run. ``MlflowTrackingHook`` fills that
run with what a user compares between runs:

- every resolved setting as its own parameter: ``fruits.train.epochs = 4``;
- the learning curves, per epoch (MLflow metrics with ``step`` = epoch): ``fruits.train_loss``,
  ``fruits.val_accuracy``, ...;
- the evaluation: ``fruits.accuracy``, ``fruits.macro_f1``, ``fruits.class_accuracy.<class>``;
- the files: plots, model card, weights, metrics and history, under ``<dataset>/...``.

Metrics and files are logged as the catalog saves them, while the run is open. Without
mlflow, or when no run is open (tracking disabled in mlflow.yml), the hook does nothing.

Every ``kedro`` command imports this module (through settings.py): mlflow and ``.datasets``
are imported only where a run uses them.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import re
import sqlite3
import time
import traceback
from contextlib import closing
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from .config import DatasetConfig, parse_dataset
from .hooks import namespaces

log = logging.getLogger(__name__)

# catalog entry (after "<dataset>.") -> folder of the run's artifacts it is logged to; and every "*_plot"
ARTIFACT_FOLDERS = {"model_weights": "model", "model_card": "model", "metrics": "report",
                    "training_history": "report", "data_report": "report"}


def tracking_uri(database: str) -> str:
    """``${mlflow_tracking_uri:<SQLite file>}`` in mlflow.yml: ``MLFLOW_TRACKING_URI`` when set (a
    team's tracking server), as MLflow itself reads it; else that SQLite file, since MLflow 3 no
    longer accepts a plain ./mlruns folder as a tracking store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{database}"


def artifact_location(uri: str) -> str | None:
    """``${mlflow_artifact_location:<tracking URI>}``: where a new experiment keeps its runs'
    files: ``mlartifacts`` beside a SQLite store (so the project root by default); None for a
    tracking server, which keeps them in its own artifact store."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_posix()


def _sqlite_store(context) -> Path | None:
    """The SQLite file mlflow.yml keeps runs in, if it exists (None for a tracking server, or no mlflow.yml)."""
    from kedro.config import MissingConfigException

    loader = context.config_loader
    loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])  # kedro-mlflow's own
    try:
        uri = str(loader["mlflow"]["server"]["mlflow_tracking_uri"])
    except (MissingConfigException, KeyError, TypeError):
        return None
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(context.project_path) / uri.removeprefix("sqlite:///").split("?")[0]  # relative: to the project
    return path if path.is_file() else None


def _sqlite_problem(path: Path, thorough: bool = False) -> str | None:
    """Why SQLite cannot read and write ``path``, or None. ``thorough`` reads every page (slow on
    a big store: only once opening it has failed)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=1)) as database:
            database.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "file is not a database"
            if thorough:
                (verdict,) = database.execute("PRAGMA quick_check").fetchone()
                if verdict != "ok":
                    return f"damaged: {verdict}"
            database.execute("BEGIN")  # a write, taken back: refused if the file cannot be written
            database.execute("CREATE TABLE main.vision_pipelines_write_check (x)")
            database.rollback()
    except sqlite3.Error as error:
        if "locked" in str(error):  # another run writing to it: busy, not broken (MLflow waits its turn)
            return None
        return str(error)
    return None


def _raised_in(error: BaseException, package: str) -> bool:
    return any(f"{os.sep}{package}{os.sep}" in frame.filename for frame in traceback.extract_tb(error.__traceback__))


def _stop_kedro_mlflow(context) -> None:
    """Unregister kedro-mlflow's hooks for this session: no MLflow run is opened, so this module's
    hook does nothing either. (The context holds the session's hook manager; Kedro names no
    public way to it.)"""
    manager = context._hook_manager
    for plugin in manager.get_plugins():
        if type(plugin).__module__.startswith("kedro_mlflow."):
            manager.unregister(plugin)


class MlflowTrackingHook:
    """Log settings, learning curves, evaluation and files to the run kedro-mlflow opened; name
    the run after its dataset, what it does and what differs; end it KILLED when interrupted."""

    def __init__(self) -> None:
        self._client = None  # an mlflow.MlflowClient while a run is being tracked
        self._run_id: str | None = None
        self._catalog = None

    @hook_impl(wrapper=True)
    def after_context_created(self, context):
        """kedro-mlflow opens (creates, upgrades) the store here, and writes to it once the run
        starts: an ``mlflow.db`` that is no database, or cannot be written, would stop the run
        with an error that does not name it. The run goes on without tracking, with one warning
        that names the file and the way out."""
        store = _sqlite_store(context)
        try:
            result = yield
        except Exception as error:
            problem = store and _raised_in(error, "kedro_mlflow") and _sqlite_problem(store, thorough=True)
            if not problem:
                raise
        else:
            problem = store and _sqlite_problem(store)
        if problem:
            log.warning("MLflow store %s cannot be used (%s): this run goes on without tracking. Move the file "
                        "away to start a new store (mv %s %s.broken), or set MLFLOW_TRACKING_URI to another store",
                        store, problem, store, store)
            _stop_kedro_mlflow(context)
            return None
        return result

    # trylast: after kedro-mlflow's before_pipeline_run, which opens the run, and after
    # RunGuardHook's, which chooses the model a predict or export run uses
    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._client = self._run_id = None
        try:
            import mlflow
        except ImportError:
            return
        run = mlflow.active_run()
        if run is None:
            return
        self._client, self._run_id, self._catalog = mlflow.MlflowClient(), run.info.run_id, catalog
        atexit.register(self._end_interrupted)
        parameters = catalog.load("parameters")
        kind = run_kind(pipeline)
        runtime = run_params.get("runtime_params") or {}
        tags = {KIND_TAG: kind}
        for dataset in namespaces(pipeline):
            settings = dataclasses.asdict(resolved_settings(parameters.get(dataset) or {}, dataset))
            if kind != "train":  # a run that uses a model: its own settings, not the ones the model was trained with
                settings = {key: value for key, value in settings.items() if key in _sections_read(pipeline, dataset)}
            self._client.log_batch(self._run_id, params=_params(flatten(settings, prefix=dataset)))
            uses_model = kind != "train" and f"{dataset}.model_card" in pipeline.inputs()  # not --tags=download,split
            tags["mlflow.runName"] = run_name(dataset, kind, runtime.get(dataset) or {},
                                              self._model_used(dataset, tags) if uses_model else None)
        self._client.log_batch(self._run_id, tags=_tags(tags))

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        if self._run_id is None or "." not in dataset_name:
            return
        from .datasets import saved_path

        dataset, entry = dataset_name.split(".", 1)
        try:
            if entry == "training_history":
                self._log_history(dataset, data)
            elif entry == "metrics":
                self._log_evaluation(dataset, data)
            elif entry == "model_card":  # the model this run trained
                self._client.log_batch(self._run_id, tags=_tags(_model_tags(
                    dataset, saved_path(self._catalog, dataset_name).parent.name, data["metrics"]["val_accuracy"])))
            if entry in ARTIFACT_FOLDERS or entry.endswith("_plot"):
                folder = ARTIFACT_FOLDERS.get(entry, "plots")
                self._client.log_artifact(self._run_id, str(saved_path(self._catalog, dataset_name)),
                                          f"{dataset}/{folder}")
        except Exception as error:  # noqa: BLE001 - a tracking failure must not stop a long run halfway
            log.warning("could not log %s to MLflow run %s: %s (the file itself was saved)", dataset_name,
                        self._run_id, error)

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._run_id is not None:
            uri = self._client.tracking_uri
            log.info("MLflow run %s logged to %s; compare runs with: mlflow ui --backend-store-uri %s",
                     self._run_id, uri, uri)
        self._forget()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._forget()  # kedro-mlflow ends the run FAILED

    def _forget(self) -> None:
        atexit.unregister(self._end_interrupted)
        self._client = self._run_id = self._catalog = None

    def _end_interrupted(self) -> None:
        """At exit, a run that neither finished nor failed was interrupted (Ctrl-C, SIGTERM): end it
        KILLED, before MLflow's own exit handler would record it FINISHED."""
        import mlflow

        if self._run_id is not None:
            while mlflow.active_run() is not None:
                mlflow.end_run("KILLED")
            self._client.set_terminated(self._run_id, "KILLED")

    def _model_used(self, dataset: str, tags: dict[str, str]) -> str | None:
        """The version of the model a predict, export or evaluate run uses (RunGuardHook chose it);
        its score and the MLflow run that trained it go into ``tags``."""
        from .versions import KeptModel, load_version

        version = load_version(self._catalog, f"{dataset}.model_card")
        tags.update(_model_tags(dataset, version, KeptModel.read(self._catalog, dataset, version).score))
        trained_by = self._client.search_runs(self._client.get_run(self._run_id).info.experiment_id,
                                              f"tags.run_id = '{version}'", max_results=1)
        if trained_by:
            tags[f"{dataset}.model_run"] = trained_by[0].info.run_id
        return version

    def _log_history(self, dataset: str, history) -> None:
        """Each column of the epoch table (losses, accuracies, lr, seconds) as a metric with step = epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{dataset}.{column}", float(value), now, int(row["epoch"]))
                   for row in history.to_dict("records") for column, value in row.items()
                   if column != "epoch" and _is_number(value)]
        self._client.log_batch(self._run_id, metrics=metrics)

    def _log_evaluation(self, dataset: str, metrics: dict[str, Any]) -> None:
        """Accuracy, macro F1 and each class's accuracy (classes without images have none)."""
        values = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
        names = metric_names(list(metrics["per_class"]), prefix=f"{dataset}.class_accuracy.")
        values.update({f"class_accuracy.{names[name]}": scores["accuracy"]
                       for name, scores in metrics["per_class"].items() if scores["support"]})
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(f"{dataset}.{key}", value, now, 0)
                                                      for key, value in values.items()],
                               tags=[RunTag(f"{dataset}.evaluated_on", metrics["subset"])])


KIND_TAG = "vision_pipelines.kind"  # train | predict | export | evaluate: filter the runs table by it
KINDS = {"model_weights": "train", "new_predictions": "predict", "onnx_model": "export"}  # by what a run writes


def run_kind(pipeline) -> str:
    """What a run does, from what it writes: train, predict, export, or evaluate (a run that uses a model)."""
    written = {name.split(".", 1)[-1] for name in pipeline.all_outputs()}
    return next((kind for entry, kind in KINDS.items() if entry in written), "evaluate")


def run_name(dataset: str, kind: str, runtime: dict[str, Any], model_version: str | None) -> str:
    """``fruits epochs=3 max_lr=0.005``: the dataset and the settings given on the command line (where
    the data comes from left out); ``fruits predict, model 2026-11-23T10.19.01.357Z`` for a run that
    uses a model."""
    given = {key.removeprefix(f"{dataset}."): value
             for key, value in flatten({k: v for k, v in runtime.items() if k != "source"}, prefix=dataset).items()}
    leaves = [key.rsplit(".", 1)[-1] for key in given]  # "epochs", unless two sections share it ("train.seed")
    shown = [f"{leaf if leaves.count(leaf) == 1 else key}={value}" for (key, value), leaf in zip(given.items(), leaves)]
    words = [dataset] + ([] if kind == "train" else [kind]) + shown
    return " ".join(words) + (f", model {model_version}" if model_version else "")


def _model_tags(dataset: str, version: str, score: float | None) -> dict[str, str]:
    return {f"{dataset}.model_version": version,
            **({} if score is None else {f"{dataset}.model_val_accuracy": f"{score:.4f}"})}


def _sections_read(pipeline, dataset: str) -> set[str]:
    """The settings sections of ``dataset`` the pipeline's nodes read (``params:<dataset>.<section>``)."""
    prefix = f"params:{dataset}."
    return {name[len(prefix):].split(".")[0] for name in pipeline.inputs() if name.startswith(prefix)}


def _tags(tags: dict[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(key, str(value)) for key, value in tags.items()]


def resolved_settings(sections: dict[str, Any], dataset: str) -> DatasetConfig:
    """Every setting of ``dataset``, defaults included. Kedro hands the catalog's parameters
    over with the sections nodes declare typed already built; the rest are still dicts."""
    as_dicts = {name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                for name, value in sections.items()}
    return parse_dataset(as_dicts, dataset)


def flatten(settings: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``{"train": {"epochs": 4}}`` -> ``{"<prefix>.train.epochs": 4}``, nested sections included."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}.{key}"))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


MAX_KEY = 250  # MLflow refuses a longer metric name, and with it the whole batch (MAX_ENTITY_KEY_LENGTH)


def metric_names(class_names: list[str], prefix: str = "") -> dict[str, str]:
    """A distinct MLflow metric name for each class, within MLflow's length limit once ``prefix``
    (``fruits.class_accuracy.``) is put before it: letters, digits, ``_ - .`` and spaces kept,
    anything else (slashes, colons, dashes of other kinds) becomes ``_``; a longer name is cut,
    and a name another class already has gets ``_2``, ``_3``, ..."""
    room = MAX_KEY - len(prefix)
    names: dict[str, str] = {}
    for class_name in class_names:
        base = re.sub(r"[^\w.\- ]", "_", class_name)[:room]
        name, repeat = base, 1
        while name in names.values():  # "a:b" and "a/b" both read "a_b"; two long names cut alike
            repeat += 1
            name = base[:room - len(f"_{repeat}")] + f"_{repeat}"
        names[class_name] = name
    return names


def _params(settings: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in settings.items()]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
