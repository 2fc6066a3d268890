"""Nodes of the image-classification template: download -> split -> cache -> train -> evaluate -> submit.

Each node takes catalog data and typed settings (Kedro builds the ``config`` dataclasses from
``params:``) and returns catalog data; the work itself lives in the modules named after each
concern (sources, cache, engine, model_card, reporting). Nodes that receive artifacts of
different stages check they belong together (``lineage``) before using them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.data import random_split

from ... import distributed, engine, images, lineage, reporting, sources
from ...augment import augment, random_draws
from ...cache import CacheBuild, ImageCache
from ...config import (
    ComputeConfig,
    EvaluateConfig,
    ImageConfig,
    LRFindConfig,
    ModelConfig,
    SourceConfig,
    SplitConfig,
    SubmissionConfig,
    TrainConfig,
)
from ...model_card import make_card, read_card
from ...prediction import held_out_probabilities
from ...submission import submission_ids, submission_table

log = logging.getLogger(__name__)

CACHE_ORDER_SEED = 0  # the training subset is written to the cache in this seeded random order


# --- download ---------------------------------------------------------------------------------


def download_images(source: SourceConfig, downloads: Path) -> Path:
    """Make the dataset's image folder available: a local folder, or a download kept in ``downloads``."""
    return sources.fetch(source, downloads)


# --- split ------------------------------------------------------------------------------------


def build_manifest(raw_images: Path, source: SourceConfig, split: SplitConfig) -> tuple[pd.DataFrame, list[str]]:
    """One row per file: ``file, label, subset`` (train/val/test/predict, or ``skipped`` with a
    ``reason``), and the class names in model-output order.

    Validation (and test, when the source has none) is carved out of the labelled training
    images by ``split_subsets``: same seed, same split.
    """
    found = sources.scan(Path(raw_images), source)
    rows = found.images.sort_values("file", kind="stable").reset_index(drop=True)
    unknown_class = rows["label"].notna() & ~rows["label"].isin(found.class_names)
    if unknown_class.any():
        log.warning("%d test image(s) belong to classes absent from training (e.g. %s): skipped",
                    unknown_class.sum(), rows.loc[unknown_class, "label"].iloc[0])
    rows["subset"] = rows["origin"]
    rows["reason"] = None
    rows.loc[unknown_class, ["subset", "reason"]] = ["skipped", "class not in the training set"]
    rows["subset"] = split_subsets(rows["subset"], split)
    skipped = found.skipped.assign(subset="skipped")
    if len(skipped):
        log.warning("skipping %d file(s) that are not usable images (e.g. %s: %s), counted in the data "
                    "report", len(skipped), skipped["file"].iloc[0], skipped["reason"].iloc[0])
    manifest = pd.concat([rows.drop(columns="origin"), skipped], ignore_index=True)
    log.info("manifest: %s", ", ".join(f"{n} {s}" for s, n in manifest["subset"].value_counts().items()))
    return manifest[["file", "label", "subset", "reason"]].astype(object), list(found.class_names)


def split_subsets(subsets: pd.Series, split: SplitConfig) -> pd.Series:
    """Each image's subset, from the one its source gave it (``train``, ``test``, ``predict``,
    ``skipped``): ``split.val_fraction`` of the training images become ``val`` (and
    ``split.test_fraction`` become ``test`` when no image is in ``test``), drawn by
    ``torch.utils.data.random_split`` with a generator of its own seeded with ``split.seed``.
    Pure: same subsets and settings, same result; no global random state is read or changed."""
    has_test = (subsets == "test").any()
    fractions = {"train": 1 - split.val_fraction - (0 if has_test else split.test_fraction),
                 "val": split.val_fraction, "test": 0 if has_test else split.test_fraction}
    fractions = {subset: f for subset, f in fractions.items() if f > 0}
    train_index = subsets.index[subsets == "train"].tolist()
    generator = torch.Generator().manual_seed(split.seed)
    result = subsets.copy()
    for subset, part in zip(fractions, random_split(train_index, list(fractions.values()), generator)):
        result.loc[list(part)] = subset
    return result


# --- image cache ------------------------------------------------------------------------------


def build_image_cache(raw_images: Path, manifest: pd.DataFrame, class_names: list[str],
                      images: ImageConfig) -> CacheBuild:
    """Every usable image of the manifest, to be decoded once into the uint8 image cache.

    The catalog's ``ImageCacheDataset`` decodes them as it saves, shard by shard; the training
    subset goes in a seeded random order, so each shard is a random sample of it.
    """
    usable = manifest[manifest["subset"] != "skipped"]
    index = {name: i for i, name in enumerate(class_names)}
    files = pd.DataFrame({"file": usable["file"], "label": usable["label"].map(index).fillna(-1).astype(int),
                          "subset": usable["subset"], "row": usable.index})
    train = files[files["subset"] == "train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(CACHE_ORDER_SEED)).numpy()
    files = pd.concat([train.iloc[order], files[files["subset"] != "train"]], ignore_index=True)
    return CacheBuild(Path(raw_images), files, list(class_names), images,
                      lineage.manifest_fingerprint(manifest, class_names))


def summarise_data(manifest: pd.DataFrame, image_cache: ImageCache, class_names: list[str],
                   split: SplitConfig, evaluate: EvaluateConfig, submission: SubmissionConfig) -> dict[str, Any]:
    """The data report: what was found, used and skipped, and the problems that stop training.

    It is written before training starts: ``train_model`` refuses to run on data whose report
    lists errors (no readable training image, no image to submit), so a run never fails late.
    """
    lineage.cache_matches_manifest(image_cache, manifest, class_names)
    report = reporting.data_report(manifest, image_cache.decoded, class_names, split.min_train_per_class)
    report["image_sizes"] = images.size_summary(image_cache.decoded)
    report["image_cache"] = image_cache.fingerprint
    counts = report["subsets"]
    if counts["train"] < 2:
        report["errors"].append(f"{counts['train']} readable training image(s): training needs at least 2")
    if counts.get(submission.subset, 0) == 0:
        report["errors"].append(f"submission.subset={submission.subset!r} has no readable images: set "
                                "submission.subset to a subset the source provides")
    if counts.get(evaluate.subset, 0) == 0:
        log.info("no %s images: evaluate.subset falls back to the validation set", evaluate.subset)
    submitted = manifest.loc[manifest["subset"] == submission.subset, "file"]
    ids = submission_ids(submitted, manifest["file"], submission.id_from)
    if not ids.is_unique:
        report["warnings"].append(f"submission ids from id_from={submission.id_from!r} repeat "
                                  f"({ids.duplicated().sum()} duplicates): the submission will use relative paths")
    for message in report["warnings"]:
        log.warning("%s", message)
    return report


# --- train ------------------------------------------------------------------------------------


def train_model(image_cache: ImageCache, data_report: dict[str, Any], checkpoint: Path, model: ModelConfig,
                images: ImageConfig, train: TrainConfig, compute: ComputeConfig, lr_find_reports: Path | None = None,
                lr_find: LRFindConfig = LRFindConfig()  # noqa: B008 - frozen: one shared default is safe
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Train the configured network, in this process or in ``train.distributed``'s processes;
    returns weights, model card, epoch history and step table. ``train.max_lr: auto`` takes the
    rate from the newest range test in ``lr_find_reports`` that fits (or one run now)."""
    if data_report.get("errors"):
        raise ValueError("the data cannot be trained on (see data_report.json): " + "; ".join(data_report["errors"]))
    lineage.report_matches_cache(data_report, image_cache)
    if train.max_lr == "auto":
        from ..lr_find.nodes import suggested_max_lr

        train = suggested_max_lr(lr_find_reports, image_cache, model, images, train, compute, lr_find)
    job = engine.TrainingJob(image_cache, model, images, train, compute, checkpoint)
    result = distributed.launch(job, _logging_config()) if train.distributed.enabled else engine.train(job)
    history = result.history.set_index("epoch")
    card = make_card(model, images, image_cache.class_names, result.weights,
                     lineage={"image_cache": image_cache.fingerprint, "manifest": image_cache.manifest_fingerprint},
                     training={"config": dataclasses.asdict(train),
                               "device": result.device, "precision": result.precision,
                               "processes": result.world_size, "seconds": round(result.seconds, 1),
                               "threads": {"setting": compute.threads, "used": result.threads},
                               "epochs_run": int(history.index.max()), "kept_epoch": result.kept_epoch,
                               "train_images": image_cache.count("train"), "val_images": image_cache.count("val")},
                     metrics={key: _json_float(history.loc[result.kept_epoch, key])
                              for key in ("val_accuracy", "val_loss")})
    return result.weights, card, result.history, result.steps


def _logging_config() -> dict | None:
    """Kedro's logging configuration, for distributed training processes to log alike."""
    from kedro.framework.project import LOGGING

    return getattr(LOGGING, "data", None)


# --- evaluate ---------------------------------------------------------------------------------


def predict(model_weights: dict[str, torch.Tensor], model_card: dict[str, Any], image_cache: ImageCache,
            manifest: pd.DataFrame, evaluate: EvaluateConfig, compute: ComputeConfig) -> pd.DataFrame:
    """Predict every held-out image (val, test, predict) with the saved model and its card."""
    card = read_card(model_card, model_weights)
    lineage.model_matches_cache(card.lineage, image_cache)
    lineage.cache_matches_manifest(image_cache, manifest, card.class_names)
    frames = []
    for subset, probabilities in held_out_probabilities(card.network(model_weights), image_cache, card, evaluate,
                                                         compute).items():
        labels = image_cache.labels(subset)  # the table's; prediction does not read them
        confidence, predicted = probabilities.max(1)
        frames.append(pd.DataFrame({
            "file": manifest["file"].to_numpy()[image_cache.rows(subset).numpy()], "subset": subset,
            "label": [card.class_names[i] if i >= 0 else None for i in labels.tolist()],
            "predicted": [card.class_names[i] for i in predicted.tolist()],
            "confidence": confidence.numpy().astype(float),
        }))
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["file", "subset", "label", "predicted", "confidence"])
    predictions.attrs["lineage"] = {**card.reference(), "image_cache": image_cache.fingerprint,
                                    "manifest": image_cache.manifest_fingerprint, "class_names": card.class_names}
    return predictions


def evaluate_predictions(predictions: pd.DataFrame, class_names: list[str], evaluate: EvaluateConfig) -> dict[str, Any]:
    """Metrics JSON on the configured labelled subset (falls back to val when it is absent)."""
    lineage.predictions_match_classes(predictions, class_names)
    subset = _evaluation_subset(predictions, evaluate.subset)
    rows = predictions[(predictions["subset"] == subset) & predictions["label"].notna()]
    index = {name: i for i, name in enumerate(class_names)}
    metrics = reporting.classification_metrics(rows["label"].map(index).to_numpy(dtype=int),
                                               rows["predicted"].map(index).to_numpy(dtype=int),
                                               class_names, evaluate.top_confused)
    val = predictions[(predictions["subset"] == "val") & predictions["label"].notna()]
    log.info("%s accuracy %.4f on %d images", subset, metrics["accuracy"], metrics["images"])
    made_by = predictions.attrs.get("lineage", {})
    return {"subset": subset, **metrics, "model": made_by.get("model"), "model_version": made_by.get("model_version"),
            "val_accuracy": float((val["label"] == val["predicted"]).mean()) if len(val) else None}


def plot_learning_curves(training_history: pd.DataFrame) -> tuple[Figure, Figure]:
    accuracy = reporting.plot_curves(training_history, {"train_accuracy": "train", "val_accuracy": "validation"},
                                     "accuracy", "Accuracy per epoch")
    loss = reporting.plot_curves(training_history, {"train_loss": "train", "val_loss": "validation"},
                                 "cross-entropy loss", "Loss per epoch")
    return accuracy, loss


def plot_lr_schedule(training_steps: pd.DataFrame) -> Figure:
    return reporting.plot_lr_schedule(training_steps)


def plot_confusion_matrix(metrics: dict[str, Any]) -> Figure:
    return reporting.signed(reporting.plot_confusion(metrics), metrics)


def plot_per_class_accuracy(metrics: dict[str, Any]) -> Figure:
    return reporting.signed(reporting.plot_per_class_accuracy(metrics), metrics)


def plot_error_gallery(predictions: pd.DataFrame, raw_images: Path, evaluate: EvaluateConfig) -> Figure:
    """The most confident mistakes, shown as the original files."""
    subset = _evaluation_subset(predictions, evaluate.subset)
    rows = predictions[(predictions["subset"] == subset) & predictions["label"].notna()]
    mistakes = rows[rows["label"] != rows["predicted"]].nlargest(evaluate.gallery_size, "confidence")
    missing = [f for f in mistakes["file"] if not (Path(raw_images) / f).is_file()]
    if missing:
        raise lineage.LineageError(f"the predictions list {missing[0]}, which is no longer in {raw_images}: "
                                   "the images changed since. Re-run the split stage and what follows")
    pictures = [images.decode_image(Path(raw_images) / f, 96, 3)[0].transpose(1, 2, 0) for f in mistakes["file"]]
    titles = [f"true: {t}\npred: {p} ({c:.0%})" for t, p, c in
              zip(mistakes["label"], mistakes["predicted"], mistakes["confidence"])]
    wrong = int((rows["label"] != rows["predicted"]).sum())
    figure = reporting.plot_image_grid(pictures, titles,
                                       f"Most confident mistakes on {subset}: {wrong} wrong of {len(rows)}")
    return reporting.signed(figure, predictions.attrs.get("lineage", {}))


def plot_sample_batch(image_cache: ImageCache, train: TrainConfig) -> Figure:
    """32 training images as the network sees them: after the batch augmentation."""
    batch = image_cache.stream("train").head(32)
    labels = image_cache.labels("train")[:len(batch)]
    draws = random_draws(len(batch), torch.Generator().manual_seed(train.seed))
    batch = augment(batch, train.crop_padding, train.flip, draws)
    pictures = [b[0].numpy() if b.shape[0] == 1 else b.permute(1, 2, 0).numpy() for b in batch]
    return reporting.plot_image_grid(pictures, [image_cache.class_names[i] for i in labels.tolist()],
                                     "Sample training batch (augmented)")


# --- submit -----------------------------------------------------------------------------------


def make_submission(predictions: pd.DataFrame, manifest: pd.DataFrame, raw_images: Path,
                    submission: SubmissionConfig) -> pd.DataFrame:
    """One row per image of the submission subset: ``<id_column>,<label_column>``.

    Ids are unique: when ``submission.id_from`` gives repeated ids (file stems that repeat
    across class folders), the relative paths are used instead, with a warning. With
    ``submission.template`` (a sample submission), its columns and row order are copied
    exactly, and an id missing from the predictions is an error rather than a silent gap.
    """
    lineage.predictions_match_manifest(predictions, manifest)
    recorded = predictions.attrs.get("lineage", {})
    class_names = recorded.get("class_names", [])
    rows = predictions[predictions["subset"] == submission.subset]
    if rows.empty:
        raise ValueError(f"submission.subset={submission.subset!r} has no images to predict")
    table = submission_table(rows, manifest["file"], class_names, Path(raw_images), submission)
    table.attrs["lineage"] = {key: recorded.get(key) for key in ("model", "model_version", "model_val_accuracy",
                                                                 "manifest")}
    log.info("submission: %d rows, by model %s", len(table), recorded.get("model_version") or recorded.get("model"))
    return table


def _evaluation_subset(predictions: pd.DataFrame, wanted: str) -> str:
    labelled = predictions[predictions["label"].notna()]
    if (labelled["subset"] == wanted).any():
        return wanted
    log.info("no labelled %s images: evaluating on the validation set", wanted)
    return "val"


def _json_float(value: float) -> float | None:
    return None if pd.isna(value) else float(value)

