"""The throughput benchmark runs end to end on a tiny configuration and records what it claims.

Speed targets are never asserted here: they live in benchmarks/results/, measured on purpose.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import PROJECT_ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_records_three_paths_and_both_ratios(tmp_path: Path) -> None:
    bench = load_script("train_throughput")
    folder = bench.generate_images(tmp_path / "images", classes=3, per_class=8, size=20)
    record = bench.measure(folder, size=16, width=4, batch_size=8, steps=2, warmup=1, repeats=1, workers=0,
                           device_setting="cpu")
    json_path, md_path = bench.write_results(record, tmp_path / "results")
    saved = json.loads(json_path.read_text())
    assert set(saved["images_per_second"]) == {"project", "reference", "ceiling"}
    assert all(rate > 0 for rate in saved["images_per_second"].values())
    rates = saved["images_per_second"]
    assert saved["ratios"]["project_over_ceiling"] == round(rates["project"] / rates["ceiling"], 3)
    assert {"date", "device", "torch", "cores", "peak_memory_mb", "command"} <= set(saved)
    table = md_path.read_text()
    assert "| project |" in table and "project / reference" in table
