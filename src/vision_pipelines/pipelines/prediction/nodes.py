"""Nodes of the predict pipeline: list the new images -> classify them -> plot a grid.

Only the model card and weights are needed: the card says how training decoded and normalised
its images (``model_card``), and ``prediction.classify_files`` decodes new files the same way
and runs them through ``engine.predict``, the one prediction path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ... import reporting, sources
from ...config import ComputeConfig, ConfigError, PredictConfig
from ...model_card import load_model
from ...prediction import classify_files

log = logging.getLogger(__name__)

SHOWN_ON_CONSOLE = 20  # up to this many files, each one's classes are printed too


def list_new_images(predict: PredictConfig) -> pd.DataFrame:
    """The files of ``predict.input`` (a folder, searched recursively, or one image) by the rules
    training lists a dataset's files with (``sources.list_images``): one row per file, ``file``
    (relative to the folder; the file's name for one file), ``path`` and ``reason`` for one
    that is skipped (not an image file, a link leading outside, a name that is not UTF-8)."""
    if not predict.input:
        raise ConfigError("predict.input is not set: give the folder (searched recursively) or the image "
                          'to classify, e.g. --params="<dataset>.predict.input=PATH"')
    path = Path(predict.input).expanduser()
    if not path.exists():
        raise ConfigError(f"predict.input={predict.input}: no such file or folder")
    files, skipped = sources.list_images(path)
    if not files:
        example = f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ConfigError(f"predict.input={predict.input} holds no image file to classify "
                          f"({len(skipped)} file(s) skipped{example})")
    names = [f.relative_to(path.resolve()).as_posix() for f in files] if path.is_dir() else [path.name]
    found = pd.DataFrame({"file": names, "path": [str(f) for f in files], "reason": None})
    skipped = pd.DataFrame(skipped, columns=["file", "reason"]).assign(path=None)
    return pd.concat([found, skipped], ignore_index=True)[["file", "path", "reason"]].astype(object)


def classify_new_images(new_images: pd.DataFrame, model_weights: dict[str, torch.Tensor],
                        model_card: dict[str, Any], predict: PredictConfig, compute: ComputeConfig
                        ) -> tuple[pd.DataFrame, np.ndarray]:
    """The predictions CSV: for each file its ``predict.top_k`` most likely classes and their
    probabilities (``prediction.classify_files``), or the reason it was skipped; and the first
    ``predict.grid_size`` images as the network saw them."""
    card, network = load_model(model_card, model_weights)
    usable = new_images[new_images["reason"].isna()]
    table, shown = classify_files([Path(p) for p in usable["path"]], card, network, compute, predict)
    table["file"] = usable["file"].to_numpy()  # one row per file, in order: the names the user knows
    table = pd.concat([table, new_images[new_images["reason"].notna()]], ignore_index=True)[table.columns]
    skipped = table["reason"].dropna().str.split(" \\(").str[0].value_counts()
    log.info("classified %d of %d files with %s, %s%s", len(table) - skipped.sum(), len(table), card.model.name,
             card.describe(), f"; skipped {skipped.sum()} ({', '.join(f'{why}: {n}' for why, n in skipped.items())}; "
             "each with its reason in the CSV)" if len(skipped) else "")
    if len(table) <= SHOWN_ON_CONSOLE:
        for row in table.to_dict("records"):
            log.info("%s: %s", row["file"], row["reason"] if isinstance(row["reason"], str) else ranked(row))
    table.attrs["lineage"] = card.reference()
    return table, shown


def ranked(row: dict[str, Any]) -> str:
    """``apple 0.93, pear 0.05, kiwi 0.01``: a predictions row's classes, most likely first."""
    labels = [row["label"], *(row[k] for k in row if k.startswith("label_"))]
    scores = [row["confidence"], *(row[k] for k in row if k.startswith("confidence_"))]
    return ", ".join(f"{label} {score:.2f}" for label, score in zip(labels, scores))


def plot_new_predictions(new_predictions: pd.DataFrame, new_prediction_images: np.ndarray) -> Figure:
    """The first classified images, as the network saw them, with label and confidence."""
    rows = new_predictions[new_predictions["reason"].isna()].head(len(new_prediction_images))
    pictures = [image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0) for image in new_prediction_images]
    titles = [f"{Path(f).name}\n{label} ({c:.0%})"
              for f, label, c in zip(rows["file"], rows["label"], rows["confidence"])]
    classified = int(new_predictions["reason"].isna().sum())
    return reporting.plot_image_grid(pictures, titles, f"Predictions: the first {len(rows)} of {classified} "
                                     "classified images, as the network saw them")
