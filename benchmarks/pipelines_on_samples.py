"""Run every dataset's pipeline end to end, as a user would, and record accuracy and wall time.

    python benchmarks/pipelines_on_samples.py                       # all datasets, --env=cpu
    python benchmarks/pipelines_on_samples.py --datasets fruits --env base
    python benchmarks/pipelines_on_samples.py --datasets cifar10 --params train.epochs=1   # a quick look

Each run is ``kedro run --pipelines=<name> --env=<env> --params=<name>.source.kind=local,
<name>.source.path=<DIR>`` in a throw-away copy of the project (the real data/ is untouched),
on the samples in ``$DATASETS_DIR`` (default ``../shared/datasets``); metrics and model card are
read from their newest version (the catalog versions them). Results go to
``benchmarks/results/pipelines_<env>.json`` and ``.md`` with the date, hardware and command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    KEDRO,
    RESULTS,
    SAMPLE_ROOTS,
    SAMPLES,
    latest_version,
    machine_line,
    machine_record,
    project_copy,
    write_record,
)
from vision_pipelines.loader import resolve_device

# the ``kedro`` of this interpreter's environment, found without activating it

def run_pipeline(dataset: str, source: Path, env: str, workdir: Path, settings: str = "") -> dict:
    """One ``kedro run`` in a project copy; returns its wall time and reported metrics.
    ``settings`` are more of the dataset's parameters, ``train.epochs=1,model.width=8``."""
    project = project_copy(workdir / dataset)
    params = [f"{dataset}.source.kind=local", f"{dataset}.source.path={source}",
              *(f"{dataset}.{setting}" for setting in settings.split(",") if setting)]
    command = [KEDRO, "run", f"--pipelines={dataset}", f"--env={env}", f"--params={','.join(params)}"]
    started = time.time()
    finished = subprocess.run(command, cwd=project, capture_output=True, text=True,
                              env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"})
    seconds = time.time() - started
    if finished.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({finished.returncode}):\n{finished.stderr[-4000:]}")
    metrics = json.loads(latest_version(project / f"data/08_reporting/{dataset}/metrics.json").read_text())
    card = json.loads(latest_version(project / f"data/06_models/{dataset}/model_card.json").read_text())
    return {
        "dataset": dataset, "sample": str(source), "wall_seconds": round(seconds, 1),
        "train_seconds": card["training"]["seconds"], "evaluated_on": metrics["subset"],
        "accuracy": round(metrics["accuracy"], 4), "images_evaluated": metrics["images"],
        "val_accuracy": None if metrics["val_accuracy"] is None else round(metrics["val_accuracy"], 4),
        "train_images": card["training"]["train_images"], "model": card["model"]["name"],
        "image_size": card["input"]["size"], "epochs": card["training"]["epochs_run"],
        "command": " ".join(["kedro", *command[1:]]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SAMPLE_ROOTS), choices=list(SAMPLE_ROOTS))
    parser.add_argument("--env", default="cpu", help="Kedro environment (cpu or base)")
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="folder of the samples ($DATASETS_DIR)")
    parser.add_argument("--params", default="",
                        help="more settings for every dataset, without its name: train.epochs=1,model.width=8")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for dataset in args.datasets:
            row = run_pipeline(dataset, (args.samples / SAMPLE_ROOTS[dataset]).resolve(), args.env, Path(workdir),
                               args.params)
            print(json.dumps(row))
            rows.append(row)
    record = {**machine_record(resolve_device("auto")), "env": args.env, "params": args.params, "runs": rows}
    lines = [f"# Pipelines on the real samples, `--env={args.env}`", "", machine_line(record), "",
             "Samples are a few hundred images: a sanity check, not a measure of the full datasets.", "",
             "| pipeline | model, size, epochs | train images | evaluated on | accuracy | train time | wall time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']}, {r['image_size']} px, {r['epochs']} | {r['train_images']} | "
                     f"{r['evaluated_on']} ({r['images_evaluated']}) | {r['accuracy']:.1%} | "
                     f"{r['train_seconds']:.0f} s | {r['wall_seconds']:.0f} s |")
    write_record(record, lines, f"pipelines_{args.env}", args.results)


if __name__ == "__main__":
    main()
