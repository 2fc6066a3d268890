"""The model card: everything needed to rebuild and use a trained model, written and read here only.

A card (``data/06_models/<dataset>/model_card.json``) names the architecture, the class names in
output order, how an image becomes the network's input, a fingerprint of the weights it
describes and of the image cache they were trained on, the training settings and validation
metrics. Its ``fingerprint`` covers what the card means together with the weights (architecture,
classes, input contract, weights fingerprint): an edited card (class names reversed, another
input size or mean) no longer matches it. ``read_card`` refuses a card of another format, with a
key missing, edited, or that does not describe the weights it is given; ``load_model`` rebuilds
the network from card and weights alone. The catalog adds the card's Kedro ``version`` when it
loads one, so whatever uses a model can name it (``ModelCard.reference``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import ConfigError, ImageConfig, ModelConfig
from .lineage import LineageError, weights_fingerprint
from .models import build_model

FORMAT_VERSION = 3
REQUIRED_KEYS = ("format_version", "model", "class_names", "input", "weights_fingerprint", "lineage", "fingerprint")
MEANING = ("model", "class_names", "input", "weights_fingerprint")  # what the card's fingerprint covers
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
NORMALISATION = "x = (pixel / 255 - mean) / std, per channel, NCHW"


class ModelCardError(ValueError):
    """A model card that cannot be used: another format, a key missing, or other weights."""


@dataclass(frozen=True)
class ModelCard:
    """The parts of a card that using the model needs."""

    model: ModelConfig
    class_names: list[str]
    size: int
    channels: int
    mean: list[float]
    std: list[float]
    weights_fingerprint: str
    lineage: dict[str, str]  # fingerprints of what the model was trained on (image_cache, manifest)
    version: str | None = None  # the Kedro version the card was loaded from (None: not from the catalog)
    val_accuracy: float | None = None  # the model's score when it was trained

    def reference(self) -> dict[str, Any]:
        """Which model this is, as every output made with it records it (predictions, submission,
        new predictions, export report)."""
        return {"model": self.weights_fingerprint, "model_version": self.version,
                "model_val_accuracy": self.val_accuracy}

    def describe(self) -> str:
        """``model 2026-11-23T10.19.01.357Z (val accuracy 0.9500)``, for log lines."""
        score = "" if self.val_accuracy is None else f" (val accuracy {self.val_accuracy:.4f})"
        return f"model {self.version or self.weights_fingerprint}{score}"

    def network(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """The trained network in eval mode, on the CPU."""
        network = build_model(dataclasses.replace(self.model, pretrained=False), self.channels,
                              len(self.class_names))
        network.load_state_dict(weights)
        return network.eval()


def make_card(model_config: ModelConfig, image_config: ImageConfig, class_names: list[str],
              weights: dict[str, torch.Tensor], lineage: dict[str, str], training: dict[str, Any],
              metrics: dict[str, float | None]) -> dict[str, Any]:
    """The card (a JSON-ready dict) of ``weights`` trained with these settings."""
    model = dataclasses.asdict(model_config)
    pretrained = model.pop("pretrained")
    card = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "pretrained_init": pretrained,
        "class_names": list(class_names),
        "input": {"size": image_config.size, "channels": image_config.channels, "dtype": "uint8",
                  "mean": list(image_config.mean), "std": list(image_config.std),
                  "normalisation": NORMALISATION},
        # Learned tensors only: batch-norm statistics are buffers, not parameters.
        "parameters": sum(t.numel() for k, t in weights.items() if k.rsplit(".", 1)[-1] not in BUFFERS),
        "weights_fingerprint": weights_fingerprint(weights),
        "lineage": dict(lineage),
        "training": training,
        "metrics": metrics,
        "software": {"torch": torch.__version__, "python": platform.python_version()},
    }
    return {**card, "fingerprint": card_fingerprint(card)}


def card_fingerprint(card: dict[str, Any]) -> str:
    """A hash of what the card means (``MEANING``), the weights' fingerprint included."""
    meaning = json.dumps({key: card.get(key) for key in MEANING}, sort_keys=True)
    return hashlib.sha256(meaning.encode()).hexdigest()[:16]


def read_card(card: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> ModelCard:
    """Check ``card`` (and that it describes ``weights``) and return its usable parts."""
    if not isinstance(card, dict):
        raise ModelCardError(f"a model card is a JSON object, got {type(card).__name__}")
    version = card.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelCardError(f"model card format_version {version!r} is not the one this project reads "
                             f"({FORMAT_VERSION}): re-run the train stage (--tags=train) to write a new one")
    missing = [key for key in REQUIRED_KEYS if key not in card]
    if "input" in card:
        missing += [f"input.{key}" for key in ("size", "channels", "mean", "std") if key not in card["input"]]
    if missing:
        raise ModelCardError(f"the model card has no {missing}: it is damaged or was not written "
                             "by this project; re-run the train stage (--tags=train)")
    if card_fingerprint(card) != card["fingerprint"]:
        which = f" of version {card['version']}" if card.get("version") else ""
        raise ModelCardError(f"the model card{which} was edited after training: its class names, input "
                             "contract, architecture or weights fingerprint no longer match its fingerprint, so "
                             "the model would be used wrongly. Re-run the train stage (--tags=train), or load "
                             "another version")
    try:
        model = ModelConfig(**card["model"])
        image = ImageConfig(size=card["input"]["size"], channels=card["input"]["channels"],
                            mean=card["input"]["mean"], std=card["input"]["std"])
    except (ConfigError, TypeError) as error:
        raise ModelCardError(f"the model card describes no buildable model: {error}") from None
    parsed = ModelCard(model, list(card["class_names"]), image.size, image.channels, image.mean,
                       image.std, card["weights_fingerprint"], dict(card["lineage"]), card.get("version"),
                       (card.get("metrics") or {}).get("val_accuracy"))
    if weights is not None and weights_fingerprint(weights) != parsed.weights_fingerprint:
        raise LineageError(
            "the model weights are not the ones the model card describes (weights fingerprint "
            f"{weights_fingerprint(weights)} != {parsed.weights_fingerprint} in the card): they "
            "come from different runs or datasets. Re-run the train stage (--tags=train), or "
            "pass the same version of both with --load-versions")
    return parsed


def load_model(card: dict[str, Any], weights: dict[str, torch.Tensor]) -> tuple[ModelCard, nn.Module]:
    """The checked card and the trained network it describes (eval mode, CPU)."""
    parsed = read_card(card, weights)
    return parsed, parsed.network(weights)

