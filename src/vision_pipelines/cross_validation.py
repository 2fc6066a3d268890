"""k-fold cross-validation: stratified folds, a fold's view of the image cache, the ensemble.

The folds divide the training and validation images (the test subset stays the test subset);
fold ``i`` trains on the other folds and validates on its own, so every image gets exactly one
out-of-fold prediction. ``FoldCache`` shows the engine one fold's split of the image cache as
the ``train`` and ``val`` subsets it always trains on: training code does not know about folds.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

from .cache import ImageCache
from .config import ConfigError
from .loader import MemoryImages

LABELLED = ("train", "val")  # the subsets the folds divide


def make_folds(manifest: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """``file, label, row, fold`` (1..folds) for every train and val image of the manifest:
    within each class the images are shuffled with ``seed`` and dealt out in turn, so every fold
    holds each class in proportion. Refuses more folds than the smallest class has images."""
    rows = manifest[manifest["subset"].isin(LABELLED)]
    smallest = rows["label"].value_counts()
    if smallest.min() < folds:
        raise ConfigError(f"cv.folds={folds} is more than the {smallest.min()} image(s) of the smallest class "
                          f"({smallest.idxmin()!r}): every fold needs an image of each class. Lower cv.folds")
    generator = np.random.default_rng(seed)
    parts = []
    for label, group in rows.groupby("label", sort=True):
        order = generator.permutation(len(group))
        parts.append(pd.DataFrame({"file": group["file"].to_numpy()[order], "label": label,
                                   "row": group.index.to_numpy()[order], "fold": np.arange(len(group)) % folds + 1}))
    return pd.concat(parts, ignore_index=True).sort_values("row", ignore_index=True).astype({"row": int, "fold": int})


class FoldCache:
    """The image cache as fold ``fold`` sees it: ``train`` is the other folds' images, ``val``
    its own; every other subset is the cache's. In memory (a fold's images are gathered from the
    train and val subsets)."""

    def __init__(self, cache: ImageCache, folds: pd.DataFrame, fold: int) -> None:
        self.cache, self.fold = cache, fold
        rows = torch.cat([cache.rows(s) for s in LABELLED])
        fold_of = dict(zip(folds["row"].tolist(), folds["fold"].tolist()))
        held_out = torch.tensor([fold_of.get(r, 0) == fold for r in rows.tolist()], dtype=torch.bool)
        self._pick = {"train": ~held_out, "val": held_out}
        self._rows = rows
        self.class_names = cache.class_names
        self.manifest_fingerprint = cache.manifest_fingerprint
        self.fingerprint = hashlib.sha256(
            f"{cache.fingerprint} fold {fold} of {pd.util.hash_pandas_object(folds).sum()}".encode()).hexdigest()

    def labels(self, subset: str) -> torch.Tensor:
        if subset not in self._pick:
            return self.cache.labels(subset)
        return torch.cat([self.cache.labels(s) for s in LABELLED])[self._pick[subset]]

    def rows(self, subset: str) -> torch.Tensor:
        return self._rows[self._pick[subset]] if subset in self._pick else self.cache.rows(subset)

    def images(self, subset: str) -> torch.Tensor:
        if subset not in self._pick:
            return self.cache.images(subset)
        return torch.cat([self.cache.images(s) for s in LABELLED])[self._pick[subset]]

    def stream(self, subset: str) -> MemoryImages:
        return MemoryImages(self.images(subset))

    def count(self, subset: str) -> int:
        return int(self._pick[subset].sum()) if subset in self._pick else self.cache.count(subset)

    def nbytes(self, subset: str) -> int:
        return self.count(subset) * self.cache.channels * self.cache.size ** 2


def ensemble(fold_probabilities: list[pd.DataFrame], class_names: list[str]) -> pd.DataFrame:
    """One row per image the folds all predicted (``file, subset, label``), with the mean of the
    folds' class probabilities (``p_<class>`` columns), the predicted class and its confidence."""
    columns = [f"p_{name}" for name in class_names]
    keys = ["file", "subset"]
    stacked = pd.concat(fold_probabilities, ignore_index=True)
    mean = stacked.groupby(keys, sort=False)[columns].mean()
    counts = stacked.groupby(keys, sort=False).size()
    mean = mean[counts == len(fold_probabilities)]
    labels = stacked.drop_duplicates(keys).set_index(keys)["label"]
    table = mean.reset_index().assign(label=labels.loc[mean.index].to_numpy())
    probabilities = table[columns].to_numpy()
    table["predicted"] = [class_names[i] for i in probabilities.argmax(1)]
    table["confidence"] = probabilities.max(1)
    return table[[*keys, "label", "predicted", "confidence", *columns]]


def summary(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over the folds."""
    frame = pd.DataFrame(per_fold)
    return {name: {"mean": float(frame[name].mean()), "sd": float(frame[name].std(ddof=1))}
            for name in frame.columns if name != "fold"}
