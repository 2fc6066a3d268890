"""Which version of a kept artifact a run reads: its own, the latest finished run's, or the one named.

Kedro keeps every run's outputs as ``data/<layer>/<dataset>/<file>/<version>/<file>`` (the version
is the run's start time) and loads the newest version folder. Left at that, "latest" can lie:

- a run killed after training leaves its model as the newest version beside the previous run's
  submission, so "latest" mixes two runs;
- a version folder from the future (clock skew, ``data/`` copied from another machine) stays the
  newest forever, and every later run would evaluate and submit that old model.

So each run writes a record, ``data/.runs/<version>.json``, when it starts (``running``) and
rewrites it when it ends (``finished``, or ``failed``). The project's versioned datasets
(``RunVersioned``) load, when no version is pinned: this run's own version when it saved one,
else the newest version whose run finished — never one of a run that failed, was killed or is
still going, and never one later than now (named in a warning). Versions saved before runs were
recorded have no record and count as finished.

``<dataset>.model_version`` (latest | best | champion | a version) picks the model ``<dataset>_predict``,
``<dataset>_export`` and the notebook use; ``best`` is the kept model with the highest validation
accuracy among those trained on the same data (manifest fingerprint).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from kedro.io import AbstractVersionedDataset, Version
from kedro.io.core import VERSION_FORMAT, VersionNotFoundError, generate_timestamp
from kedro.utils import find_kedro_project

from .atomic import write_atomically
from .config import VERSION_PATTERN

log = logging.getLogger(__name__)

RUNS = Path("data") / ".runs"  # the run records, under the project root
FINISHED, RUNNING, FAILED = "finished", "running", "failed"


class VersionError(ValueError):
    """A version that cannot be used: it does not exist, or it is not a model of this data."""


class RunRecords:
    """The run records of one project: ``data/.runs/<version>.json``."""

    def __init__(self, project: Path) -> None:
        self.folder = Path(project) / RUNS

    def start(self, version: str, pipelines: list[str]) -> None:
        self._write(version, {"version": version, "status": RUNNING, "pipelines": pipelines, **this_process()})

    def end(self, version: str, status: str, **details: Any) -> None:
        """Rewrite the record with its outcome: the versions it saved become loadable at once if finished."""
        record = self.read(version) or {"version": version}
        self._write(version, {**record, **details, "status": status,
                              "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def read(self, version: str) -> dict[str, Any] | None:
        return _read_record(self.folder / f"{version}.json")

    def unfinished(self) -> set[str]:
        """Versions whose run has a record that does not say it finished."""
        try:
            changed = self.folder.stat().st_mtime_ns  # a record written or replaced changes the folder
        except FileNotFoundError:
            return set()
        return _unfinished(self.folder, changed)

    def _write(self, version: str, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self.folder / f"{version}.json", json.dumps(record, indent=1).encode())


def this_process() -> dict[str, Any]:
    """Who is running: pid, host, start time and the command (its URLs' secrets hidden), as the
    run records and the run locks name it."""
    from .sources.downloads import redact_url  # pandas, through .sources: only once a run starts

    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": redact_url(" ".join(sys.argv))}


@lru_cache(maxsize=16)
def _unfinished(folder: Path, changed: int) -> frozenset[str]:
    records = {path.stem: _read_record(path) or {} for path in folder.glob("*.json")}
    return frozenset(version for version, record in records.items() if record.get("status") != FINISHED)


def _read_record(path: Path) -> dict[str, Any] | None:
    """A JSON file's object; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=64)
def _project_of(folder: str) -> Path | None:
    return find_kedro_project(Path(folder))


def records_for(filepath: PurePath) -> RunRecords | None:
    """The run records of the Kedro project a dataset's file belongs to (None outside a project)."""
    project = _project_of(str(Path(str(filepath)).parent))
    return RunRecords(project) if project else None


_warned: set[str] = set()


class RunVersioned:
    """Mixin for the project's versioned datasets: the version loaded when none is pinned is this
    run's own, else the newest of a finished run that is not later than now."""

    def _fetch_latest_load_version(self: AbstractVersionedDataset) -> str:
        if self._cached_load_version is not None:
            return self._cached_load_version
        usable = loadable_versions(self)
        own = self._version.save if self._version else None
        if own and self._exists_function(str(self._get_versioned_path(own))):
            usable.insert(0, own)
        if not usable:
            raise VersionNotFoundError(f"Did not find any versions for {self}")
        self._cached_load_version = usable[0]
        return usable[0]


def loadable_versions(dataset: AbstractVersionedDataset) -> list[str]:
    """The versions of ``dataset`` a run may load by default, newest first (``loadable``)."""
    return loadable(dataset.list_versions(full_path=False), records_for(dataset._filepath), str(dataset._filepath))


def loadable(versions: list[str], records: RunRecords | None, what: str) -> list[str]:
    """``versions`` (newest first) less those of runs that did not finish and those later than now,
    which are named in a warning, once per process."""
    now = generate_timestamp()
    future = [v for v in versions if v > now]
    if future and what not in _warned:
        _warned.add(what)
        log.warning("ignoring %d version(s) of %s dated later than now (%s, ...): a clock was wrong or data/ was "
                    "copied from another machine. Move them away, or load one by name with --load-versions",
                    len(future), what, future[0])
    unfinished = records.unfinished() if records else set()
    return [v for v in versions if v <= now and v not in unfinished]


def version_at(moment: datetime) -> str:
    """The Kedro version string of ``moment`` (UTC, to the millisecond)."""
    return moment.astimezone(timezone.utc).strftime(VERSION_FORMAT)[:-4] + "Z"


def version_before(version: str) -> str:
    """The version 1 ms before ``version``."""
    moment = datetime.strptime(version, VERSION_FORMAT).replace(tzinfo=timezone.utc)
    return version_at(moment - timedelta(milliseconds=1))


# --- choosing the model -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeptModel:
    """One kept model: its version, score and the data it was trained on."""

    version: str
    score: float | None  # validation accuracy; the evaluation's accuracy for a model trained without one
    manifest: str | None
    card_format: int | None  # model_card.FORMAT_VERSION it was written with

    @classmethod
    def read(cls, catalog, dataset: str, version: str) -> KeptModel:
        card = _read_json(catalog.get(f"{dataset}.model_card"), version)
        evaluation = _read_json(catalog.get(f"{dataset}.metrics"), version)
        score = (card.get("metrics") or {}).get("val_accuracy")
        if score is None and evaluation.get("model") == card.get("weights_fingerprint"):
            score = evaluation.get("accuracy")
        return cls(version, score, (card.get("lineage") or {}).get("manifest"), card.get("format_version"))


def _read_json(dataset: AbstractVersionedDataset, version: str) -> dict[str, Any]:
    return _read_record(Path(str(dataset._get_versioned_path(version)))) or {}


def kept_models(catalog, dataset: str) -> list[KeptModel]:
    """The models of ``dataset`` that finished runs kept (weights and card), newest first."""
    weights, card = catalog.get(f"{dataset}.model_weights"), catalog.get(f"{dataset}.model_card")
    with_weights = set(weights.list_versions(full_path=False))
    return [KeptModel.read(catalog, dataset, v) for v in loadable_versions(card) if v in with_weights]


def choose_model(catalog, dataset: str, setting: str, manifest: str | None) -> KeptModel:
    """The model ``<dataset>.model_version`` names: ``latest``, ``best`` (highest validation
    accuracy among models trained on ``manifest``'s data, the latest model's data when None), or a
    version, checked to exist."""
    models = kept_models(catalog, dataset)
    if not models:
        raise VersionError(f"{dataset} has no trained model yet: run kedro run --pipelines={dataset} first")
    if setting == "latest":
        return models[0]
    if setting == "best":
        from .model_card import FORMAT_VERSION  # imports torch: only where a run chooses a model

        readable = [m for m in models if m.card_format == FORMAT_VERSION]
        if len(readable) < len(models):
            log.warning("model_version=best: leaving out %d model(s) whose card this project no longer reads "
                        "(an older card format, e.g. %s)", len(models) - len(readable),
                        next(m.version for m in models if m not in readable))
        data = manifest or models[0].manifest
        same_data = [m for m in readable if m.manifest == data and m.score is not None]
        if not same_data:
            raise VersionError(f"{dataset}.model_version=best: no kept model was trained on the current data "
                               f"(manifest {data}); train one with kedro run --pipelines={dataset}")
        return max(same_data, key=lambda m: m.score)  # the newest of equals: max keeps the first
    if setting == "champion":
        setting = registry_champion(dataset)
    named = [m for m in models if m.version == setting]
    if not named:
        raise VersionError(f"{dataset}.model_version={setting}: no model of that version was kept by a finished "
                           f"run{_kept_versions(catalog, f'{dataset}.model_card')}")
    return named[0]


def registry_champion(dataset: str) -> str:
    """The Kedro version of the model the MLflow registry's alias ``<dataset>@champion`` names (serving.py)."""
    try:
        from . import serving
    except ImportError:
        raise VersionError(f"{dataset}.model_version=champion reads the MLflow model registry: install the mlflow "
                           "extra (pip install -e '.[mlflow]')") from None
    import mlflow

    uri = serving.project_tracking_uri()
    champion = serving.current_champion(mlflow.MlflowClient(uri), dataset)
    if champion is None:
        raise VersionError(f"{dataset}.model_version=champion: the MLflow registry ({uri}) has no model "
                           f"{dataset}@champion; train one with tracking on, or promote a registered version: "
                           f"python -m vision_pipelines promote {dataset} <version>")
    return champion.tags[serving.KEDRO_VERSION_TAG]


def check_load_versions(catalog, load_versions: dict[str, str]) -> None:
    """Refuse, before any node runs, a ``--load-versions`` entry that is no version string or
    names a version its dataset does not have, listing the versions that can be loaded."""
    for name, version in sorted(load_versions.items()):
        dataset = catalog.get(name)
        if not isinstance(dataset, AbstractVersionedDataset):
            continue  # Kedro ignores a version for an unversioned dataset
        if not re.fullmatch(VERSION_PATTERN, version):
            raise VersionError(f"--load-versions={name}:{version}: {version!r} is not a version; expected "
                               f"{name}:YYYY-MM-DDThh.mm.ss.sssZ, the name of a folder in {dataset._filepath}"
                               f"{_kept_versions(catalog, name)}")
        if not has_version(catalog, name, version):
            raise VersionError(f"--load-versions={name}:{version}: {name} has no version {version} (no "
                               f"{dataset._get_versioned_path(version)}){_kept_versions(catalog, name)}")


def _kept_versions(catalog, name: str) -> str:
    """``; versions kept, newest first: ...`` (models: those whose weights and card a finished run kept)."""
    dataset, entry = name.split(".", 1) if "." in name else (name, "")
    if entry in ("model_card", "model_weights"):
        versions = [m.version for m in kept_models(catalog, dataset)]
    else:
        versions = loadable_versions(catalog.get(name))
    if not versions:
        return f"; none is kept yet: run kedro run --pipelines={dataset} first"
    more = f" and {len(versions) - 10} older" if len(versions) > 10 else ""
    return f"; versions kept, newest first: {', '.join(versions[:10])}{more}"


def use_model(catalog, dataset: str, setting: str, entries=()) -> KeptModel:
    """Load the model ``setting`` (``<dataset>.model_version``) names from now on — its card and
    weights, and each of ``entries`` (catalog names) that its run saved too, such as the curves of
    its training — and say which it is. What predict, export and evaluate runs and the notebook call."""
    manifest = current_data(catalog, dataset) if setting == "best" else None
    chosen = choose_model(catalog, dataset, setting, manifest)
    for name in {f"{dataset}.model_card", f"{dataset}.model_weights", *entries}:
        if has_version(catalog, name, chosen.version):
            pin_load_version(catalog, name, chosen.version)
    score = "" if chosen.score is None else f", validation accuracy {chosen.score:.4f}"
    log.info("%s: using model %s (%s.model_version=%s%s)", dataset, chosen.version, dataset, setting, score)
    return chosen


def current_data(catalog, dataset: str) -> str | None:
    """The fingerprint of the current split, if there is one: the data "best" compares models on."""
    from .lineage import manifest_fingerprint  # imports torch: only where a run needs it

    manifest, class_names = f"{dataset}.manifest", f"{dataset}.class_names"
    if not (catalog.exists(manifest) and catalog.exists(class_names)):
        return None
    return manifest_fingerprint(catalog.load(manifest), catalog.load(class_names))


def load_version(catalog, name: str) -> str | None:
    """The version catalog entry ``name`` loads: this run's, the newest finished, or the one pinned
    (``--load-versions``, ``model_version``); None for an unversioned entry."""
    dataset = catalog.get(name)
    return dataset.resolve_load_version() if isinstance(dataset, AbstractVersionedDataset) else None


def has_version(catalog, name: str, version: str) -> bool:
    """Whether ``name`` is a versioned entry with a file of ``version``."""
    dataset = catalog.get(name)
    return isinstance(dataset, AbstractVersionedDataset) and bool(dataset._version) and \
        dataset._exists_function(str(dataset._get_versioned_path(version)))


def pin_load_version(catalog, name: str, version: str) -> None:
    """Load ``name`` at ``version`` for the rest of the run, as ``--load-versions`` would have.
    Kedro fixes load versions when it builds the catalog, before any hook could choose one, so the
    dataset's version is set in place."""
    dataset = catalog.get(name)
    dataset._version = Version(version, dataset._version.save if dataset._version else None)
    dataset._clear_version_cache()
