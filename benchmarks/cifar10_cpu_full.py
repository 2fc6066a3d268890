"""The CPU profile's real CIFAR-10 accuracy: the user's command on the full dataset, timed.

    python benchmarks/cifar10_cpu_full.py                          # --env=cpu as configured
    python benchmarks/cifar10_cpu_full.py --data /data/cifar10-full --label after
    python benchmarks/cifar10_cpu_full.py --label before --params split.val_fraction=0.2,train.epochs=10

Runs ``kedro run --pipelines=cifar10 --env=cpu --params="cifar10.source.kind=local,
cifar10.source.path=<DATA>[,cifar10.<setting>...]"`` in a throw-away copy of the project (the real data/
is untouched), on a full CIFAR-10 copy (``train/<class>``, ``test/<class>``; default
``../shared/datasets/cifar10-full``). Records test accuracy, training time (the train stage
alone), wall time (the whole command: decoding 60,000 images into the cache, training,
evaluation, plots, submission), the settings the model card reports, the hardware, and the
machine's load (1-minute load average before, during and after the run: on a shared machine a
load above the core count means other work slowed the run down). Results:
``benchmarks/results/cifar10_cpu_full_<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch

from common import KEDRO, PROJECT, RESULTS, latest_version, machine_line, machine_record, project_copy, write_record
from hardware_peak import matmul_peak

DEFAULT_DATA = "../shared/datasets/cifar10-full"  # relative to the project root, as in the README


class LoadSampler(threading.Thread):
    """The 1-minute load average every ``every`` seconds while the run lasts."""

    def __init__(self, every: float = 15.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self.done = every, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.samples.append(round(os.getloadavg()[0], 2))

    def stop(self) -> list[float]:
        self.done.set()
        self.join()
        return self.samples


def kedro_params(data: str, settings: str) -> str:
    """``--params`` of the run: the local copy, then ``settings`` (``train.epochs=8,...``)."""
    return ",".join(["cifar10.source.kind=local", f"cifar10.source.path={data}",
                     *(f"cifar10.{setting}" for setting in settings.split(",") if setting)])


def kedro_run(project: Path, data: Path, settings: str, log_path: Path) -> dict:
    """``kedro run --pipelines=cifar10 --env=cpu`` in ``project``; returns its metrics.json."""
    command = [KEDRO, "run", "--pipelines=cifar10", "--env=cpu", f"--params={kedro_params(str(data), settings)}"]
    with open(log_path, "a") as log:
        finished = subprocess.run(command, cwd=project, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"})
    if finished.returncode:
        print(log_path.read_text()[-6000:], file=sys.stderr)
        raise SystemExit(f"kedro run failed ({finished.returncode})")
    return json.loads(latest_version(project / "data/08_reporting/cifar10/metrics.json").read_text())


def run(data: Path, settings: str, workdir: Path, log_path: Path) -> dict:
    """One ``kedro run`` on ``data`` in a project copy; returns what it measured."""
    project = project_copy(workdir / "project")
    load_before = round(os.getloadavg()[0], 2)
    # The same 2-core machine has run the same training in 607 s and in 780 s, idle both times
    # (the host's other tenants): its matmul rate just before the run says which it was.
    matmul_gflops = round(matmul_peak(2048, torch.float32, torch.device("cpu")) / 1e9, 1)
    sampler = LoadSampler()
    sampler.start()
    started = time.time()
    metrics = kedro_run(project, data, settings, log_path)
    wall = time.time() - started
    during = sampler.stop()
    card = json.loads(latest_version(project / "data/06_models/cifar10/model_card.json").read_text())
    history = pd.read_csv(latest_version(project / "data/08_reporting/cifar10/training_history.csv"))
    training = card["training"]
    recipe = {key: training["config"][key] for key in (
        "epochs", "batch_size", "optimizer", "max_lr", "pct_start", "weight_decay", "grad_clip",
        "label_smoothing", "crop_padding", "flip", "keep")}
    return {
        "accuracy": round(metrics["accuracy"], 4), "evaluated_on": metrics["subset"],
        "test_images": metrics["images"], "val_accuracy": metrics["val_accuracy"],
        "train_seconds": training["seconds"], "wall_seconds": round(wall, 1),
        "train_images": training["train_images"], "val_images": training["val_images"],
        "epochs_run": training["epochs_run"], "kept_epoch": training["kept_epoch"],
        "precision": training["precision"], "model": card["model"], "settings": recipe,
        "history": history.round(4).to_dict(orient="records"),
        "load_1min": {"before": load_before, "during_max": max(during, default=None),
                      "during_median": sorted(during)[len(during) // 2] if during else None,
                      "after": round(os.getloadavg()[0], 2)},
        "settings_given": settings, "project": project, "matmul_gflops_before": matmul_gflops,
    }


def evaluate_variants(run_record: dict, data: Path, settings: str, variants: list[str], log_path: Path) -> dict:
    """Test accuracy of the same trained model under other evaluation settings (``evaluate.tta_crops=false``):
    each rerun finds the training checkpoint complete, so only evaluation runs again."""
    return {variant: round(kedro_run(run_record["project"], data, ",".join(filter(None, [settings, variant])),
                                     log_path)["accuracy"], 4) for variant in variants}


def markdown(record: dict) -> list[str]:
    r, s, m = record["run"], record["run"]["settings"], record["run"]["model"]
    load = r["load_1min"]
    model = ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("name",))
    return [
        f"# CIFAR-10, full dataset, `--env=cpu` ({record['label']})", "",
        machine_line(record), "", f"Kedro command (from the project root): `{record['kedro_command']}`", "",
        "| test accuracy | train time | wall time | epochs (kept) | train / val / test images | precision |",
        "|---|---|---|---|---|---|",
        f"| **{r['accuracy']:.2%}** | {r['train_seconds']:.0f} s | {r['wall_seconds']:.0f} s | "
        f"{r['epochs_run']} ({r['kept_epoch']}) | {r['train_images']} / {r['val_images']} / {r['test_images']} "
        f"| {r['precision']} |", "",
        f"Model: {m['name']} ({model}). Training: " + ", ".join(f"{k} {v}" for k, v in s.items()) + ".", "",
        f"Machine load (1-minute average, {record['cores']} cores): {load['before']} before, median "
        f"{load['during_median']} and peak {load['during_max']} during the run, {load['after']} after; "
        f"fp32 matmul rate just before the run {r.get('matmul_gflops_before', '?')} GFLOP/s "
        "(`benchmarks/hardware_peak.py`'s measure: the same machine has shown 90-190).",
        *variant_lines(record.get("evaluate_variants") or {}),
    ]


def variant_lines(variants: dict[str, float]) -> list[str]:
    if not variants:
        return []
    return ["", "The same trained model evaluated with other settings (only evaluation reruns):", "",
            "| evaluation settings | test accuracy |", "|---|---|",
            *(f"| `{variant}` | {accuracy:.2%} |" for variant, accuracy in variants.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"full CIFAR-10 folder (train/<class>, test/<class>), relative to the project "
                             f"root (default {DEFAULT_DATA})")
    parser.add_argument("--params", default="",
                        help="more cifar10 settings, without the dataset's name: train.epochs=8,model.width=16")
    parser.add_argument("--label", default="current", help="names the results: cifar10_cpu_full_<label>")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--log", type=Path, help="keep the run's console output in this file")
    parser.add_argument("--evaluate-variants", nargs="*", default=[], metavar="SETTINGS",
                        help="after training, evaluate the same model again with these settings each "
                             "(evaluate.tta_crops=false evaluate.tta_flip=false)")
    args = parser.parse_args()
    data = (PROJECT / args.data).resolve()
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise SystemExit(f"{data} has no train/ and test/ class folders: pass a full CIFAR-10 copy with --data")
    command = f'kedro run --pipelines=cifar10 --env=cpu --params="{kedro_params(args.data, args.params)}"'
    record = {**machine_record(torch.device("cpu")), "label": args.label, "data": str(data), "kedro_command": command}
    with tempfile.TemporaryDirectory(prefix="cifar10_cpu_full-") as workdir:
        log_path = args.log or Path(workdir) / "kedro.log"
        record["run"] = run(data, args.params, Path(workdir), log_path)
        record["evaluate_variants"] = evaluate_variants(record["run"], data, args.params, args.evaluate_variants,
                                                        log_path)
        del record["run"]["project"]
    lines = markdown(record)
    write_record(record, lines, f"cifar10_cpu_full_{args.label}", args.results)


if __name__ == "__main__":
    main()
