"""Nodes of the image-classification template: download -> split -> cache -> train -> evaluate -> submit.

Each node takes catalog data and parameter dicts and returns catalog data; the work itself
lives in the modules named after each concern (sources, images, engine, models, reporting).
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.data import random_split

from ... import engine, images, reporting, sources
from ...augment import augment
from ...config import (EvaluateConfig, ImageConfig, ModelConfig, SourceConfig, SplitConfig,
                       SubmissionConfig, TrainConfig, parse)
from ...models import build_model, count_parameters, model_from_card

log = logging.getLogger(__name__)

MODEL_CARD_VERSION = 1


# --- download ---------------------------------------------------------------------------------


def download_images(source: dict[str, Any]) -> Path:
    """Make the dataset's image folder available: a local folder, or a (cached) download."""
    return sources.fetch(parse(SourceConfig, source, "source"))


# --- split ------------------------------------------------------------------------------------


def build_manifest(raw_images: Path, source: dict[str, Any],
                   split: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """One row per file: ``file, label, subset`` (train/val/test/predict, or ``skipped`` with a
    ``reason``), and the class names in model-output order.

    Validation (and test, when the source has none) is carved out of the labelled training
    images with ``torch.utils.data.random_split`` and a seeded generator: same seed, same split.
    """
    source_config = parse(SourceConfig, source, "source")
    split_config = parse(SplitConfig, split, "split")
    found = sources.scan(Path(raw_images), source_config)
    rows = found.images.sort_values("file", kind="stable").reset_index(drop=True)
    known = set(found.class_names)
    unknown_class = rows["label"].notna() & ~rows["label"].isin(known)
    if unknown_class.any():
        log.warning("%d test image(s) belong to classes absent from training (e.g. %s): skipped",
                    unknown_class.sum(), rows.loc[unknown_class, "label"].iloc[0])
    rows["subset"] = rows["origin"].map({"train": "train", "test": "test", "predict": "predict"})
    rows["reason"] = None
    rows.loc[unknown_class, ["subset", "reason"]] = ["skipped", "class not in the training set"]

    train_index = rows.index[rows["subset"] == "train"].tolist()
    has_test = (rows["subset"] == "test").any()
    test_fraction = 0.0 if has_test else split_config.test_fraction
    fractions = {"train": 1 - split_config.val_fraction - test_fraction,
                 "val": split_config.val_fraction, "test": test_fraction}
    fractions = {subset: f for subset, f in fractions.items() if f > 0}
    generator = torch.Generator().manual_seed(split_config.seed)
    for subset, part in zip(fractions, random_split(train_index, list(fractions.values()), generator)):
        rows.loc[list(part), "subset"] = subset
    if not has_test and test_fraction == 0:
        log.info("the source has no test set and split.test_fraction=0: reports use the validation set")

    skipped = found.skipped.assign(subset="skipped")
    if len(skipped):
        log.warning("skipping %d file(s) that are not usable images (e.g. %s: %s), "
                    "counted in the data report", len(skipped), skipped["file"].iloc[0], skipped["reason"].iloc[0])
    manifest = pd.concat([rows.drop(columns="origin"), skipped], ignore_index=True)
    for subset, count in manifest["subset"].value_counts().items():
        log.info("manifest: %d %s image(s)", count, subset)
    return manifest[["file", "label", "subset", "reason"]].astype(object), list(found.class_names)


# --- image cache ------------------------------------------------------------------------------


def build_image_cache(raw_images: Path, manifest: pd.DataFrame, class_names: list[str],
                      images_params: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Decode every image once into uint8 tensors per subset, and write the data report."""
    image_config = parse(ImageConfig, images_params, "images")
    usable = manifest[manifest["subset"] != "skipped"]
    cache, outcomes = images.build_cache(Path(raw_images), usable, class_names, image_config.size,
                                         image_config.channels, image_config.decode_workers)
    if "train.images" not in cache:
        raise ValueError("no training image could be decoded: see the data report")
    report = reporting.data_report(manifest, outcomes, class_names)
    report["image_sizes"] = images.size_summary(outcomes)
    return cache, report


# --- train ------------------------------------------------------------------------------------


def train_model(image_cache: dict[str, torch.Tensor], class_names: list[str], model_params: dict[str, Any],
                images_params: dict[str, Any], train_params: dict[str, Any]
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Train the configured network; returns weights, model card, epoch history and step table."""
    model_config = parse(ModelConfig, model_params, "model")
    image_config = parse(ImageConfig, images_params, "images")
    train_config = parse(TrainConfig, train_params, "train")
    train_x, train_y, _ = images.subset_tensors(image_cache, "train")
    val_x, val_y, _ = images.subset_tensors(image_cache, "val")
    engine.seed_everything(train_config.seed, train_config.deterministic)
    network = build_model(model_config, image_config.channels, len(class_names))
    log.info("training %s (%d parameters) on %d images, validating on %d", model_config.name,
             count_parameters(network), len(train_y), len(val_y))
    run_fingerprint = engine.fingerprint(train_config, image_config, model_config, train_x, train_y, val_y)
    result = engine.fit(network, train_x, train_y, val_x, val_y, train_config, image_config, run_fingerprint)
    last = result.history.iloc[-1]
    kept_epoch = (int(result.history.loc[result.history["val_loss"].idxmin(), "epoch"])
                  if train_config.keep == "best_val_loss" and result.history["val_loss"].notna().any()
                  else int(last["epoch"]))
    card = {
        "format_version": MODEL_CARD_VERSION,
        "model": {k: v for k, v in dataclasses.asdict(model_config).items() if k != "pretrained"},
        "pretrained_init": model_config.pretrained,
        "class_names": list(class_names),
        "input": {"size": image_config.size, "channels": image_config.channels, "dtype": "uint8",
                  "mean": image_config.mean, "std": image_config.std,
                  "normalisation": "x = (pixel / 255 - mean) / std, per channel, NCHW"},
        "parameters": count_parameters(network),
        "training": {"config": dataclasses.asdict(train_config), "device": result.device,
                     "seconds": round(result.seconds, 1), "epochs_run": int(last["epoch"]),
                     "kept_epoch": kept_epoch, "train_images": int(len(train_y)), "val_images": int(len(val_y))},
        "metrics": {"val_accuracy": _json_float(result.history.set_index("epoch").loc[kept_epoch, "val_accuracy"]),
                    "val_loss": _json_float(result.history.set_index("epoch").loc[kept_epoch, "val_loss"])},
        "software": {"torch": torch.__version__, "python": platform.python_version()},
    }
    return result.state_dict, card, result.history, result.steps


# --- evaluate ---------------------------------------------------------------------------------


def predict(model_weights: dict[str, torch.Tensor], model_card: dict[str, Any],
            image_cache: dict[str, torch.Tensor], manifest: pd.DataFrame,
            evaluate_params: dict[str, Any]) -> pd.DataFrame:
    """Predict every held-out image (val, test, predict) with the saved model and its card."""
    evaluate_config = parse(EvaluateConfig, evaluate_params, "evaluate")
    device = engine.resolve_device("auto")
    network = model_from_card(model_card, model_weights).to(device)
    mean = torch.tensor(model_card["input"]["mean"], device=device)
    std = torch.tensor(model_card["input"]["std"], device=device)
    frames = []
    for subset in ("val", "test", "predict"):
        x, y, rows = images.subset_tensors(image_cache, subset)
        if not len(rows):
            continue
        logits = engine.predict_logits(network, x, mean, std, 256, device, tta_flip=evaluate_config.tta_flip)
        probabilities = logits.softmax(1).cpu()
        confidence, predicted = probabilities.max(1)
        frames.append(pd.DataFrame({
            "file": manifest["file"].to_numpy()[rows.numpy()], "subset": subset,
            "label": [model_card["class_names"][i] if i >= 0 else None for i in y.tolist()],
            "predicted": [model_card["class_names"][i] for i in predicted.tolist()],
            "confidence": confidence.numpy().astype(float), "cache_index": np.arange(len(rows)),
        }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["file", "subset", "label", "predicted", "confidence", "cache_index"])


def evaluate_predictions(predictions: pd.DataFrame, class_names: list[str],
                         evaluate_params: dict[str, Any]) -> dict[str, Any]:
    """Metrics JSON on the configured labelled subset (falls back to val when it is absent)."""
    config = parse(EvaluateConfig, evaluate_params, "evaluate")
    subset = _evaluation_subset(predictions, config.subset)
    rows = predictions[(predictions["subset"] == subset) & predictions["label"].notna()]
    index = {name: i for i, name in enumerate(class_names)}
    metrics = reporting.classification_metrics(rows["label"].map(index).to_numpy(dtype=int),
                                               rows["predicted"].map(index).to_numpy(dtype=int),
                                               class_names, config.top_confused)
    val = predictions[(predictions["subset"] == "val") & predictions["label"].notna()]
    log.info("%s accuracy %.4f on %d images", subset, metrics["accuracy"], metrics["images"])
    return {"subset": subset, **metrics,
            "val_accuracy": float((val["label"] == val["predicted"]).mean()) if len(val) else None}


def plot_learning_curves(history: pd.DataFrame) -> tuple[Figure, Figure]:
    accuracy = reporting.plot_curves(history, {"train_accuracy": "train", "val_accuracy": "validation"},
                                     "accuracy", "Accuracy per epoch")
    loss = reporting.plot_curves(history, {"train_loss": "train", "val_loss": "validation"},
                                 "cross-entropy loss", "Loss per epoch")
    return accuracy, loss


def plot_lr_schedule(steps: pd.DataFrame) -> Figure:
    return reporting.plot_lr_schedule(steps)


def plot_confusion_matrix(metrics: dict[str, Any]) -> Figure:
    return reporting.plot_confusion(metrics)


def plot_per_class_accuracy(metrics: dict[str, Any]) -> Figure:
    return reporting.plot_per_class_accuracy(metrics)


def plot_error_gallery(predictions: pd.DataFrame, raw_images: Path, evaluate_params: dict[str, Any]) -> Figure:
    """The most confident mistakes, shown as the original files."""
    config = parse(EvaluateConfig, evaluate_params, "evaluate")
    subset = _evaluation_subset(predictions, config.subset)
    rows = predictions[(predictions["subset"] == subset) & predictions["label"].notna()]
    mistakes = rows[rows["label"] != rows["predicted"]].nlargest(config.gallery_size, "confidence")
    pictures = [images.decode_image(Path(raw_images) / f, 96, 3)[0].transpose(1, 2, 0) for f in mistakes["file"]]
    titles = [f"true: {t}\npred: {p} ({c:.0%})" for t, p, c in
              zip(mistakes["label"], mistakes["predicted"], mistakes["confidence"])]
    wrong = int((rows["label"] != rows["predicted"]).sum())
    return reporting.plot_image_grid(pictures, titles, f"Most confident mistakes on {subset}: "
                                     f"{wrong} wrong of {len(rows)}")


def plot_sample_batch(image_cache: dict[str, torch.Tensor], class_names: list[str],
                      train_params: dict[str, Any]) -> Figure:
    """32 training images as the network sees them: after the batch augmentation."""
    config = parse(TrainConfig, train_params, "train")
    x, y, _ = images.subset_tensors(image_cache, "train")
    generator = torch.Generator().manual_seed(config.seed)
    pick = torch.randperm(len(y), generator=generator)[:32]
    batch = augment(x[pick], config.crop_padding, config.flip, generator)
    pictures = [b[0].numpy() if b.shape[0] == 1 else b.permute(1, 2, 0).numpy() for b in batch]
    return reporting.plot_image_grid(pictures, [class_names[i] for i in y[pick].tolist()],
                                     "Sample training batch (augmented)")


# --- submit -----------------------------------------------------------------------------------


def make_submission(predictions: pd.DataFrame, raw_images: Path, class_names: list[str],
                    submission_params: dict[str, Any]) -> pd.DataFrame:
    """One row per image of the submission subset: ``<id_column>,<label_column>``.

    With ``submission.template`` (a sample submission), its columns and row order are copied
    exactly, and an id missing from the predictions is an error rather than a silent gap.
    """
    config = parse(SubmissionConfig, submission_params, "submission")
    rows = predictions[predictions["subset"] == config.subset]
    if rows.empty:
        raise ValueError(f"submission.subset={config.subset!r} has no images to predict")
    paths = rows["file"].map(Path)
    ids = {"path": rows["file"], "stem": paths.map(lambda p: p.stem), "name": paths.map(lambda p: p.name)}[config.id_from]
    labels = rows["predicted"] if config.label_format == "name" else rows["predicted"].map(class_names.index)
    submission = pd.DataFrame({config.id_column: ids.to_numpy(), config.label_column: labels.to_numpy()})
    if config.template:
        template = _read_template(Path(raw_images), config.template)
        if config.id_column not in template.columns:
            raise ValueError(f"sample submission {config.template} has no column {config.id_column!r}")
        by_id = submission.set_index(config.id_column)[config.label_column]
        missing = set(template[config.id_column]) - set(by_id.index)
        if missing:
            raise ValueError(f"{len(missing)} id(s) of the sample submission have no prediction, "
                             f"e.g. {sorted(missing)[:5]}")
        submission = template.assign(**{config.label_column: template[config.id_column].map(by_id).to_numpy()})
    log.info("submission: %d rows", len(submission))
    return submission


def _read_template(root: Path, pattern: str) -> pd.DataFrame:
    matches = sorted(root.glob(pattern)) or sorted(root.glob(f"*/{pattern}"))
    if not matches:
        raise FileNotFoundError(f"submission.template={pattern!r}: no such file under {root}")
    return pd.read_csv(matches[0], dtype=str, keep_default_na=False)


def _evaluation_subset(predictions: pd.DataFrame, wanted: str) -> str:
    labelled = predictions[predictions["label"].notna()]
    if (labelled["subset"] == wanted).any():
        return wanted
    log.info("no labelled %s images: evaluating on the validation set", wanted)
    return "val"


def _json_float(value: float) -> float | None:
    return None if pd.isna(value) else float(value)
