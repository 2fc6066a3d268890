"""Training step time on a CPU that other processes compete for: ``compute.threads`` auto vs fixed.

The step is the project's ``engine.TrainStep`` with a dataset's ``--env=cpu`` recipe (fruits by
default: ResNet9 width 16, 32 px, batch 32) on synthetic uint8 images of that shape, through the
training ``Loader`` (crop, flip, normalise). For each load (0, 1, 2 competing CPU-bound processes,
which the script starts and stops itself) and each policy (``auto``, then fixed counts), it runs
``--steps`` steps under a fresh ``ThreadPolicy``, as a run would (``auto``: the start-time trial
on a copy, then its timed steps, re-trials included), and records the median and mean step time.

    python benchmarks/thread_contention.py                      # fruits' CPU recipe, 40 steps each
    python benchmarks/thread_contention.py --steps 10 --loads 0 1   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import machine_line, machine_record, project_parameters, write_record
from vision_pipelines import engine
from vision_pipelines.config import ComputeConfig, ImageConfig, ModelConfig, TrainConfig, parse
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.models import build_model
from vision_pipelines.threads import ThreadPolicy, available_cores

CLASSES = 10


class CompetingLoad:
    """``count`` CPU-bound processes for the duration of a ``with`` block."""

    def __init__(self, count: int) -> None:
        self.count, self.processes = count, []

    def __enter__(self) -> CompetingLoad:
        # a bare interpreter that never sleeps: no imports, so it competes from its first second
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for process in self.processes:
            process.terminate()
            process.wait()


def recipe(dataset: str, env: str, compute: dict[str, Any]
           ) -> tuple[ImageConfig, ModelConfig, TrainConfig, ComputeConfig]:
    params = project_parameters(dataset, env)
    return (parse(ImageConfig, params["images"], "images"), parse(ModelConfig, params["model"], "model"),
            parse(TrainConfig, {**params["train"], "resume": False}, "train"),
            parse(ComputeConfig, {**params.get("compute", {}), **compute}, "compute"))


def step_times(setting: int | str, steps: int, images: ImageConfig, model: ModelConfig, train: TrainConfig,
               compute: ComputeConfig) -> tuple[list[float], int]:
    """Wall seconds of each of ``steps`` training steps under ``setting``, and the count used last."""
    compute = ComputeConfig(**{**compute.__dict__, "threads": setting})
    pixels = torch.randint(0, 256, (steps * train.batch_size, images.channels, images.size, images.size),
                           dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(len(pixels)) % CLASSES
    loader = Loader.create(MemoryImages(pixels), labels, images.mean, images.std, train.batch_size, compute,
                           crop_padding=train.crop_padding, flip=train.flip)
    engine.seed_everything(train.seed)
    network = build_model(model, images.channels, CLASSES)
    times: list[float] = []
    with ThreadPolicy.for_device(setting, loader.device) as threads:
        if threads.auto:
            threads.calibrate(engine.probe_step(network, loader, train))
        loader.generator = torch.Generator().manual_seed(train.seed)
        step = engine.TrainStep(network, train, loader, total_steps=len(loader))
        for batch in loader:
            started = time.perf_counter()
            threads.timed(step, *batch)
            times.append(time.perf_counter() - started)
        return times, torch.get_num_threads()


def measure(dataset: str, env: str, loads: list[int], settings: list[int | str], steps: int,
            overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A row per load and setting; ``overrides`` (per section) change the recipe (tests: tiny)."""
    configs = recipe(dataset, env, {"device": "cpu"})
    images, model, train, compute = (dataclasses.replace(config, **(overrides or {}).get(config.section, {}))
                                     for config in configs)
    no_images = MemoryImages(torch.zeros(0, images.channels, images.size, images.size, dtype=torch.uint8))
    precision = Loader.create(no_images, torch.zeros(0), images.mean, images.std, 1, compute).precision
    rows = []
    step_times(settings[0], 3, images, model, train, compute)  # warm the kernels once, untimed
    for load in loads:
        with CompetingLoad(load):
            for setting in settings:
                load_before = os.getloadavg()[0]
                times, used = step_times(setting, steps, images, model, train, compute)
                rows.append({"competing_processes": load, "threads": setting, "threads_used_last": used,
                             "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
                             "steps": len(times), "load_1min_before": load_before})
                print(rows[-1], flush=True)
    return {**machine_record(torch.device("cpu")), "dataset": dataset, "env": env, "cores_available": available_cores(),
            "setup": {"images": images.size, "width": model.width, "batch_size": train.batch_size,
                      "precision": precision},
            "rows": rows}


def markdown(record: dict[str, Any], note: str) -> list[str]:
    lines = [f"# Training step time under CPU contention ({record['dataset']}, --env={record['env']})", "",
             machine_line(record), "",
             f"ResNet9 width {record['setup']['width']}, {record['setup']['images']} px, batch "
             f"{record['setup']['batch_size']}, {record['setup']['precision']}; synthetic images; "
             f"{record['rows'][0]['steps']} steps per cell (auto: its start-time trial is not counted, its "
             "re-trials are). Median (mean) seconds per step.", ""]
    if note:
        lines += [f"**{note}**", ""]
    settings = list(dict.fromkeys(str(row["threads"]) for row in record["rows"]))
    lines += ["| competing processes | " + " | ".join(f"threads={s}" for s in settings) + " | auto / best fixed |",
              "|---|" + "---|" * (len(settings) + 1)]
    for load in dict.fromkeys(row["competing_processes"] for row in record["rows"]):
        cells = {str(r["threads"]): r for r in record["rows"] if r["competing_processes"] == load}
        fixed = [r["median_s"] for s, r in cells.items() if s != "auto"]
        ratio = f"{cells['auto']['median_s'] / min(fixed):.2f}" if "auto" in cells and fixed else "—"
        lines.append(f"| {load} | " + " | ".join(
            f"{cells[s]['median_s']:.3f} ({cells[s]['mean_s']:.3f})"
            + (f", ended on {cells[s]['threads_used_last']}" if s == "auto" else "") for s in settings)
            + f" | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fruits")
    parser.add_argument("--env", default="cpu")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per cell (default 40)")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="competing processes")
    parser.add_argument("--threads", nargs="+", default=["auto", "2", "1"], help="policies: auto and counts")
    parser.add_argument("--note", default="", help="a line on the machine's state, shown in the results")
    parser.add_argument("--results", type=Path, default=None, help="folder for the results (benchmarks/results)")
    args = parser.parse_args()
    settings = [s if s == "auto" else int(s) for s in args.threads]
    record = measure(args.dataset, args.env, args.loads, settings, args.steps)
    record["note"] = args.note
    write_record(record, markdown(record, args.note), "thread_contention_cpu",
                 *([args.results] if args.results else []))


if __name__ == "__main__":
    main()
