"""What each artifact was derived from, so artifacts that do not belong together are refused.

Every derived artifact records the fingerprint of what it was made from: the image cache
records the manifest's, the model card the cache's and its own weights', the predictions the
model's and the manifest's. A node that receives two artifacts checks they belong together
and otherwise stops, naming the stage to re-run, instead of pairing a new manifest with an
old model in silence.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import torch


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
