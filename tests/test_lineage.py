"""The named lineage checks (src/vision_pipelines/lineage.py): each passes artifacts that belong
together and refuses others, naming what differs and the stage to re-run."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from vision_pipelines import lineage
from vision_pipelines.lineage import LineageError, manifest_fingerprint

CLASSES = ["apple", "pear"]
MANIFEST = pd.DataFrame({"file": ["a/1.jpg", "p/2.jpg", "a/3.jpg"], "label": ["apple", "pear", "apple"],
                         "subset": ["train", "val", "test"]})
CACHE = SimpleNamespace(fingerprint="cache-1", manifest_fingerprint=manifest_fingerprint(MANIFEST, CLASSES))


def predictions(manifest: pd.DataFrame = MANIFEST, classes: list[str] = CLASSES) -> pd.DataFrame:
    table = pd.DataFrame({"file": manifest["file"]})
    table.attrs["lineage"] = {"manifest": manifest_fingerprint(manifest, classes), "class_names": classes}
    return table


def test_artifacts_that_belong_together_pass() -> None:
    lineage.cache_matches_manifest(CACHE, MANIFEST, CLASSES)
    lineage.report_matches_cache({"image_cache": "cache-1"}, CACHE)
    lineage.model_matches_cache({"image_cache": "cache-1"}, CACHE)
    lineage.predictions_match_manifest(predictions(), MANIFEST)
    lineage.predictions_match_classes(predictions(), CLASSES)


def test_a_cache_of_another_split_is_refused() -> None:
    resplit = MANIFEST.assign(subset=["train", "train", "test"])
    with pytest.raises(LineageError, match=r"image cache was built from another manifest .*!= .*--tags=cache,train"):
        lineage.cache_matches_manifest(CACHE, resplit, CLASSES)
    with pytest.raises(LineageError, match="another manifest"):  # the class order is part of the split
        lineage.cache_matches_manifest(CACHE, MANIFEST, CLASSES[::-1])


def test_a_report_or_model_of_another_cache_is_refused() -> None:
    with pytest.raises(LineageError, match=r"describes another image cache \(no fingerprint .*--tags=cache"):
        lineage.report_matches_cache({}, CACHE)
    model = {"image_cache": "cache-0"}  # a model card's lineage record
    with pytest.raises(LineageError, match=r"another image cache .*cache-0 != cache-1.*Re-run the train stage"):
        lineage.model_matches_cache(model, CACHE)
    with pytest.raises(LineageError, match="Re-run the training pipeline"):
        lineage.model_matches_cache(model, CACHE, rerun="the training pipeline")


def test_predictions_of_another_manifest_or_classes_are_refused() -> None:
    with pytest.raises(LineageError, match="predictions were made for another manifest.*--tags=cache,train"):
        lineage.predictions_match_manifest(predictions(), MANIFEST.iloc[1:])
    with pytest.raises(LineageError, match="another manifest .no fingerprint"):
        lineage.predictions_match_manifest(pd.DataFrame({"file": []}), MANIFEST)
    with pytest.raises(LineageError, match="other classes than the current split's"):
        lineage.predictions_match_classes(predictions(), CLASSES[::-1])
