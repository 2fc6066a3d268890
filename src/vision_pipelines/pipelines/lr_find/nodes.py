"""Nodes of the learning-rate finder, and ``suggested_max_lr`` for ``train.max_lr: auto``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from ... import engine, lineage, lr_finder, recipe
from ...cache import ImageCache
from ...config import ComputeConfig, ImageConfig, LRFindConfig, ModelConfig, TrainConfig
from ...loader import Loader
from ...models import build_model
from ...versions import loadable, records_for

log = logging.getLogger(__name__)

MIN_STEPS = 20  # a small training set still gets a curve of at least this many steps
# Train settings that do not change the range test's curve (it sets the rate itself).
NOT_IN_TEST = ("max_lr", "epochs", "pct_start", "keep", "resume", "compile", "deterministic", "distributed")


def find_learning_rate(image_cache: ImageCache, data_report: dict[str, Any], model: ModelConfig,
                       images: ImageConfig, train: TrainConfig, compute: ComputeConfig,
                       lr_find: LRFindConfig) -> dict[str, Any]:
    """The range test on the training subset: each rule's suggested rate and the curve."""
    if data_report.get("errors"):
        raise ValueError("the data cannot be trained on (see data_report.json): " + "; ".join(data_report["errors"]))
    lineage.report_matches_cache(data_report, image_cache)
    return range_test_report(image_cache, model, images, train, compute, lr_find)


def range_test_report(cache: ImageCache, model: ModelConfig, images: ImageConfig, train: TrainConfig,
                      compute: ComputeConfig, lr_find: LRFindConfig) -> dict[str, Any]:
    """Run the range test on ``cache``'s training images; the report ``suggested_max_lr`` reads."""
    engine.seed_everything(train.seed)
    network = build_model(model, images.channels, len(cache.class_names))
    loader = Loader.create(engine.subset_images(cache, "train", engine.memory_limit_bytes(images)),
                           cache.labels("train"), images.mean, images.std, train.batch_size, compute,
                           crop_padding=train.crop_padding, flip=train.flip,
                           generator=torch.Generator().manual_seed(train.seed))
    if model.whiten:  # the test starts where training does
        recipe.whiten_first_convolution(network, loader)
    steps = min(lr_find.steps, max(MIN_STEPS, train.epochs * len(loader)))
    log.info("learning-rate range test: %d steps from %g to %g, %s, batch %d, on %s", steps, lr_find.start,
             lr_find.end, train.optimizer, train.batch_size, loader.device)
    curve = lr_finder.range_test(network, loader, dataclasses.replace(train, max_lr=lr_find.start),
                                 lr_find.start, lr_find.end, steps)
    suggestions = lr_finder.suggest(curve)
    configured = None if train.max_lr == "auto" else train.max_lr
    log.info("suggested max_lr: %s (%s is used by train.max_lr=auto; configured: %s)",
             ", ".join(f"{rule} {lr:.3g}" for rule, lr in suggestions.items()), lr_find.rule, configured)
    return {"suggestions": suggestions, "rule": lr_find.rule, "suggested_max_lr": suggestions[lr_find.rule],
            "configured_max_lr": configured, "fits": fits(cache, model, images, train, lr_find),
            "image_cache": cache.fingerprint, "steps": len(curve),
            "curve": curve.astype(float).to_dict(orient="list")}


def fits(cache: ImageCache, model: ModelConfig, images: ImageConfig, train: TrainConfig,
         lr_find: LRFindConfig) -> str:
    """What a range test's curve depends on: the training data and the settings it ran with."""
    tested = {k: v for k, v in dataclasses.asdict(train).items() if k not in NOT_IN_TEST}
    key = (cache.fingerprint, dataclasses.asdict(model), dataclasses.asdict(images), tested,
           (lr_find.start, lr_find.end, lr_find.steps))
    return hashlib.sha256(repr(key).encode()).hexdigest()


def plot_range_test(lr_find_report: dict[str, Any]) -> Figure:
    return lr_finder.plot(pd.DataFrame(lr_find_report["curve"]), lr_find_report["suggestions"],
                          lr_find_report["rule"], lr_find_report["configured_max_lr"])


def suggested_max_lr(reports: Path | None, cache: ImageCache, model: ModelConfig, images: ImageConfig,
                     train: TrainConfig, compute: ComputeConfig, lr_find: LRFindConfig) -> TrainConfig:
    """``train`` with ``max_lr: auto`` replaced by the newest kept range test of the same data
    and settings (``reports``: the versions folder of ``<dataset>.lr_find_report``), or by a
    range test run now when none fits; logs which."""
    wanted = fits(cache, model, images, train, lr_find)
    for version, report in _kept_reports(reports):
        if report.get("fits") == wanted:
            lr = report["suggestions"][lr_find.rule]
            log.info("train.max_lr=auto: %.3g, the %s suggestion of the range test %s", lr, lr_find.rule, version)
            return dataclasses.replace(train, max_lr=lr)
    log.info("train.max_lr=auto: no kept range test fits these data and settings; running one now")
    lr = range_test_report(cache, model, images, train, compute, lr_find)["suggested_max_lr"]
    log.info("train.max_lr=auto: %.3g, the %s suggestion of the range test just run", lr, lr_find.rule)
    return dataclasses.replace(train, max_lr=lr)


def _kept_reports(folder: Path | None):
    """(version, report) of each finished run's range test in ``folder``, newest first."""
    if folder is None or not Path(folder).is_dir():
        return
    versions = sorted((p.name for p in Path(folder).iterdir() if (p / Path(folder).name).is_file()), reverse=True)
    for version in loadable(versions, records_for(PurePosixPath(folder)), str(folder)):
        try:
            yield version, json.loads((Path(folder) / version / Path(folder).name).read_text())
        except (OSError, ValueError):
            continue  # a damaged report is no suggestion
