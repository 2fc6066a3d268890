"""Classify image files with a trained model: what the predict pipeline and the notebook call;
and the held-out subsets of an image cache: what evaluation and the cross-validation folds call.

Files are decoded exactly as training decoded them (``images.decode_all`` at the card's size
and channels, as the image cache does) and run through ``engine.predict``, the one prediction
path, which evaluation and the export checks use too; device, batch size and precision come
from settings.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import engine
from .cache import ImageCache
from .config import HELD_OUT_SUBSETS, ComputeConfig, EvaluateConfig, PredictConfig
from .images import decode_all
from .loader import Loader, memory_limit_bytes, resolve_device, subset_images
from .model_card import ModelCard
from .threads import ThreadPolicy

log = logging.getLogger(__name__)

BLOCK = 4096  # files decoded and predicted at a time: memory stays bounded on large folders


def held_out_probabilities(network: nn.Module, cache: ImageCache, card: ModelCard, evaluate: EvaluateConfig,
                           compute: ComputeConfig) -> dict[str, torch.Tensor]:
    """Class probabilities ``[N, classes]`` of each held-out subset (val, test, predict) that
    ``cache`` (an ``ImageCache`` or a fold's view of one) has, in its order, with the
    evaluation's test-time augmentation; a subset is held in memory when it fits in half the
    memory available, else streamed from the cache's shards."""
    limit = memory_limit_bytes()
    threads = ThreadPolicy.for_device(compute.threads, resolve_device(compute.device))  # one choice for all subsets
    probabilities = {}
    for subset in (subset for subset in HELD_OUT_SUBSETS if cache.count(subset)):
        loader = Loader.unlabelled(subset_images(cache, subset, limit), card.mean, card.std, evaluate.batch_size,
                                   compute)
        logits = engine.predict(network, loader, evaluate.tta_flip, threads, evaluate.tta_crops)
        probabilities[subset] = logits.softmax(1).cpu()
    return probabilities


def prediction_columns(top_k: int) -> list[str]:
    """``file, label, confidence, label_2, confidence_2, ..., label_<k>, confidence_<k>, reason``."""
    ranked = itertools.chain.from_iterable((f"label_{r}", f"confidence_{r}") for r in range(2, top_k + 1))
    return ["file", "label", "confidence", *ranked, "reason"]


def classify_files(files: Sequence[Path], card: ModelCard, network: nn.Module, compute: ComputeConfig,
                   predict: PredictConfig, workers: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per file, in order: ``file, label, confidence`` (the most likely class and its
    probability), ``label_2, confidence_2, ...`` down to the ``predict.top_k``-th class, and
    ``reason`` for a file that could not be decoded (skipped: its labels left empty); and the
    first ``predict.grid_size`` classified images as the network saw them (uint8
    ``[n, C, H, W]``), for a grid. Batches are ``predict.batch_size``, with ``predict.tta_flip``."""
    top_k, shown = min(predict.top_k, len(card.class_names)), predict.grid_size
    rows, pictures = [], []
    # compute.threads: auto is chosen once, on the first block
    threads = ThreadPolicy.for_device(compute.threads, resolve_device(compute.device))
    it = iter(files)
    while block := list(itertools.islice(it, BLOCK)):
        decoded = list(decode_all(block, card.size, card.channels, workers))
        good = [i for i, (array, _, _) in enumerate(decoded) if array is not None]
        probabilities = torch.empty(0, len(card.class_names))
        if good:
            images = torch.from_numpy(np.stack([decoded[i][0] for i in good]))
            loader = Loader.unlabelled(images, card.mean, card.std, predict.batch_size, compute)
            probabilities = engine.predict(network, loader, predict.tta_flip, threads).softmax(1).cpu()
        confidence, index = probabilities.topk(top_k, dim=1)
        predicted = dict(zip(good, zip(confidence.tolist(), index.tolist())))
        for i, (_, _, detail) in enumerate(decoded):
            if i not in predicted:
                log.warning("skipping %s: %s", block[i], detail)
                rows.append({"file": str(block[i]), "reason": detail})
                continue
            scores, classes = predicted[i]
            row = {"file": str(block[i]), "label": card.class_names[classes[0]], "confidence": scores[0]}
            for rank in range(1, top_k):
                row[f"label_{rank + 1}"] = card.class_names[classes[rank]]
                row[f"confidence_{rank + 1}"] = scores[rank]
            rows.append(row)
        pictures += [decoded[i][0] for i in good[:max(0, shown - len(pictures))]]
    table = pd.DataFrame(rows, columns=prediction_columns(top_k))
    return table, np.stack(pictures) if pictures else np.empty((0, card.channels, card.size, card.size), np.uint8)
