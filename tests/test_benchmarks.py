"""The benchmark scripts run end to end on tiny configurations and record what they claim.

Speed targets are never asserted here: they live in benchmarks/results/, measured on purpose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from conftest import PROJECT_ROOT, make_class_folders
from vision_pipelines.config import ImageConfig, TrainConfig
from vision_pipelines.engine import TrainStep
from vision_pipelines.models import ResNet9

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))  # the scripts import their shared module
import cifar10_time_budget  # noqa: E402
import common  # noqa: E402
import train_throughput  # noqa: E402


def test_throughput_benchmark_records_three_paths_and_both_ratios(tmp_path: Path) -> None:
    folder = common.generate_class_folders(tmp_path / "images", classes=3, per_class=8, size=16)
    setup = train_throughput.make_setup(
        "cifar10", "cpu", folder, {"images": {"size": 16}, "model": {"width": 4},
                                   "train": {"batch_size": 8, "device": "cpu"}},
        steps=2, windows=2, workers=1)
    record = train_throughput.measure(setup, isolate=False)  # in this process: fast, same code
    json_path, md_path = common.write_record(record, train_throughput.markdown(record), "throughput",
                                             tmp_path / "results")

    saved = json.loads(json_path.read_text())
    assert {"date", "device", "torch", "cores", "command", "setup", "paths", "ratios"} <= set(saved)
    assert set(saved["paths"]) == {"project", "reference", "ceiling"}
    for path in saved["paths"].values():
        assert path["images_per_second"] > 0 and len(path["window_images_per_second"]) == 2
        assert path["peak_memory_mib"] > 0
    rates = {name: path["images_per_second"] for name, path in saved["paths"].items()}
    assert saved["ratios"]["project_over_ceiling"] == round(rates["project"] / rates["ceiling"], 3)
    assert saved["ratios"]["project_over_reference"] == round(rates["project"] / rates["reference"], 3)
    assert saved["setup"]["train"]["batch_size"] == 8 and saved["setup"]["model"]["width"] == 4
    table = md_path.read_text()
    for row in ("| project |", "| reference |", "| ceiling |", "project / ceiling", "project / reference"):
        assert row in table


def test_time_budget_benchmark_trains_both_recipes_and_records_accuracy(tmp_path: Path) -> None:
    classes = ["airplane", "bird", "cat"]
    data = tmp_path / "cifar"
    make_class_folders(data / "train", classes, 10, size=(32, 32))
    make_class_folders(data / "test", classes, 3, size=(32, 32), start_seed=300)
    for recipe in ("tutorial", "fast"):
        result = cifar10_time_budget.run_recipe(recipe, data, budget_seconds=1.0, device="cpu", width=4)
        assert result["epochs"] >= 1 and result["train_seconds"] > 0
        assert result["evaluated_on"] == "test" and result["test_images"] == 9
        assert 0 <= result["accuracy"] <= 1
        assert f"cifar10.train.epochs={result['epochs']}" in result["kedro_command"]
    assert result["settings"]["batch_size"] == 512 and result["settings"]["label_smoothing"] == 0.2


def test_one_cycle_schedule_accepts_a_warm_up_of_exactly_one_step() -> None:
    # 4 steps at pct_start 0.25 made torch's OneCycleLR divide by zero (the budget benchmark's
    # two-epoch timing run on a small dataset hit it).
    step = TrainStep(ResNet9(3, 3, 4), TrainConfig(pct_start=0.25, device="cpu"), ImageConfig(),
                     torch.device("cpu"), total_steps=4)
    rates = []
    for _ in range(4):
        rates.append(step.scheduler.get_last_lr()[0])
        step.optimizer.step()
        step.scheduler.step()
    assert rates[0] < rates[1] and rates[1] > rates[2] > rates[3]  # up for one step, then down
