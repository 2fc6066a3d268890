"""What each artifact was derived from, so artifacts that do not belong together are refused.

Every derived artifact records the fingerprint of what it was made from: the image cache
records the manifest's, the model card the cache's and its own weights', the predictions the
model's and the manifest's. A node that receives two artifacts checks they belong together
and otherwise stops, naming the stage to re-run, instead of pairing a new manifest with an
old model in silence. Each such pairing has its named check here (``cache_matches_manifest``,
``model_matches_cache``, ...), so every node refuses it with the same message.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

if TYPE_CHECKING:
    from .cache import ImageCache

# What to re-run when the image cache, or the model, is not the one the next stage expects.
RERUN_CACHE = "the cache stage and what follows (--tags=cache,train,evaluate,submit)"
RERUN_TRAIN = "the train stage and what follows (--tags=train,evaluate,submit), or load the matching cache"


class LineageError(ValueError):
    """Two artifacts come from different runs or datasets; the message names what to re-run."""


def manifest_fingerprint(manifest: pd.DataFrame, class_names: list[str]) -> str:
    """A hash of the split: every file with its label and subset, and the class order."""
    digest = hashlib.sha256(repr(list(class_names)).encode())
    for file, label, subset in zip(manifest["file"], manifest["label"], manifest["subset"]):
        digest.update(f"{file}\0{label}\0{subset}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check(found: str | None, expected: str, what: str, rerun: str) -> None:
    """Raise ``LineageError`` unless ``found == expected``."""
    if found != expected:
        raise LineageError(f"{what} ({found or 'no fingerprint'} != {expected}). Re-run {rerun}, "
                           "so that every artifact comes from the same data and model.")


def cache_matches_manifest(image_cache: ImageCache, manifest: pd.DataFrame, class_names: list[str]) -> None:
    """The image cache was built from this manifest (its files, labels, subsets and classes)."""
    check(image_cache.manifest_fingerprint, manifest_fingerprint(manifest, class_names),
          "the image cache was built from another manifest", RERUN_CACHE)


def report_matches_cache(data_report: dict[str, Any], image_cache: ImageCache) -> None:
    """The data report describes this image cache."""
    check(data_report.get("image_cache"), image_cache.fingerprint,
          "the data report describes another image cache", "the cache stage (--tags=cache)")


def model_matches_cache(model_lineage: dict[str, Any], image_cache: ImageCache, rerun: str = RERUN_TRAIN) -> None:
    """The model (whose card records ``model_lineage``) was trained on this image cache: the same
    data and image settings."""
    check(model_lineage.get("image_cache"), image_cache.fingerprint,
          "the model was trained on another image cache (other data or image settings)", rerun)


def predictions_match_manifest(predictions: pd.DataFrame, manifest: pd.DataFrame) -> None:
    """The predictions were made for this manifest (as their ``attrs["lineage"]`` records)."""
    recorded = predictions.attrs.get("lineage", {})
    check(recorded.get("manifest"), manifest_fingerprint(manifest, recorded.get("class_names", [])),
          "the predictions were made for another manifest",
          "the stages after the split (--tags=cache,train,evaluate,submit)")


def predictions_match_classes(predictions: pd.DataFrame, class_names: list[str]) -> None:
    """The predictions were made by a model of these classes, in this order."""
    if predictions.attrs.get("lineage", {}).get("class_names") != list(class_names):
        raise LineageError("the predictions were made by a model of other classes than the current "
                           "split's. Re-run the stages after the split (--tags=cache,train,evaluate,submit)")
