"""Hooks that make a run fail early and clearly, never mix two runs' outputs, and end with a summary;
and one that lets a notebook's errors reach Jupyter and papermill.

Every ``kedro`` command imports this module (through settings.py), so it imports nothing heavy:
``.datasets`` (pandas, matplotlib) is imported where a run uses it, by which time the catalog
has imported it anyway.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset, MemoryDataset
from omegaconf import OmegaConf

from .atomic import PARTIAL, write_atomically
from .config import ConfigError, parse_dataset
from .versions import (
    FAILED,
    FINISHED,
    KeptModel,
    RunRecords,
    check_load_versions,
    load_version,
    this_process,
    use_model,
    version_at,
    version_before,
)

log = logging.getLogger(__name__)


class KaggleCredentialsHook:
    """Export ``kaggle: {username, key}`` from credentials.yml for the Kaggle client.

    Environment variables already set win. ``conf/local`` is read even under ``--env=cpu``,
    since that is where Kedro keeps secrets whatever the run environment.
    """

    # tryfirst: before kedro-mlflow's, whose failure on a broken store (tracking.py goes on
    # without tracking) would leave the hooks after it uncalled
    @hook_impl(tryfirst=True)
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


class KernelTracebackHook:
    """A cell that fails in a Jupyter kernel reports its error to Jupyter and papermill.

    Kedro's ``RichHandler`` with ``rich_tracebacks`` (conf/logging.yml, and Kedro's default
    logging) installs rich's traceback printer, in IPython too: there it replaces the shell's
    ``showtraceback``, so a failing cell prints a rich traceback as display output and sends no
    error message, and papermill says ``Exception encountered at "In [13]":`` with nothing after
    it. In a kernel, IPython's own traceback display is given back (first thing after
    ``%reload_kedro`` configured logging); the CLI and the IPython terminal keep rich's.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
        if getattr(shell, "kernel", None) is not None:  # a Jupyter kernel
            for method in ("showtraceback", "_showtraceback", "showsyntaxerror"):  # rich's overrides
                vars(shell).pop(method, None)


class ValidateParametersHook:
    """Before Kedro builds the nodes' typed parameters: parse every dataset's parameters whole,
    so an error names the full setting (``fruits.train.epochs must be an integer, got 2.5``),
    and refuse ``--params`` for a dataset that does not exist."""

    # tryfirst: before kedro-mlflow's after_context_created sets up MLflow's store
    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        from .pipeline_registry import dataset_names

        names = dataset_names(Path(context.project_path) / "conf" / "base")
        runtime = context.config_loader.runtime_params or {}
        unknown = sorted(set(runtime) - set(names))
        if unknown:
            raise ConfigError(f"--params names {unknown[0]!r}, which is no dataset of this project "
                              f"(datasets: {', '.join(names)})")
        parameters = context.config_loader["parameters"]
        for name in names:
            parse_dataset(parameters.get(name) or {}, name)


class RunGuardHook:
    """Around each run, for every dataset it touches:

    - before any node runs, check each ``--load-versions`` entry names a version that exists, each
      output folder is writable, and that what the run reads from earlier runs exists (a trained
      model for ``<dataset>_predict``, say);
    - hold a lock: a second run of the same dataset in this project is refused, naming the
      first, rather than mixing its outputs with the first's (other datasets run freely);
    - keep files an earlier, unversioned run left where versioned outputs now go, as a version;
    - remove what a killed run left half-written;
    - record the run (``versions.RunRecords``): its outputs become what later runs load by default
      only once it has finished;
    - load the model ``<dataset>.model_version`` names, in runs that use a model without training it;
    - turn SIGTERM into the same clean stop as Ctrl-C (KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self._locks: list[FileLock] = []
        self._sigterm = None
        self._records: RunRecords | None = None
        self._version: str | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        check_load_versions(catalog, run_params.get("load_versions") or {})
        outputs = sorted(pipeline.all_outputs())
        folders = sorted({folder for name in outputs if (folder := _folder_of(catalog, name))})
        for folder in folders:
            _check_writable(folder)
        _check_inputs_exist(pipeline, catalog)
        project = Path(run_params.get("project_path") or Path.cwd())
        try:
            for dataset in namespaces(pipeline):
                self._locks.append(_lock(project / "data" / ".locks" / f"{dataset}.lock", dataset))
            self._version = run_params["run_id"]
            for name in outputs:
                _version_unversioned_file(catalog, name, self._version)
            for folder in sorted({Path(str(d._filepath)).parent for name in outputs
                                  if (d := catalog.get(name)) is not None and hasattr(d, "_filepath")}):
                _remove_partial_files(folder)
            for dataset in namespaces(pipeline):
                _use_chosen_model(catalog, pipeline, dataset, run_params.get("load_versions") or {})
            self._records = RunRecords(project)
            self._records.start(self._version, run_params.get("pipeline_names") or ["__default__"])
        except BaseException:
            self._release()
            raise
        if _in_main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _interrupt)

    @hook_impl
    def after_pipeline_run(self, pipeline, catalog) -> None:
        if self._records is not None:
            self._records.end(self._version, FINISHED, models=models_used(pipeline, catalog))
        self._release()

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        if self._records is not None:
            self._records.end(self._version, FAILED, error=f"{type(error).__name__}: {error}")
        self._release()

    def _release(self) -> None:
        self._records = None
        for lock in self._locks:
            lock.release()
        self._locks = []
        if self._sigterm is not None and _in_main_thread():
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None


class RunSummaryHook:
    """End a run with what a user looks for: the score, and where the outputs are."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from .datasets import saved_path

        project = Path(run_params.get("project_path") or Path.cwd())
        outputs = pipeline.all_outputs()
        for dataset in namespaces(pipeline):
            lines = []
            if f"{dataset}.model_card" in pipeline.inputs():
                used = KeptModel.read(catalog, dataset, load_version(catalog, f"{dataset}.model_card"))
                score = "" if used.score is None else f" (validation accuracy {used.score:.4f})"
                lines.append(f"model used: {used.version}{score}")
            if f"{dataset}.metrics" in outputs:
                metrics = catalog.load(f"{dataset}.metrics")
                lines.append(f"{metrics['subset']} accuracy {metrics['accuracy']:.4f} on {metrics['images']} "
                             f"images, macro F1 {metrics['macro_f1']:.4f}")
            for entry, what in (("submission", "submission"), ("new_predictions", "predictions"),
                                ("model_weights", "model"), ("onnx_model", "ONNX model"),
                                ("metrics", "report folder")):
                if f"{dataset}.{entry}" in outputs:
                    path = saved_path(catalog, f"{dataset}.{entry}")
                    if what == "report folder":  # the folder the metrics entry lives in
                        path = Path(str(catalog.get(f"{dataset}.metrics")._filepath)).parent
                    lines.append(f"{what}: {path.relative_to(project) if path.is_relative_to(project) else path}")
            if lines:
                log.info("%s done.%s", dataset, "\n  ".join(["", *lines]))


def namespaces(pipeline) -> list[str]:
    """The datasets a pipeline's nodes belong to (their top-level namespaces)."""
    return sorted({node.namespace.split(".")[0] for node in pipeline.nodes if node.namespace})


def _folder_of(catalog, name: str) -> Path | None:
    from .datasets import dataset_path

    try:
        dataset = catalog.get(name)
    except Exception:  # noqa: BLE001 - a memory dataset or an unknown entry has no folder
        return None
    path = dataset_path(dataset)
    if path is None or "://" in path:
        return None
    return Path(path).parent


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise PermissionError(f"output folder {folder} is not writable ({error.strerror}): "
                              "fix its permissions before training, nothing has run yet") from error


def _check_inputs_exist(pipeline, catalog) -> None:
    """Refuse a run whose inputs an earlier run makes, and has not made yet, naming what to run."""
    from .datasets import LocationDataset, dataset_path

    for name in sorted(pipeline.inputs()):
        dataset = None if name.startswith("params:") or name == "parameters" else catalog.get(name)
        if dataset is None or isinstance(dataset, (LocationDataset, MemoryDataset)) or dataset.exists():
            continue
        where = dataset_path(dataset) or ""
        owner = name.split(".")[0]
        raise FileNotFoundError(f"{name} has not been made yet (no {where}): run the training pipeline first, "
                                f"which makes it: kedro run --pipelines={owner} (with the same --env)")


def _lock(path: Path, dataset: str) -> FileLock:
    """Hold ``path``'s lock for this run, or refuse naming the run that holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    holder = path.with_suffix(".json")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(
            f"another run of {dataset} is in progress in this project ({_holder(holder)}). "
            "Wait for it to finish or stop it; runs of other datasets can go ahead.") from None
    write_atomically(holder, json.dumps(this_process()).encode())  # never half-written for a second run to read
    return lock


def _holder(record: Path) -> str:
    """Which run holds a dataset's lock, from the record it wrote (``data/.locks/<dataset>.json``)."""
    try:
        other = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has not said which yet"
    except (OSError, ValueError):  # garbled: UnicodeDecodeError and JSONDecodeError are ValueErrors
        other = None
    if not isinstance(other, dict):
        return f"which one is unknown: {record} is unreadable"
    return (f"pid {other.get('pid', '?')} on {other.get('host', '?')}, started {other.get('started', '?')}: "
            f"{other.get('command', '?')}")


def _use_chosen_model(catalog, pipeline, dataset: str, load_versions: dict[str, str]) -> None:
    """In a run that uses ``dataset``'s model without training it (predict, export, evaluate), load
    the model ``<dataset>.model_version`` names; ``--load-versions`` wins."""
    card, weights = f"{dataset}.model_card", f"{dataset}.model_weights"
    if card not in pipeline.inputs():
        return
    pinned = load_versions.get(card) or load_versions.get(weights)
    if pinned:
        log.info("%s: using model %s (from --load-versions)", dataset, pinned)
        return
    setting = (catalog.load("parameters").get(dataset) or {}).get("model_version", "latest")
    use_model(catalog, dataset, setting, pipeline.inputs())  # with its training curves, when the run re-plots them


def models_used(pipeline, catalog) -> dict[str, str]:
    """The version of each dataset's model a run trained or used, for its run record."""
    return {dataset: load_version(catalog, f"{dataset}.model_card") for dataset in namespaces(pipeline)
            if f"{dataset}.model_card" in pipeline.all_inputs() | pipeline.all_outputs()}


def _version_unversioned_file(catalog, name: str, run_version: str) -> None:
    """A file an unversioned run saved where versions now go: keep it, as an older version.

    Kedro would refuse to save ("Cannot save versioned dataset ... a file with the same name
    already exists"); the earlier run's output is moved to ``<file>/<its mtime>/<file>``, so
    ``--load-versions`` can still load it — or, for a file dated later than this run (a wrong
    clock), to the version just before this run's, so it never shadows what this run makes.
    """
    dataset = catalog.get(name)
    if not isinstance(dataset, AbstractVersionedDataset) or not dataset._version:
        return
    path = Path(str(dataset._filepath))
    if not path.is_file():
        return
    modified = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    version = min(version_at(modified), version_before(run_version))
    aside = path.with_name(f".{path.name}.unversioned")
    os.replace(path, aside)
    (path / version).mkdir(parents=True)
    os.replace(aside, path / version / path.name)
    log.info("kept %s, saved by an earlier run without versioning, as version %s", path, version)


def _remove_partial_files(folder: Path) -> None:
    """Delete files a killed run left half-written in ``folder``, an output folder of file
    datasets (no other run of this dataset is writing: the lock is held), and version folders
    left empty."""
    if not folder.is_dir():
        return
    for partial in list(folder.rglob(f".*{PARTIAL}*")):
        if partial.is_file():
            partial.unlink()
            log.info("removed %s, left half-written by an interrupted run", partial)
            if partial.parent != folder and not any(partial.parent.iterdir()):
                shutil.rmtree(partial.parent)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
