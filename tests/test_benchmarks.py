"""The benchmark scripts run end to end on tiny configurations and record what they claim.

Speed targets are never asserted here: they live in benchmarks/results/, measured on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, make_class_folders
from vision_pipelines.config import ComputeConfig, ModelConfig, TrainConfig
from vision_pipelines.engine import TrainStep
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.models import ResNet9

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))  # the scripts import their shared module
import cifar10_cpu_full
import cifar10_time_budget
import common
import gpu_suite
import hardware_peak
import pipelines_on_samples
import thread_contention
import train_throughput

CLASSES = ["airplane", "bird", "cat"]


def test_throughput_benchmark_records_three_paths_and_both_ratios(tmp_path: Path) -> None:
    folder = common.generate_class_folders(tmp_path / "images", classes=3, per_class=8, size=16)
    setup = train_throughput.make_setup(
        "cifar10", "cpu", folder, {"images": {"size": 16, "decode_workers": 1}, "model": {"width": 4},
                                   "compute": {"device": "cpu"}, "train": {"batch_size": 8}},
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
    assert saved["paths"]["project"]["cache_build_seconds"] >= 0  # the cache is decoded once, before timing
    rates = {name: path["images_per_second"] for name, path in saved["paths"].items()}
    assert saved["ratios"]["project_over_ceiling"] == round(rates["project"] / rates["ceiling"], 3)
    assert saved["ratios"]["project_over_reference"] == round(rates["project"] / rates["reference"], 3)
    assert saved["setup"]["train"]["batch_size"] == 8 and saved["setup"]["model"]["width"] == 4
    assert saved["setup"]["compute"]["device"] == "cpu"
    table = md_path.read_text()
    for row in ("| project |", "| reference |", "| ceiling |", "project / ceiling", "project / reference"):
        assert row in table


def test_time_budget_benchmark_trains_both_recipes_and_records_accuracy(tmp_path: Path) -> None:
    data = tmp_path / "cifar"
    make_class_folders(data / "train", CLASSES, 10, size=(32, 32))
    make_class_folders(data / "test", CLASSES, 3, size=(32, 32), start_seed=300)
    for recipe in ("tutorial", "fast"):
        result = cifar10_time_budget.run_recipe(recipe, data, budget_seconds=1.0, device="cpu", width=4)
        assert result["epochs"] >= 1 and result["train_seconds"] > 0
        assert result["evaluated_on"] == "test" and result["test_images"] == 9
        assert 0 <= result["accuracy"] <= 1
        assert f"cifar10.train.epochs={result['epochs']}" in result["kedro_command"]
        assert "cifar10.compute.device=cpu" in result["kedro_command"]
    assert result["settings"]["batch_size"] == 512 and result["settings"]["label_smoothing"] == 0.2


TINY_CIFAR10 = "train.epochs=1,model.width=4,images.size=16,split.val_fraction=0.2"


def made_up_cifar10(root: Path) -> Path:
    """``train/<class>`` x 10 and ``test/<class>`` x 3 made-up 32 px images."""
    make_class_folders(root / "train", CLASSES, 10, size=(32, 32))
    make_class_folders(root / "test", CLASSES, 3, size=(32, 32), start_seed=300)
    return root


def test_pipelines_benchmark_reads_the_newest_version_of_each_output(tmp_path: Path) -> None:
    data = made_up_cifar10(tmp_path / "cifar")
    row = pipelines_on_samples.run_pipeline("cifar10", data, "cpu", tmp_path / "work", TINY_CIFAR10)
    assert row["epochs"] == 1 and row["image_size"] == 16 and row["train_images"] == 24
    assert row["evaluated_on"] == "test" and row["images_evaluated"] == 9 and 0 <= row["accuracy"] <= 1
    assert "cifar10.train.epochs=1" in row["command"]


def test_cpu_full_benchmark_records_the_cpu_recipe_the_run_trained_with(tmp_path: Path) -> None:
    data = made_up_cifar10(tmp_path / "cifar")
    run = cifar10_cpu_full.run(data, TINY_CIFAR10, tmp_path / "work", tmp_path / "kedro.log")
    recipe = common.yaml_parameters("cifar10", "cpu")
    assert run["epochs_run"] == 1 and run["train_images"] == 24 and run["test_images"] == 9
    assert run["settings"]["optimizer"] == recipe["train"]["optimizer"]
    assert run["model"]["logit_scale"] == recipe["model"]["logit_scale"] and run["model"]["width"] == 4
    assert 0 <= run["accuracy"] <= 1 and run["load_1min"]["after"] is not None
    assert "cifar10.images.size=16" in cifar10_cpu_full.kedro_params(str(data), TINY_CIFAR10)


@pytest.mark.parametrize(("dataset", "env"), [(d, e) for d in common.SAMPLE_ROOTS for e in ("base", "cpu")]
                         + [("cifar10", "cifar10_fast")])
def test_parameters_read_without_kedro_are_the_ones_kedro_reads(dataset: str, env: str) -> None:
    # The GPU machine has no Kedro: there the suite merges conf/<env> over conf/base itself.
    assert common.yaml_parameters(dataset, env) == common.project_parameters(dataset, env)


def test_gpu_suite_data_travels_as_one_archive(tmp_path: Path) -> None:
    source = tmp_path / "cifar10-full"
    make_class_folders(source / "train", CLASSES, 2)
    make_class_folders(source / "test", CLASSES, 1, start_seed=300)
    archive = gpu_suite.pack(source, tmp_path / ".gpu_data" / "cifar10-full.tar.gz")
    root = gpu_suite.unpack(archive, tmp_path / "device")
    files = sorted(p.relative_to(source) for p in source.rglob("*.jpg"))
    assert sorted(p.relative_to(root) for p in root.rglob("*.jpg")) == files and len(files) == 9
    assert all((root / file).read_bytes() == (source / file).read_bytes() for file in files)


def test_gpu_suite_smoke_runs_without_kedro_or_cuda_and_measures_nothing(tmp_path: Path) -> None:
    # As on the GPU machine: no Kedro (an importable `kedro` that refuses to load); and no CUDA.
    (tmp_path / "no_kedro" / "kedro").mkdir(parents=True)
    (tmp_path / "no_kedro" / "kedro" / "__init__.py").write_text('raise ImportError("no Kedro here")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "no_kedro"), "CUDA_VISIBLE_DEVICES": ""}
    finished = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--smoke", "--results", str(tmp_path / "results"),
         "--workdir", str(tmp_path / "work")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    record = json.loads((tmp_path / "results" / "gpu_suite_smoke_cpu.json").read_text())
    assert record["smoke"] and record["device_type"] == "cpu" and record["torch"] == torch.__version__
    sections = record["sections"]
    assert list(sections) == list(gpu_suite.SECTIONS)
    assert all(s["status"].startswith("skipped: no CUDA, not measured") for s in sections.values()), sections
    for name in ("throughput_cifar10", "throughput_fruits"):
        assert set(sections[name]["images_per_second"]) == {"project", "reference", "ceiling"}
    assert sections["cifar10_fast"]["runs"] and 0 <= sections["cifar10_fast"]["runs"][0]["test_accuracy"] <= 1
    assert sections["fruits_epoch"]["classes"] == 131 and len(sections["fruits_epoch"]["epoch_seconds"]) == 2
    # Seeded CPU training repeats exactly; a killed run resumed, and one launched process, give the same model.
    assert sections["determinism"]["deterministic"]["identical"]
    assert 1 <= sections["resume"]["killed_after_epoch"] < sections["resume"]["epochs"]
    assert sections["resume"]["identical_to_uninterrupted"]
    assert sections["ddp"]["backend"] == "gloo" and isinstance(sections["ddp"]["identical_weights"], bool)
    table = (tmp_path / "results" / "gpu_suite_smoke_cpu.md").read_text()
    assert "nothing in this file is a GPU measurement" in table
    assert table.count("Status: skipped: no CUDA") == len(gpu_suite.SECTIONS)


def test_gpu_suite_refuses_to_measure_without_cuda(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--results", str(tmp_path)],
                              cwd=PROJECT_ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode != 0 and "no CUDA device" in finished.stderr
    assert not list(tmp_path.iterdir())


def test_one_cycle_schedule_accepts_a_warm_up_of_exactly_one_step() -> None:
    # 4 steps at pct_start 0.25 made torch's OneCycleLR divide by zero (the budget benchmark's
    # two-epoch timing run on a small dataset hit it).
    loader = Loader.create(MemoryImages(torch.empty(0, 3, 8, 8, dtype=torch.uint8)), torch.empty(0, dtype=torch.int64),
                           [0.5] * 3, [0.5] * 3, 8, ComputeConfig(device="cpu"))
    step = TrainStep(ResNet9(3, 3, 4), TrainConfig(pct_start=0.25), loader, total_steps=4)
    rates = []
    for _ in range(4):
        rates.append(step.scheduler.get_last_lr()[0])
        step.optimizer.step()
        step.scheduler.step()
    assert rates[0] < rates[1] and rates[1] > rates[2] > rates[3]  # up for one step, then down


def test_thread_contention_benchmark_times_each_policy_under_its_own_load(tmp_path: Path) -> None:
    with thread_contention.CompetingLoad(1) as load:
        assert len(load.processes) == 1 and load.processes[0].poll() is None  # running
    assert load.processes[0].poll() is not None  # stopped, not left running
    tiny = {"images": {"size": 8}, "model": {"width": 4}, "train": {"batch_size": 4}}
    record = thread_contention.measure("fruits", "cpu", [0], ["auto", 1], steps=2, overrides=tiny)
    assert [(row["competing_processes"], row["threads"]) for row in record["rows"]] == [(0, "auto"), (0, 1)]
    assert all(row["steps"] == 2 and row["median_s"] > 0 for row in record["rows"])
    assert record["rows"][1]["threads_used_last"] == 1 and record["setup"]["width"] == 4
    _, md_path = common.write_record(record, thread_contention.markdown(record, "busy machine"), "contention",
                                     tmp_path)
    table = md_path.read_text()
    assert "| 0 | " in table and "threads=auto" in table and "**busy machine**" in table


def test_hardware_peak_benchmark_relates_throughput_to_the_measured_peak(tmp_path: Path) -> None:
    tiny = {"images": {"size": 12}, "model": {"width": 4}, "train": {"batch_size": 4}, "compute": {"device": "cpu"}}
    record = hardware_peak.measure("cifar10", "cpu", tiny, steps=2, size=64)
    assert record["peak_flops"]["fp32"] > 0 and record["train_flops_per_image"] > 0
    peak = record["peak_flops"][record["precision"]]
    for path in ("train_stage", "model_only"):
        rate = record["images_per_second"][path]
        assert rate > 0 and record["fraction_of_peak"][path] == rate * record["train_flops_per_image"] / peak
    _, md_path = common.write_record(record, hardware_peak.markdown(record, ""), "peak", tmp_path)
    assert "| train stage |" in md_path.read_text() and "| model only |" in md_path.read_text()


def test_hardware_peak_variants_leave_out_what_the_recipe_already_is() -> None:
    frozen, trained = ModelConfig(name="airbench", whiten="frozen"), ModelConfig(name="airbench", whiten=True)
    assert {"whitening trained", "fp32"} <= set(hardware_peak.chosen_variants(frozen, configured_bf16=True))
    assert "bf16 autocast" not in hardware_peak.chosen_variants(frozen, configured_bf16=True)
    assert {"bf16 autocast"} <= set(hardware_peak.chosen_variants(trained, configured_bf16=False))
    assert not {"whitening trained", "fp32"} & set(hardware_peak.chosen_variants(trained, configured_bf16=False))
