"""CIFAR-10 accuracy within the same wall-clock training budget: fast recipe vs tutorial recipe.

    python benchmarks/cifar10_time_budget.py                  # 300 s of training per recipe
    python benchmarks/cifar10_time_budget.py --seconds 60     # a quicker look
    python benchmarks/cifar10_time_budget.py --data /data/cifar10   # a full copy: train/<class>, test/<class>

The recipes are the project's own parameters: ``tutorial`` is ``conf/base`` (Adam one-cycle, batch
256, 4 px crop + flip, label smoothing 0.1, keeps the best-validation epoch) and ``fast`` is
``--env=cifar10_fast`` (Adam one-cycle at batch 512, label smoothing 0.2, 2 px translate + flip, no
dropout, keeps the last epoch). Both average each test image with its mirror.
Each runs through the pipeline's own nodes (split, cache, train, predict, evaluate) on the same
images; the image cache is decoded once per recipe. A one-cycle schedule must know its length in
advance, so each recipe is first timed for two epochs; it then trains for as many epochs as fit in
the budget, and the training time it really took is recorded beside its test accuracy.
Results: ``benchmarks/results/cifar10_time_budget_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from common import RESULTS, SAMPLES, import_nodes, machine_line, machine_record, project_parameters, write_record
from vision_pipelines.cache import ImageCache, write_cache
from vision_pipelines.config import DatasetConfig, parse_dataset
from vision_pipelines.loader import resolve_device

nodes = import_nodes()  # the pipeline's nodes (without Kedro where there is none)
RECIPES = {"tutorial": "base", "fast": "cifar10_fast"}  # recipe -> Kedro environment
CALIBRATION_EPOCHS = 2


def recipe_config(env: str, data: Path, device: str = "auto", width: int | None = None) -> DatasetConfig:
    """``params:cifar10`` of ``env``, validated, reading the local folder ``data``."""
    params = project_parameters("cifar10", env)
    if width is not None:  # a narrower network for a quick look (the recipes' own is 64)
        params["model"] = {**params["model"], "width": width}
    params["source"] = {**params["source"], "kind": "local", "path": str(data)}
    params["compute"] = {**params.get("compute", {}), "device": device}
    params["train"] = {**params["train"], "resume": False}  # no checkpoint is written: nothing to resume
    return parse_dataset(params, "cifar10")


def prepare(config: DatasetConfig, data: Path, cache_folder: Path) -> tuple:
    """split -> cache with the pipeline's nodes: ``(manifest, class_names, image_cache)``."""
    manifest, class_names = nodes.build_manifest(data, config.source, config.split)
    write_cache(cache_folder, nodes.build_image_cache(data, manifest, class_names, config.images))
    return manifest, class_names, ImageCache(cache_folder)


def train_and_test(config: DatasetConfig, prepared: tuple, epochs: int) -> dict[str, Any]:
    """train ``epochs`` -> predict -> evaluate, with the pipeline's nodes."""
    manifest, class_names, cache = prepared
    report = nodes.summarise_data(manifest, cache, class_names, config.split, config.evaluate, config.submission)
    weights, card, history, _ = nodes.train_model(cache, report, None, config.model, config.images,
                                                  dataclasses.replace(config.train, epochs=epochs), config.compute)
    predictions = nodes.predict(weights, card, cache, manifest, config.evaluate, config.compute)
    metrics = nodes.evaluate_predictions(predictions, class_names, config.evaluate)
    training = card["training"]
    return {"epochs": epochs, "train_seconds": training["seconds"],
            "seconds_per_epoch": round(float(history["seconds"].iloc[1:].median()), 2) if epochs > 1 else None,
            "train_images": training["train_images"], "kept_epoch": training["kept_epoch"],
            "evaluated_on": metrics["subset"], "test_images": metrics["images"],
            "accuracy": round(metrics["accuracy"], 4), "val_accuracy": metrics["val_accuracy"]}


def run_recipe(name: str, data: Path, budget_seconds: float, device: str = "auto",
               width: int | None = None) -> dict[str, Any]:
    """Time two epochs, then train as many epochs as fit in ``budget_seconds`` and test."""
    env = RECIPES[name]
    config = recipe_config(env, data, device, width)
    with tempfile.TemporaryDirectory(prefix="cifar10-cache-") as cache_folder:
        prepared = prepare(config, data, Path(cache_folder))
        calibration = train_and_test(config, prepared, CALIBRATION_EPOCHS)
        # timed on the second epoch: the first one also pays for warm-up
        epochs = max(1, int(budget_seconds // calibration["seconds_per_epoch"]))
        logging.getLogger(__name__).info("%s: %.2f s per epoch -> %d epochs in %.0f s", name,
                                         calibration["seconds_per_epoch"], epochs, budget_seconds)
        result = train_and_test(config, prepared, epochs)
    train = dataclasses.asdict(config.train)
    settings = {key: train[key] for key in ("batch_size", "optimizer", "max_lr", "pct_start", "weight_decay",
                                            "label_smoothing", "crop_padding", "flip", "grad_clip", "keep")}
    settings |= {"width": config.model.width, "tta_flip": config.evaluate.tta_flip}
    return {"recipe": name, "env": env, **result, "within_budget": result["train_seconds"] <= budget_seconds,
            "settings": settings,
            "kedro_command": "kedro run --pipelines=cifar10" + ("" if env == "base" else f" --env={env}")
            + f" --params=cifar10.source.kind=local,cifar10.source.path={data},cifar10.train.epochs={epochs}"
            + ("" if width is None else f",cifar10.model.width={width}")
            + ("" if device == "auto" else f",cifar10.compute.device={device}")}


def markdown(record: dict[str, Any]) -> list[str]:
    lines = [f"# CIFAR-10: accuracy within {record['budget_seconds']:.0f} s of training, "
             f"{record['device_type'].upper()}",
             "", machine_line(record), "", f"Data: `{record['data']}` ({record['data_note']}).", "",
             "| recipe | env | settings | epochs | train time | test accuracy (images) |",
             "|---|---|---|---|---|---|"]
    for r in record["recipes"]:
        s = r["settings"]
        lines.append(f"| {r['recipe']} | `{r['env']}` | width {s['width']}, batch {s['batch_size']}, {s['optimizer']} "
                     f"lr {s['max_lr']}, smoothing {s['label_smoothing']}, pad {s['crop_padding']}, "
                     f"TTA {s['tta_flip']} | {r['epochs']} | {r['train_seconds']:.0f} s | "
                     f"**{r['accuracy']:.1%}** ({r['test_images']}) |")
    lines += ["", "Each run re-made with its Kedro command:", ""]
    lines += [f"- {r['recipe']}: `{r['kedro_command']}`" for r in record["recipes"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300, help="training budget per recipe (default 300)")
    parser.add_argument("--data", type=Path, default=SAMPLES / "cifar10",
                        help="a CIFAR-10 folder with train/<class> and test/<class> (default: the sample)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--width", type=int, help="model.width for both recipes (default: theirs)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = args.data.resolve()
    record = {**machine_record(resolve_device(args.device)), "budget_seconds": args.seconds,
              "data": str(data), "recipes": []}
    for name in args.recipes:
        record["recipes"].append(run_recipe(name, data, args.seconds, args.device, args.width))
    first = record["recipes"][0]
    record["data_note"] = (f"{first['train_images']} training images after the validation split, "
                           f"{first['test_images']} {first['evaluated_on']} images"
                           + ("; the 500-image sample, not the full dataset" if data == (SAMPLES / "cifar10").resolve()
                              else ""))
    lines = markdown(record)
    write_record(record, lines, f"cifar10_time_budget_{record['device_type']}", args.results)


if __name__ == "__main__":
    main()
