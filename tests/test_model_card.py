"""The model card (src/vision_pipelines/model_card.py) and the lineage fingerprints
(src/vision_pipelines/lineage.py): a card rebuilds its model, and refuses what it does not describe."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from vision_pipelines.config import ImageConfig, ModelConfig
from vision_pipelines.lineage import LineageError, check, manifest_fingerprint, weights_fingerprint
from vision_pipelines.model_card import (
    FORMAT_VERSION,
    ModelCardError,
    card_fingerprint,
    load_model,
    make_card,
    read_card,
)
from vision_pipelines.models import build_model

MODEL = ModelConfig(width=4, dropout=0.1)
IMAGES = ImageConfig(size=16, channels=1, mean=[0.3], std=[0.2])


def trained(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(MODEL, 1, 3).state_dict()


def card_of(weights: dict[str, torch.Tensor]) -> dict:
    return make_card(MODEL, IMAGES, ["a", "b", "c"], weights, {"image_cache": "c1", "manifest": "m1"},
                     training={"epochs_run": 2}, metrics={"val_accuracy": 0.5})


def test_a_card_rebuilds_its_model_from_card_and_weights_alone() -> None:
    weights = trained()
    card, network = load_model(card_of(weights), weights)
    assert card.class_names == ["a", "b", "c"] and (card.size, card.channels) == (16, 1)
    assert card.mean == [0.3] and card.lineage == {"image_cache": "c1", "manifest": "m1"}
    x = torch.rand(2, 1, 16, 16)
    original = build_model(MODEL, 1, 3)
    original.load_state_dict(weights)
    assert torch.equal(network(x), original.eval()(x))
    assert not network.training


def test_a_card_counts_learned_parameters_not_batch_norm_statistics() -> None:
    weights = trained()
    assert card_of(weights)["parameters"] == sum(p.numel() for p in build_model(MODEL, 1, 3).parameters())


def test_weights_that_the_card_does_not_describe_are_refused() -> None:
    with pytest.raises(LineageError, match="weights are not the ones the model card describes.*--load-versions"):
        read_card(card_of(trained(0)), trained(1))


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.pop("input"), r"has no \['input'\]"),
    (lambda c: c["input"].pop("std"), r"has no \['input.std'\]"),
    (lambda c: c.update(format_version=1), "format_version 1 is not the one this project reads"),
])
def test_a_damaged_or_foreign_card_is_a_clear_error(damage, message: str) -> None:
    card = copy.deepcopy(card_of(trained()))
    damage(card)
    with pytest.raises(ModelCardError, match=message):
        read_card(card)


def test_a_card_of_an_unknown_architecture_is_a_clear_error() -> None:
    card = copy.deepcopy(card_of(trained()))
    card["model"]["name"] = "vgg"
    card["fingerprint"] = card_fingerprint(card)  # written so, not edited
    with pytest.raises(ModelCardError, match="describes no buildable model: model.name must be one of"):
        read_card(card)


@pytest.mark.parametrize("edit", [
    lambda c: c["class_names"].reverse(),
    lambda c: c["input"].update(size=32),
    lambda c: c["input"].update(mean=[0.5]),
    lambda c: c["model"].update(width=8),
    lambda c: c.update(weights_fingerprint="0" * 16),
])
def test_an_edited_card_is_refused_even_with_its_own_weights(edit) -> None:
    """Reversed class names or another input contract would make the model answer wrongly in silence."""
    weights = trained()
    card = copy.deepcopy(card_of(weights))
    edit(card)
    with pytest.raises(ModelCardError, match="edited after training.*Re-run the train stage"):
        read_card(card, weights)


def test_the_catalog_version_and_score_name_the_model() -> None:
    card = read_card({**card_of(trained()), "version": "2026-11-23T10.19.01.357Z"})
    assert card.reference() == {"model": card.weights_fingerprint, "model_version": "2026-11-23T10.19.01.357Z",
                                "model_val_accuracy": 0.5}
    assert card.describe() == "model 2026-11-23T10.19.01.357Z (val accuracy 0.5000)"


def test_fingerprints_change_with_what_they_fingerprint() -> None:
    manifest = pd.DataFrame({"file": ["a/1.jpg", "b/2.jpg"], "label": ["a", "b"], "subset": ["train", "val"]})
    same = manifest_fingerprint(manifest, ["a", "b"])
    assert same == manifest_fingerprint(manifest.copy(), ["a", "b"])
    assert same != manifest_fingerprint(manifest.assign(subset=["val", "train"]), ["a", "b"])
    assert same != manifest_fingerprint(manifest, ["b", "a"])  # class order is the model's output order
    weights = trained()
    assert weights_fingerprint(weights) == weights_fingerprint({k: v.clone() for k, v in weights.items()})
    changed = dict(weights, **{"classifier.3.bias": weights["classifier.3.bias"] + 1e-6})
    assert weights_fingerprint(changed) != weights_fingerprint(weights)
    check("x", "x", "unused", "unused")
    with pytest.raises(LineageError, match="what differs .*Re-run the split stage"):
        check("x", "y", "what differs", "the split stage")


def test_card_format_version_is_written() -> None:
    assert card_of(trained())["format_version"] == FORMAT_VERSION
