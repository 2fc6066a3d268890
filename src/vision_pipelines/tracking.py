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

A tracking server that does not answer never holds a run up: every MLflow request gives up
within seconds (``MLFLOW_HTTP_REQUEST_*``, set in settings.py), and the first that fails turns
tracking off for the rest of the run, with one warning; the run goes on and saves everything
it would have saved (``GuardedMlflowHook`` wraps kedro-mlflow's hook for this).

URLs with a password or a signature (``source.url``) are tracked only as ``redact_url`` shows
them, in this hook's parameters and in what kedro-mlflow logs.

Every ``kedro`` command imports this module (through settings.py): mlflow, kedro-mlflow and
``.datasets`` are imported only where a run uses them.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import math
import os
import re
import sqlite3
import time
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


# Every MLflow request gives up within seconds rather than MLflow's 120 s a try, 7 tries: a
# tracking server that accepts and never answers would hold a run for minutes per request.
# settings.py sets them (a user's own values win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class _Tracking:
    """Whether this run's tracking failed; the first failure is said once."""

    off = False
    uri: str | None = None  # the store this session tracks to, as mlflow.yml resolves it

    @classmethod
    def fail(cls, error: BaseException) -> None:
        if not cls.off:
            from .sources.downloads import redact_url

            uri = cls.uri or _current_uri()
            database = _sqlite_error(error)
            if uri.startswith("sqlite:///") and database:  # a damaged or read-only mlflow.db
                store = uri.removeprefix("sqlite:///").split("?")[0]
                log.warning("MLflow store %s cannot be used (%s): this run goes on without tracking. Move the file "
                            "away to start a new store (mv %s %s.broken), or set MLFLOW_TRACKING_URI to another "
                            "store", store, database, store, store)
            else:
                log.warning("MLflow tracking is off for this run: %s failed (%s: %s). The run goes on and "
                            "saves its outputs as usual; nothing of it is in MLflow.", redact_url(uri),
                            type(error).__name__, redact_url(str(error))[:300])
        cls.off = True
        _drop_active_runs()


def _sqlite_error(error: BaseException | None) -> str | None:
    """SQLite's own words (``file is not a database``), when ``error`` comes from the store's file."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sqlite3.Error):
            return str(error)
        error = getattr(error, "orig", None) or error.__cause__ or error.__context__
    return None


def _configured_uri(context) -> str | None:
    """The tracking URI mlflow.yml names for this project (``MLFLOW_TRACKING_URI`` when set)."""
    loader = context.config_loader
    loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])  # as kedro-mlflow adds it
    try:
        return str(loader["mlflow"]["server"]["mlflow_tracking_uri"])
    except Exception:  # noqa: BLE001 - no mlflow.yml, or one without a server section: MLflow's own default
        return None


def _current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _drop_active_runs() -> None:
    """Forget the runs open in this process without asking the server (``mlflow.end_run`` would,
    and wait for it once more, at exit too)."""
    import mlflow.tracking.fluent as fluent

    stack = getattr(fluent, "_active_run_stack", None)
    runs = stack.get() if hasattr(stack, "get") else stack
    if isinstance(runs, list):
        runs.clear()


def _redacted(value: Any) -> Any:
    """``value``, or its text with URL secrets hidden when it holds any (what MLflow would record)."""
    from .sources.downloads import redact_url

    text = str(value)
    shown = redact_url(text)
    return value if shown == text else shown


class GuardedMlflowHook:
    """kedro-mlflow's own hook (it opens the MLflow run, logs the node parameters, closes the run),
    called through a guard: the first call that fails turns tracking off for this run instead of
    stopping it, and URL secrets are hidden from what it logs. settings.py registers this hook
    in place of the plugin's (``DISABLE_HOOKS_FOR_PLUGINS``)."""

    @staticmethod
    def _call(method: str, **kwargs: Any) -> None:
        if _Tracking.off:
            return
        try:
            from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook
        except ImportError:  # no mlflow extra: nothing to track
            _Tracking.off = True
            return
        try:
            getattr(mlflow_hook, method)(**kwargs)
        except Exception as error:  # noqa: BLE001 - tracking must never stop a run
            _Tracking.fail(error)

    @hook_impl
    def after_context_created(self, context) -> None:
        _Tracking.off, _Tracking.uri = False, _configured_uri(context)  # a new session: try the server again
        self._call("after_context_created", context=context)

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version,
                              load_versions) -> None:
        self._call("after_catalog_created", catalog=catalog, conf_catalog=conf_catalog, conf_creds=conf_creds,
                   parameters=parameters, save_version=save_version, load_versions=load_versions)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        shown = {key: _redacted(value) for key, value in run_params.items()}  # logged as tags
        self._call("before_pipeline_run", run_params=shown, pipeline=pipeline, catalog=catalog)

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        shown = {key: _redacted(value) if key.startswith("params:") or key == "parameters" else value
                 for key, value in inputs.items()}  # parameters are logged as params or tags
        self._call("before_node_run", node=node, catalog=catalog, inputs=shown, is_async=is_async)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._call("after_pipeline_run", run_params=run_params, pipeline=pipeline, catalog=catalog)

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._call("on_pipeline_error", error=error, run_params=run_params, pipeline=pipeline, catalog=catalog)


class MlflowTrackingHook:
    """Log settings, learning curves, evaluation and files to the run kedro-mlflow opened; name
    the run after its dataset, what it does and what differs; end it KILLED when interrupted."""

    def __init__(self) -> None:
        self._client = None  # an mlflow.MlflowClient while a run is being tracked
        self._run_id: str | None = None
        self._catalog = None
        self._trained: set[str] = set()  # datasets whose model this run trained

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
        if run is None or _Tracking.off:
            return
        self._client, self._run_id, self._catalog = mlflow.MlflowClient(), run.info.run_id, catalog
        atexit.register(self._end_interrupted)
        try:
            self._log_settings_and_name(run_params, pipeline, catalog)
        except Exception as error:  # noqa: BLE001 - tracking must never stop a run
            _Tracking.fail(error)
            self._forget()

    def _log_settings_and_name(self, run_params: dict[str, Any], pipeline, catalog) -> None:
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
                self._trained.add(dataset)
            if entry == "metrics" and dataset in self._trained:  # the evaluation of the model this run trained
                self._log_served_model(dataset, data)
            if entry in ARTIFACT_FOLDERS or entry.endswith("_plot"):
                folder = ARTIFACT_FOLDERS.get(entry, "plots")
                self._client.log_artifact(self._run_id, str(saved_path(self._catalog, dataset_name)),
                                          f"{dataset}/{folder}")
        except Exception as error:  # noqa: BLE001 - a tracking failure must not stop a long run halfway
            _Tracking.fail(error)
            self._forget()

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._run_id is not None:
            from .sources.downloads import redact_url

            uri = redact_url(self._client.tracking_uri)
            log.info("MLflow run %s logged to %s; compare runs with: mlflow ui --backend-store-uri %s",
                     self._run_id, uri, uri)
        self._forget()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._forget()  # kedro-mlflow ends the run FAILED

    def _forget(self) -> None:
        atexit.unregister(self._end_interrupted)
        self._client = self._run_id = self._catalog = None
        self._trained = set()

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

    def _log_served_model(self, dataset: str, metrics: dict[str, Any]) -> None:
        """The trained model as an MLflow pyfunc model, registered under the dataset's name; the alias
        ``champion`` moves to it when its evaluation beats the champion's on the same data (serving.py)."""
        from . import serving
        from .datasets import saved_path

        card_path = saved_path(self._catalog, f"{dataset}.model_card")
        card = json.loads(card_path.read_text())
        predict = resolved_settings(self._catalog.load("parameters").get(dataset) or {}, dataset).predict
        source = serving.log_model(self._client, self._run_id, dataset, card_path,
                                   saved_path(self._catalog, f"{dataset}.model_weights"), predict)
        data = f"{card['lineage'].get('manifest')}/{metrics['subset']}"  # the split, and which part of it scored
        version, moved, why = serving.register(self._client, dataset, self._run_id, source, metrics["accuracy"],
                                               data, card_path.parent.name)
        self._client.log_batch(self._run_id, tags=_tags({f"{dataset}.registered_version": version,
                                                         f"{dataset}.champion": "yes" if moved else "no"}))
        log.info("%s: registered as MLflow model %s version %s; %s %s", dataset, dataset, version,
                 f"alias {serving.CHAMPION} moved to it:" if moved else f"alias {serving.CHAMPION} stays:", why)

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

    return [Param(key, str(_redacted(value))) for key, value in settings.items()]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
