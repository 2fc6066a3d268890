"""Nodes of the hyperparameter search (the search itself is ``vision_pipelines.tuning``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ... import engine, lineage
from ...cache import ImageCache
from ...config import ComputeConfig, ImageConfig, ModelConfig, TrainConfig, TuneConfig

log = logging.getLogger(__name__)


def search_hyperparameters(image_cache: ImageCache, data_report: dict[str, Any], tune_study: Path,
                           model: ModelConfig, images: ImageConfig, train: TrainConfig, compute: ComputeConfig,
                           tune: TuneConfig, dataset: str = "<dataset>") -> tuple[dict[str, Any], dict[str, Any]]:
    """Run (or continue) the search; returns the trials report and the best settings, as a
    parameters file for ``conf/local`` (the report also gives them as ``--params``)."""
    if data_report.get("errors"):
        raise ValueError("the data cannot be trained on (see data_report.json): " + "; ".join(data_report["errors"]))
    lineage.report_matches_cache(data_report, image_cache)
    if not tune.space:
        raise ValueError("tune.space is empty: name the settings to search, e.g. "
                         "{train.max_lr: {low: 1.0e-3, high: 1.0e-1, log: true}} (docs/tuning.md)")
    tuning = _tuning()
    sections = {"model": model, "train": train}
    current = {name: getattr(sections[name.split(".")[0]], name.split(".", 1)[1]) for name in tune.space}
    Path(tune_study).parent.mkdir(parents=True, exist_ok=True)
    study = tuning.open_study(f"sqlite:///{Path(tune_study)}", tune)

    def train_trial(values: dict[str, Any], pruning) -> float:
        changed = tuning.with_values(sections, values)
        log.info("trial: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in values.items()))
        job = engine.TrainingJob(image_cache, changed["model"], images, changed["train"], compute)
        history = engine.train(job, [pruning]).history.set_index("epoch")
        return float(history[tune.objective].iloc[-1])

    tuning.search(study, tune, current, train_trial)
    table = tuning.trials_table(study)
    best = tuning.best_settings(study, dataset)
    params = ",".join(f"{dataset}.{name}={value}" for name, value in study.best_trial.params.items())
    log.info("best of %d trials: trial %d, %s %.4f (%d pruned); to use it: --params=\"%s\"", len(table),
             study.best_trial.number, tune.objective, study.best_value, (table["state"] == "PRUNED").sum(), params)
    report = {"study": tune.study, "objective": tune.objective, "direction": tuning.DIRECTIONS[tune.objective],
              "best_trial": study.best_trial.number, "best_value": study.best_value, "best_params": params,
              "configured": current, "trials": table.astype(object).where(table.notna(), None).to_dict("records"),
              "pruned": int((table["state"] == "PRUNED").sum())}
    return report, best


def plot_search(tune_report: dict[str, Any]) -> Figure:
    return _tuning().plot_trials(pd.DataFrame(tune_report["trials"]), tune_report["objective"],
                              tune_report["direction"])


def _tuning():
    """``vision_pipelines.tuning``, imported when a search runs: Optuna is an optional extra."""
    try:
        from ... import tuning
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the <dataset>_tune pipeline needs Optuna ({error}): "
                                  "pip install -e \".[tune]\"") from error
    return tuning
