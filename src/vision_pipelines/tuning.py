"""The hyperparameter search: a resumable Optuna study over ``tune.space``.

Each trial trains the dataset's model with the trial's settings on the image cache's training
subset and reports the validation metric after every epoch to Optuna's median pruner, which
stops a trial doing worse than the median of the earlier trials at the same epoch. The study
lives in a SQLite file: a trial is written when it ends, so a killed search keeps its finished
trials, and running the search again continues it up to ``tune.trials``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pandas as pd
from matplotlib.figure import Figure

from .config import ConfigError, TuneConfig
from .engine import TrainingDiverged
from .recipe import Callback

log = logging.getLogger(__name__)

DIRECTIONS = {"val_accuracy": "maximize", "val_loss": "minimize"}
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def median_pruner() -> optuna.pruners.MedianPruner:
    """Stops a trial worse than the median of the earlier trials at the same epoch, once 3 trials
    have ended and from the second epoch: trials report epochs from 1 and the pruner skips the
    steps below ``n_warmup_steps``, so 2 spares the first epoch, whose score is mostly noise."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)


def open_study(storage: str, tune: TuneConfig) -> optuna.Study:
    """The study ``tune.study`` in ``storage``, created or continued. A study made for another
    space or objective is refused (its trials would mislead the sampler); trials a killed run
    left running are marked failed."""
    study = optuna.create_study(storage=storage, study_name=tune.study, direction=DIRECTIONS[tune.objective],
                                sampler=optuna.samplers.TPESampler(seed=tune.seed), pruner=median_pruner(),
                                load_if_exists=True)
    made_for = {"space": tune.space, "objective": tune.objective}
    if not study.user_attrs:
        for key, value in made_for.items():
            study.set_user_attr(key, value)
    elif {key: study.user_attrs.get(key) for key in made_for} != made_for:
        raise ConfigError(f"tune.study={tune.study!r} is a search of another tune.space or tune.objective "
                          f"({study.user_attrs}): give tune.study a new name to start a new search")
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("trial %d was interrupted (a killed run): marked failed", trial.number)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return study


def sample(trial: optuna.Trial, space: dict[str, dict], current: dict[str, Any]) -> dict[str, Any]:
    """The trial's value of each setting of ``space``; ints stay ints where the setting is one."""
    values = {}
    for name, spec in space.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(current.get(name), int) and all(isinstance(spec[k], int) for k in ("low", "high")):
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec.get("log", False))
        else:
            values[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec.get("log", False))
    return values


def with_values(sections: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``sections`` (``{"train": TrainConfig, ...}``) with each ``section.setting`` of ``values``."""
    changed = dict(sections)
    for name, value in values.items():
        section, setting = name.split(".", 1)
        changed[section] = dataclasses.replace(changed[section], **{setting: value})
    return changed


def search(study: optuna.Study, tune: TuneConfig, current: dict[str, Any],
           train_trial: Callable[[dict[str, Any], Callback], float]) -> None:
    """Run the trials the study still lacks (``tune.trials`` in all), within ``tune.timeout_s``.
    ``train_trial(values, pruning)`` trains with the trial's values and the ``Pruning`` callback,
    and returns its metric."""
    done = len(study.get_trials(deepcopy=False, states=DONE))
    if done == 0 and all(name in current for name in tune.space):
        study.enqueue_trial(current, skip_if_exists=True)  # trial 0: the configured settings, for comparison
    remaining = tune.trials - done
    log.info("search %r: %d of %d trials done, %d to run", tune.study, done, tune.trials, max(remaining, 0))
    if remaining <= 0:
        return

    def objective(trial: optuna.Trial) -> float:
        values = sample(trial, tune.space, current)
        with mlflow_trial(trial.number, values) as mlflow:
            return train_trial(values, Pruning(trial, tune.objective, mlflow))

    study.optimize(objective, n_trials=remaining, timeout=tune.timeout_s, catch=(TrainingDiverged,))


class Pruning(Callback):
    """The training callback of one trial: reports each epoch's objective to the trial (and to its
    MLflow run), and stops the training when the median pruner prunes the trial."""

    def __init__(self, trial: optuna.Trial, objective: str, mlflow: Any) -> None:
        self.trial, self.objective, self.mlflow = trial, objective, mlflow

    def on_epoch_end(self, row: dict) -> bool:
        self.trial.report(row[self.objective], row["epoch"])
        if self.mlflow is not None:
            self.mlflow.log_metric(self.objective, row[self.objective], step=row["epoch"])
        if self.trial.should_prune():
            if self.mlflow is not None:
                self.mlflow.set_tag("optuna.state", "PRUNED")
            raise optuna.TrialPruned(f"epoch {row['epoch']}: {self.objective} {row[self.objective]:.4f}")
        return False


@contextlib.contextmanager
def mlflow_trial(number: int, values: dict[str, Any]) -> Iterator[Any]:
    """An MLflow run nested under the search's run for one trial (its values as parameters, its
    metric per epoch), when MLflow tracks this run; else nothing (``None``)."""
    mlflow = sys.modules.get("mlflow")  # imported by kedro-mlflow when tracking is on
    if mlflow is None or mlflow.active_run() is None:
        yield None
        return
    with mlflow.start_run(run_name=f"trial {number}", nested=True):
        mlflow.log_params({**values, "optuna.trial": number})
        yield mlflow


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, seconds and each searched setting."""
    rows = [{"trial": t.number, "state": t.state.name, "started": t.datetime_start.isoformat(),
             "value": t.value if t.value is not None else _last(t.intermediate_values),
             "epochs": max(t.intermediate_values, default=0),
             "seconds": t.duration.total_seconds() if t.duration else None, **t.params}
            for t in study.get_trials(deepcopy=False)]
    return pd.DataFrame(rows)


def _last(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


def best_settings(study: optuna.Study, dataset: str) -> dict[str, Any]:
    """The best trial's settings as a parameters file: ``{dataset: {train: {max_lr: ...}}}``."""
    nested: dict[str, dict] = {}
    for name, value in study.best_trial.params.items():
        section, setting = name.split(".", 1)
        nested.setdefault(section, {})[setting] = value
    return {dataset: nested}


def plot_trials(table: pd.DataFrame, objective: str, direction: str) -> Figure:
    """Each trial's value (pruned ones at their last report, hollow) and the best so far."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    complete = table[table["state"] == "COMPLETE"]
    ax.scatter(complete["trial"], complete["value"], label="complete")
    pruned = table[table["state"] == "PRUNED"]
    if len(pruned):
        ax.scatter(pruned["trial"], pruned["value"], facecolors="none", edgecolors="grey", label="pruned")
    if len(complete):
        best = complete["value"].cummax() if direction == "maximize" else complete["value"].cummin()
        ax.step(complete["trial"], best, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel=objective, title="Hyperparameter search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
