"""The learning-rate range test, its suggestion rules and ``<dataset>_lr_find`` / ``max_lr: auto``."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CPU, IMAGES, MODEL, build_cache, fast_params, latest, make_folders_dataset, run_kedro, write_cache
from vision_pipelines import lr_finder, recipe
from vision_pipelines.config import ConfigError, LRFindConfig, TrainConfig
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.models import build_model, first_convolution
from vision_pipelines.pipelines.lr_find.nodes import range_test_report

FALL_START, FALL_END = 1e-4, 1e-1  # the synthetic curve falls between these rates


def synthetic_curve() -> pd.DataFrame:
    """Flat at 2.3 up to FALL_START, a cosine-shaped fall to 0.5 at FALL_END (steepest halfway in
    log rate), then an explosion: the shape of a real range test."""
    lrs = lr_finder.schedule(1e-7, 10, 100)
    t = np.clip(np.log(lrs / FALL_START) / np.log(FALL_END / FALL_START), 0, None)
    loss = np.where(t <= 1, 1.4 + 0.9 * np.cos(np.pi * np.minimum(t, 1)), 0.5 * np.exp(6 * (t - 1)))
    return pd.DataFrame({"step": np.arange(1, 101), "lr": lrs, "loss": loss, "smoothed": loss})


def log_position(lr: float) -> float:
    """Where ``lr`` lies in the falling stretch: 0 at its top, 1 at its bottom."""
    return math.log(lr / FALL_START) / math.log(FALL_END / FALL_START)


def test_valley_is_about_halfway_down_the_falling_stretch() -> None:
    assert 0.3 < log_position(lr_finder.suggest(synthetic_curve())["valley"]) < 0.7


def test_minimum_is_a_tenth_of_the_rate_at_the_lowest_loss() -> None:
    curve = synthetic_curve()
    suggested = lr_finder.suggest(curve)["minimum"]
    assert suggested == pytest.approx(curve.loc[curve["smoothed"].idxmin(), "lr"] / 10)
    assert 0 < log_position(suggested) < 1


def test_steepest_is_where_the_loss_falls_fastest() -> None:
    assert 0.4 < log_position(lr_finder.suggest(synthetic_curve())["steepest"]) < 0.6


def test_a_curve_that_explodes_at_once_is_refused_naming_the_setting() -> None:
    curve = synthetic_curve().iloc[:4].assign(smoothed=[2.3, 50.0, 1e4, float("nan")])
    with pytest.raises(ConfigError, match=r"lr_find\.start=1e-07: the learning-rate range test diverged at once"):
        lr_finder.suggest(curve)


def test_the_range_test_leaves_the_weights_and_batch_norm_statistics_untouched() -> None:
    torch.manual_seed(0)
    network = build_model(MODEL, 3, 3)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    loader = Loader.create(MemoryImages(images), torch.arange(16) % 3, [0.5] * 3, [0.5] * 3, 8, CPU,
                           generator=torch.Generator().manual_seed(0))
    curve = lr_finder.range_test(network, loader, TrainConfig(), 1e-5, 1.0, 12)
    assert len(curve) > 6 and curve["lr"].is_monotonic_increasing and curve["loss"].notna().all()
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_range_test_starts_from_the_whitened_first_convolution_as_training_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``model.whiten`` a rate suggested from a random first convolution would be for
    another network than the one trained."""
    raw = make_folders_dataset(tmp_path / "images", train=8, test=1)
    cache = write_cache(build_cache(raw), tmp_path / "cache")
    tested = {}

    def record_network(network, loader, train, start, end, steps) -> pd.DataFrame:
        tested.update(first=first_convolution(network).weight.detach().clone(), loader=loader)
        return synthetic_curve()

    monkeypatch.setattr(lr_finder, "range_test", record_network)
    model = dataclasses.replace(MODEL, whiten=True)
    range_test_report(cache, model, IMAGES, TrainConfig(epochs=1, batch_size=4), CPU, LRFindConfig())
    filters = recipe.whitening_filters(recipe.patch_covariance(tested["loader"], (3, 3)), model.width)
    torch.testing.assert_close(tested["first"].flatten(1), filters)


def test_lr_find_pipeline_writes_its_report_and_plot_and_max_lr_auto_uses_it(kedro_project: Path, tmp_path: Path,
                                                                              project_log) -> None:
    images = make_folders_dataset(tmp_path / "images", train=12, test=2)
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(images), "lr_find.steps": 12,
                                      "images.size": 8, "model.width": 4, "train.epochs": 1})
    run_kedro(kedro_project, "fruits_lr_find", params)
    reporting = kedro_project / "data" / "08_reporting" / "fruits"
    report = json.loads(latest(reporting / "lr_find.json").read_text())
    assert set(report["suggestions"]) == {"valley", "minimum", "steepest"}
    assert report["suggested_max_lr"] == report["suggestions"]["valley"]
    assert len(report["curve"]["lr"]) == report["steps"] <= 12
    assert latest(reporting / "lr_find.png").stat().st_size > 0
    assert not (kedro_project / "data" / "06_models" / "fruits").exists()  # no weights, no checkpoint

    run_kedro(kedro_project, "fruits", {**params, "fruits.train.max_lr": "auto"}, tags=["train"])
    card = json.loads(latest(kedro_project / "data" / "06_models" / "fruits" / "model_card.json").read_text())
    assert card["training"]["config"]["max_lr"] == report["suggestions"]["valley"]
    assert "the valley suggestion of the range test" in project_log.text


def test_an_lr_find_that_diverges_at_once_names_the_setting(kedro_project: Path, tmp_path: Path) -> None:
    images = make_folders_dataset(tmp_path / "images", train=12, test=2)
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(images), "images.size": 8,
                                      "model.width": 4, "lr_find.start": 1e3, "lr_find.end": 1e8, "lr_find.steps": 12})
    with pytest.raises(ConfigError, match=r"fruits\.lr_find\.start=1e\+03: the learning-rate range test diverged"):
        run_kedro(kedro_project, "fruits_lr_find", params)


def test_max_lr_is_a_positive_number_or_auto() -> None:
    assert TrainConfig(max_lr="auto").max_lr == "auto" and TrainConfig(max_lr=1).max_lr == 1.0
    with pytest.raises(ConfigError, match="train.max_lr must be a positive number or auto, got 'fast'"):
        TrainConfig(max_lr="fast")
