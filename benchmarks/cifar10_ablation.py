"""The CIFAR-10 `--env=cpu` recipe with each recipe option on and off: an ablation on the full dataset.

    python benchmarks/cifar10_ablation.py                  # every row, two runs at a time, 1 thread each
    python benchmarks/cifar10_ablation.py --rows baseline all --seeds 43 44

Each row is one ``benchmarks/cifar10_cpu_full.py`` run (the user's ``kedro run --pipelines=cifar10
--env=cpu`` on ``../shared/datasets/cifar10-full``, timed) with the row's settings and seed on top of
``OPTIONS_OFF`` (conf/cpu's recipe as it was before it took these options), and the same trained model
evaluated again with multi-crop test-time augmentation toggled (``evaluate.tta_crops``, an
evaluation setting: only evaluation reruns). A row whose results file exists (named after the row
and seed) is read, not run again, so an interrupted ablation continues; ``--rerun`` runs it anyway.

The runs share the machine (``--jobs``, each on ``--threads``): the rows compare accuracy, and their
training times are those of a shared machine; the recipe's own time is a run alone on every core
(``cifar10_cpu_full.py``). Results: ``benchmarks/results/cifar10_ablation_cpu.{json,md}``, each
row's run in ``benchmarks/results/ablation/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from common import PROJECT, RESULTS, machine_line, machine_record, write_record
from vision_pipelines.config import TrainConfig

CONFIGURED_SEED = TrainConfig.seed  # conf/cpu's cifar10 recipe sets none

# The options off: conf/cpu's cifar10 recipe until 2026-12-07 (ResNet9, SGD), which its rows below were run
# against without these settings (the same run: an unset option is off, and ResNet9 was the recipe's network).
RESNET9 = ("model.name=resnet9,model.width=16,train.epochs=10,train.weight_decay=5e-4,train.bn_bias_lr_scale=1.0,"
           "train.batch_size=64,train.optimizer=sgd,train.max_lr=0.06,train.keep=best_val_loss")
OPTIONS_OFF = RESNET9 + ",model.whiten=false,train.flip=random,train.ema=0.0,evaluate.tta_crops=false"
OPTIONS = {  # each recipe option of the ablation: name -> its setting, in the order the rows give them
    "whiten": "model.whiten=true",
    "alternating_flip": "train.flip=alternating",
    "ema": "train.ema=0.99",
    "multi_crop": "evaluate.tta_crops=true",
}
RECIPE_OPTIONS = ",".join(OPTIONS.values())


def all_but(option: str) -> str:
    return ",".join(setting for name, setting in OPTIONS.items() if name != option)


ROWS = {  # name: settings on top of OPTIONS_OFF
    "baseline": "",
    "whiten": OPTIONS["whiten"],
    "alternating_flip": OPTIONS["alternating_flip"],
    "ema": OPTIONS["ema"],
    "all": RECIPE_OPTIONS,
    "all_but_whiten": all_but("whiten"),
    "all_but_alternating_flip": all_but("alternating_flip"),
    "all_but_ema": all_but("ema"),
    "all_12_epochs": RECIPE_OPTIONS + ",train.epochs=12",  # 20 % more training
    # about the same training time, spent on a wider network (width 20 is ~1.4x slower per image, 24 ~2x)
    "all_width20_7_epochs": RECIPE_OPTIONS + ",model.width=20,train.epochs=7",
    "all_width24_5_epochs": RECIPE_OPTIONS + ",model.width=24,train.epochs=5",
}


def row_settings(settings: str, seed: int, threads: int) -> str:
    """``--params`` of a row: later settings override earlier ones."""
    return ",".join(filter(None, [f"compute.threads={threads}", OPTIONS_OFF, settings,
                                  f"train.seed={seed}" if seed != CONFIGURED_SEED else ""]))


def multi_crop(settings: str) -> bool:
    """Whether the row evaluates with multi-crop TTA: the last ``evaluate.tta_crops`` given."""
    given = [setting for setting in settings.split(",") if setting.startswith("evaluate.tta_crops=")]
    return bool(given) and given[-1] == "evaluate.tta_crops=true"


def crops_toggled(settings: str) -> str:
    return "evaluate.tta_crops=false" if multi_crop(settings) else "evaluate.tta_crops=true"


def run_row(name: str, seed: int, settings: str, folder: Path, rerun: bool = False) -> dict:
    """The row's ``cifar10_cpu_full.py`` record: read when it exists (and not ``rerun``), else run."""
    label = f"{name}_{seed}"
    path = folder / f"cifar10_cpu_full_{label}.json"
    if rerun or not path.exists():
        subprocess.run([sys.executable, str(PROJECT / "benchmarks/cifar10_cpu_full.py"), "--label", label,
                        "--params", settings, "--evaluate-variants", crops_toggled(settings),
                        "--results", str(folder), "--log", str(folder / f"{label}.log")],
                       check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def table_row(name: str, seed: int, record: dict) -> dict:
    run, settings = record["run"], record["run"]["settings_given"]
    crops = multi_crop(settings)
    other = next(iter(record["evaluate_variants"].values()))
    return {"row": name, "settings": settings, "seed": seed,
            "accuracy": other if crops else run["accuracy"], "accuracy_multi_crop": run["accuracy"] if crops else other,
            "multi_crop_in_row": crops, "train_seconds": run["train_seconds"], "load_1min": run["load_1min"],
            "precision": run["precision"]}


def markdown(record: dict) -> list[str]:
    lines = ["# CIFAR-10 `--env=cpu`: ablation of the recipe options (full dataset)", "", machine_line(record), "",
             f"Each row: `{record['row_command']}` with the row's settings on top of the recipe without the "
             "options (conf/cpu's until 2026-12-07), "
             f"{record['jobs']} runs at a time on {record['threads']} thread(s) each, 49,000 train / "
             "1,000 val / 10,000 test images. *flip TTA* is the recipe's evaluation; *+ multi-crop* the same "
             "model evaluated with `evaluate.tta_crops=true` too (the row's own setting is in bold). Training "
             "times are of a shared machine (at least two runs at once; the 1-minute load says how shared): "
             "they are not the recipe's time.", "",
             "| row | seed | settings | precision | test accuracy, flip TTA | + multi-crop | train time "
             "| load (median) |", "|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        plain, crops = f"{row['accuracy']:.2%}", f"{row['accuracy_multi_crop']:.2%}"
        plain, crops = (plain, f"**{crops}**") if row["multi_crop_in_row"] else (f"**{plain}**", crops)
        settings = ",".join(setting for setting in row["settings"].split(",")
                            if not setting.startswith(("compute.threads=", "train.seed="))
                            and setting not in OPTIONS_OFF.split(","))
        lines.append(f"| {row['row']} | {row['seed']} | `{settings or 'the options off'}` | {row['precision']} | "
                     f"{plain} | {crops} | "
                     f"{row['train_seconds']:.0f} s | {row['load_1min']['during_median']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[CONFIGURED_SEED])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (compute.threads)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--rerun", action="store_true", help="run the rows whose results exist again")
    args = parser.parse_args()
    folder = args.results / "ablation"
    folder.mkdir(parents=True, exist_ok=True)
    runs = [(name, seed, row_settings(ROWS[name], seed, args.threads)) for seed in args.seeds for name in args.rows]
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda run: run_row(*run, folder, args.rerun), runs))
    record = {**machine_record(torch.device("cpu")), "jobs": args.jobs, "threads": args.threads,
              "row_command": "python benchmarks/cifar10_cpu_full.py --params <settings>",
              "rows": [table_row(name, seed, each) for (name, seed, _), each in zip(runs, records)]}
    write_record(record, markdown(record), "cifar10_ablation_cpu", args.results)


if __name__ == "__main__":
    main()
