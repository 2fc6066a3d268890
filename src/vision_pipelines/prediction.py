"""Classify image files with a trained model: what the predict pipeline and the notebook call.

Files are decoded exactly as training decoded them (``images.decode_image`` at the card's size
and channels) and run through ``engine.predict``, the one prediction path, which evaluation
and the export checks use too; device, batch size and precision come from settings.
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
from .config import ComputeConfig
from .images import decode_all
from .loader import Loader, MemoryImages
from .model_card import ModelCard

log = logging.getLogger(__name__)

BLOCK = 4096  # files decoded and predicted at a time: memory stays bounded on large folders


def classify_files(files: Sequence[Path], card: ModelCard, network: nn.Module, compute: ComputeConfig,
                   batch_size: int = 256, tta_flip: bool = False, top_k: int = 3,
                   workers: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per file: ``file, label, confidence, label_2, confidence_2, ...`` up to ``top_k``,
    and ``reason`` for a file that could not be decoded (its label left empty); and the decoded
    uint8 images ``[N, C, H, W]`` of the first 64 predicted files, for a grid."""
    top_k = min(top_k, len(card.class_names))
    rows, shown = [], []
    it = iter(files)
    while block := list(itertools.islice(it, BLOCK)):
        decoded = list(decode_all(block, card.size, card.channels, workers))
        good = [i for i, (array, _, _) in enumerate(decoded) if array is not None]
        for i, (array, _, reason) in enumerate(decoded):
            if array is None:
                log.warning("skipping %s: %s", block[i], reason)
                rows.append({"file": str(block[i]), "reason": reason})
        if not good:
            continue
        images = torch.from_numpy(np.stack([decoded[i][0] for i in good]))
        loader = Loader.create(MemoryImages(images), torch.full((len(good),), -1), card.mean, card.std,
                               batch_size, compute)
        probabilities = engine.predict(network, loader, tta_flip).softmax(1).cpu()
        confidence, index = probabilities.topk(top_k, dim=1)
        for i, scores, classes in zip(good, confidence.tolist(), index.tolist()):
            row = {"file": str(block[i]), "label": card.class_names[classes[0]], "confidence": scores[0]}
            for rank in range(1, top_k):
                row[f"label_{rank + 1}"] = card.class_names[classes[rank]]
                row[f"confidence_{rank + 1}"] = scores[rank]
            rows.append(row)
        shown += [decoded[i][0] for i in good[:64 - len(shown)]]
    columns = ["file", "label", "confidence",
               *itertools.chain.from_iterable((f"label_{r}", f"confidence_{r}") for r in range(2, top_k + 1)), "reason"]
    table = pd.DataFrame(rows, columns=columns)
    skipped = table["reason"].notna().sum()
    if skipped:
        log.warning("skipped %d of %d files that could not be decoded (their reason is in the CSV)",
                    skipped, len(table))
    return table, np.stack(shown) if shown else np.empty((0, card.channels, card.size, card.size), np.uint8)
