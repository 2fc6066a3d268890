"""Nodes of the export pipeline: an ONNX file of the trained model, and a check that it predicts
what the PyTorch model predicts.

The file takes what decoding gives (``images.decode_image``, as the image cache holds it): uint8
images ``[N, C, S, S]`` (RGB, or grey for a 1-channel card), resized to the card's S x S as
training resized them, any batch size N; and returns float32 logits ``[N, classes]`` in the
card's class order. The normalisation ``(pixel / 255 - mean) / std`` is part of the exported
graph (``Normalised``): a deployment cannot forget it or use another dataset's mean and std.
onnxruntime enforces that contract: another dtype (float pixels in [0, 1]), channel count or
image size is refused with an error naming the expected type or dimension. The file carries the
model card (class names, input size) in its metadata.

There is no TorchScript file any more: ``torch.jit`` is deprecated upstream (every trace, save
and load warns), and a traced model took any input, returning logits for 64 px, float or grey
images alike, where the ONNX file refuses them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ... import engine, lineage
from ...augment import normalize
from ...cache import ImageCache
from ...config import ComputeConfig, EvaluateConfig
from ...loader import Loader
from ...model_card import ModelCard, load_model

log = logging.getLogger(__name__)

INPUT, OUTPUT = "images", "logits"
CARD_KEY = "model_card"  # the ONNX metadata property holding the model card
CHECK_IMAGES = 1024  # cached images the exports are checked on: top-1 agreement to 0.1 %, in seconds
CHECK_SEED = 0


class Normalised(nn.Module):
    """The trained network behind its input normalisation: uint8 images in, logits out."""

    def __init__(self, network: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(normalize(images, self.mean, self.std))


def exportable(model_weights: dict[str, torch.Tensor], model_card: dict[str, Any]
               ) -> tuple[ModelCard, Normalised, torch.Tensor]:
    """The checked card, the model to export (CPU, fp32, eval mode) and an example input."""
    card, network = load_model(model_card, model_weights)
    example = torch.zeros(2, card.channels, card.size, card.size, dtype=torch.uint8)
    return card, Normalised(network, card.mean, card.std).eval(), example


def export_onnx(model_weights: dict[str, torch.Tensor], model_card: dict[str, Any]) -> bytes:
    """The model in ONNX through ``torch.onnx.export``'s dynamo exporter (torch.export, then
    onnxscript), with a dynamic batch dimension and the card as metadata property ``model_card``."""
    _, model, example = exportable(model_weights, model_card)
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=[INPUT],
                                output_names=[OUTPUT], dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}})
    proto = program.model_proto  # built anew on each access: keep this one
    proto.metadata_props.add(key=CARD_KEY, value=json.dumps(model_card))
    return proto.SerializeToString()


# The PyTorch model the file is checked against computes as the file does in onnxruntime: on the
# CPU, in fp32. The run's ``compute`` settings would give bf16 autocast on a CPU or GPU with
# native bf16 (on the fruits sample: logits up to 0.075 apart, one top-1 class in 120 changed)
# and TF32 convolutions on a GPU: differences of the reference's precision, not of the export.
REFERENCE = ComputeConfig(device="cpu", mixed_precision=False)


def check_export(onnx_model: bytes, model_weights: dict[str, torch.Tensor], model_card: dict[str, Any],
                 image_cache: ImageCache, evaluate: EvaluateConfig) -> dict[str, Any]:
    """The export report: on real cached images, how often the ONNX model's top-1 class (in
    onnxruntime) is the PyTorch model's (``engine.predict`` on the CPU in fp32) and the largest
    logit difference; with the input contract the file enforces."""
    card, network = load_model(model_card, model_weights)
    lineage.model_matches_cache(card.lineage, image_cache, rerun="the training pipeline, or load the matching cache")
    subset, images = check_images(image_cache, evaluate.subset)
    loader = Loader.unlabelled(images, card.mean, card.std, evaluate.batch_size, REFERENCE)
    reference = engine.predict(network, loader)
    runtime, run = load_onnx(onnx_model)
    logits = torch.cat([run(batch) for batch in images.split(evaluate.batch_size)])
    report = {**card.reference(), "input": input_contract(card),
              "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", len(card.class_names)],
                         "class_names": card.class_names},
              "checked_on": {"subset": subset, "images": len(images)},
              "reference": {"runtime": f"torch {torch.__version__} (engine.predict)", "device": str(loader.device),
                            "precision": loader.precision},
              "onnx": {**runtime, "bytes": len(onnx_model), **agreement(reference, logits)}}
    log_agreement("onnx", report)
    return report


def log_agreement(name: str, report: dict[str, Any]) -> None:
    """One line for the exported model; a warning when its top-1 class differs on some image."""
    found, reference, checked = report[name], report["reference"], report["checked_on"]
    log.log(logging.WARNING if found["top1_disagreements"] else logging.INFO,
            "%s: top-1 class as PyTorch's (%s on %s) for %d of %d %s images; largest logit difference %.2g",
            name, reference["precision"], reference["device"], checked["images"] - found["top1_disagreements"],
            checked["images"], checked["subset"], found["max_abs_logit_diff"])


def check_images(image_cache: ImageCache, wanted: str) -> tuple[str, torch.Tensor]:
    """Up to ``CHECK_IMAGES`` images of the evaluation subset (val when it has none), drawn with
    a fixed seed, so that every class is likely among them."""
    subset = wanted if image_cache.count(wanted) else "val"
    images = image_cache.images(subset)
    if not len(images):
        raise ValueError("the image cache holds no val or test image to check the exported models on")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(CHECK_SEED))[:CHECK_IMAGES]
    return subset, images[pick.sort().values]


def input_contract(card: ModelCard) -> dict[str, Any]:
    """What the exported file takes, in the report's words."""
    return {"name": INPUT, "dtype": "uint8", "shape": ["batch", card.channels, card.size, card.size],
            "pixels": f"{'RGB' if card.channels == 3 else 'grey'} 0-255, resized (squashed) to "
                      f"{card.size}x{card.size} with bilinear filtering, as training decoded them",
            "normalisation": f"inside the model: (pixel / 255 - mean {card.mean}) / std {card.std}",
            "enforced": "onnxruntime refuses any other dtype, channel count or image size; the batch size is free"}


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, Any]:
    """How closely ``logits`` follow the reference model's, image by image."""
    same = reference.argmax(1) == logits.argmax(1)
    return {"top1_agreement": same.float().mean().item(), "top1_disagreements": int((~same).sum()),
            "max_abs_logit_diff": (reference - logits).abs().max().item(),
            "max_abs_logit": reference.abs().max().item()}


def load_onnx(data: bytes) -> tuple[dict[str, Any], Callable[[torch.Tensor], torch.Tensor]]:
    """The ONNX model in onnxruntime's CPU provider."""
    import onnx
    import onnxruntime

    proto = onnx.load_from_string(data)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    run = lambda batch: torch.from_numpy(session.run([OUTPUT], {INPUT: batch.numpy()})[0])
    return {"runtime": f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider",
            "exporter": f"torch.onnx.export(dynamo=True) of {proto.producer_name} {proto.producer_version}",
            "opset": opset}, run
