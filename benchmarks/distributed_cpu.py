"""Data-parallel training on one CPU machine: 2 processes (gloo) against 1, same global batch.

    python benchmarks/distributed_cpu.py                        # 500 train + 100 test images per class
    python benchmarks/distributed_cpu.py --train-per-class 100 --epochs 2   # a quicker look
    python benchmarks/distributed_cpu.py --seeds 43 44          # more seeds: the spread of accuracy
    python benchmarks/distributed_cpu.py --configs 1x2 2x1      # processes x torch threads each

Each run is the project's own ``kedro run --pipelines=cifar10 --env=cpu`` (its CPU recipe: ResNet9
width 16, batch 64, 10 epochs) in a throw-away copy of the project, on a class-balanced subset of
``cifar10-full`` (the first images of each class folder, copied to a temporary folder outside the
project), with ``train.distributed.nproc_per_node`` 1 or 2. Processes on one machine share its
cores: by default each of 2 processes has 1 torch thread where a lone process has 2, so the
configurations are 1 x 2 (the plain run), 2 x 1 (the distributed run) and 1 x 1 (one of its
processes alone), threads set with OMP_NUM_THREADS. This measures what the distribution costs or
saves on a CPU and whether accuracy stays in the 1-process band; it is the CI set-up, not a
recipe for speed. Results: ``benchmarks/results/distributed_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from common import KEDRO, RESULTS, SAMPLES, latest_version, machine_line, machine_record, project_copy, write_record


def subset(source: Path, target: Path, train_per_class: int, test_per_class: int) -> Path:
    """``target/{train,test}/<class>/``: the first images (sorted by name) of each class of ``source``."""
    for part, count in (("train", train_per_class), ("test", test_per_class)):
        for folder in sorted(p for p in (source / part).iterdir() if p.is_dir()):
            (target / part / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copyfile(image, target / part / folder.name / image.name)
    return target


def run(data: Path, project: Path, processes: int, threads: int, seed: int, epochs: int | None) -> dict[str, Any]:
    """``kedro run --pipelines=cifar10 --env=cpu`` with ``processes`` training processes of
    ``threads`` torch threads each."""
    params = {"cifar10.source.kind": "local", "cifar10.source.path": str(data), "cifar10.train.seed": seed,
              "cifar10.train.distributed.nproc_per_node": processes}
    if epochs is not None:
        params["cifar10.train.epochs"] = epochs
    command = [KEDRO, "run", "--pipelines=cifar10", "--env=cpu",
               "--params=" + ",".join(f"{k}={v}" for k, v in params.items())]
    started = time.time()
    with open(project / "run.log", "w") as log:
        done = subprocess.run(command, cwd=project, stdout=log, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed; see {project / 'run.log'}")
    card = json.loads(latest_version(project / "data/06_models/cifar10/model_card.json").read_text())
    metrics = json.loads(latest_version(project / "data/08_reporting/cifar10/metrics.json").read_text())
    history = pd.read_csv(latest_version(project / "data/08_reporting/cifar10/training_history.csv"))
    training = card["training"]
    return {
        "processes": training["processes"], "threads_per_process": threads, "seed": seed,
        "epochs": int(history["epoch"].max()), "kept_epoch": training["kept_epoch"],
        "batch_size": training["config"]["batch_size"], "train_images": training["train_images"],
        "test_images": metrics["images"], "train_seconds": training["seconds"],
        "seconds_per_epoch": round(float(history["seconds"].iloc[1:].median()), 2),
        "run_seconds": round(time.time() - started, 1), "load_average_after": round(os.getloadavg()[0], 2),
        "test_accuracy": round(metrics["accuracy"], 4),
        "best_val_accuracy": round(float(history["val_accuracy"].max()), 4),
        "kedro_command": f"OMP_NUM_THREADS={threads} " + " ".join(command[:4]).replace(KEDRO, "kedro")
                         + " --params=" + ",".join(f"{k}={v}" for k, v in params.items()),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: mean test accuracy and training time over the seeds."""
    rows = []
    for config in dict.fromkeys((r["processes"], r["threads_per_process"]) for r in runs):
        mine = [r for r in runs if (r["processes"], r["threads_per_process"]) == config]
        rows.append({"processes": config[0], "threads_per_process": config[1], "seeds": len(mine),
                     "test_accuracy": sum(r["test_accuracy"] for r in mine) / len(mine),
                     "train_seconds": sum(r["train_seconds"] for r in mine) / len(mine)})
    return rows


def markdown(record: dict[str, Any]) -> list[str]:
    first = record["runs"][0]
    error = (first["test_accuracy"] * (1 - first["test_accuracy"]) / first["test_images"]) ** 0.5
    lines = ["# Data-parallel training on CPU: 2 processes (gloo) vs 1, same global batch", "",
             machine_line(record), "",
             f"Data: {record['data_note']}. Load average (1 min) when started: {record['load_average']} "
             f"(each run's after it, below: above the core count, other work slowed it down).", "",
             "| processes x threads | seed | epochs | global batch | train time | s/epoch (median) | "
             "test accuracy | best val accuracy | load after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["runs"]:
        lines.append(f"| {r['processes']} x {r['threads_per_process']} | {r['seed']} | {r['epochs']} | "
                     f"{r['batch_size']} | {r['train_seconds']:.0f} s | {r['seconds_per_epoch']:.1f} s | "
                     f"**{r['test_accuracy']:.1%}** | {r['best_val_accuracy']:.1%} | {r['load_average_after']} |")
    lines += ["", f"Mean over seeds ({first['test_images']} test images: one standard error of an accuracy "
                  f"is about {error:.1%}):", "",
              "| processes x threads | test accuracy | train time |", "|---|---|---|"]
    lines += [f"| {s['processes']} x {s['threads_per_process']} | {s['test_accuracy']:.1%} | "
              f"{s['train_seconds']:.0f} s |" for s in record["summary"]]
    lines += ["", "Each run re-made with its Kedro command (the data folder is the temporary subset above):", ""]
    lines += [f"- `{r['kedro_command']}`" for r in record["runs"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SAMPLES / "cifar10-full",
                        help="CIFAR-10 as train/<class> and test/<class> (default: the shared full copy)")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, help="default: the cpu environment's (10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[43])
    parser.add_argument("--configs", nargs="+", default=["1x2", "2x1", "1x1"],
                        help="processes x torch threads per process (default: 1x2 2x1 1x1)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    configs = [tuple(int(n) for n in config.split("x")) for config in args.configs]
    record = {**machine_record(torch.device("cpu")), "load_average": round(os.getloadavg()[0], 2),
              "data": str(args.data.resolve()), "train_per_class": args.train_per_class,
              "test_per_class": args.test_per_class, "runs": []}
    with tempfile.TemporaryDirectory(prefix="distributed_cpu_") as scratch:
        data = subset(args.data.resolve(), Path(scratch) / "cifar10", args.train_per_class, args.test_per_class)
        for seed in args.seeds:
            for processes, threads in configs:
                project = project_copy(Path(scratch) / f"project_{processes}x{threads}_{seed}")
                record["runs"].append(run(data, project, processes, threads, seed, args.epochs))
                print(json.dumps(record["runs"][-1]), flush=True)
    first = record["runs"][0]
    record["data_note"] = (f"`{record['data']}`, the first {args.train_per_class} training and {args.test_per_class} "
                           f"test images of each class: {first['train_images']} train after the validation split "
                           f"(the recipe's split.val_fraction), {first['test_images']} test")
    record["summary"] = summarise(record["runs"])
    lines = markdown(record)
    write_record(record, lines, "distributed_cpu", args.results)


if __name__ == "__main__":
    main()
