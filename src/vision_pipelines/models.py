"""Networks by name: the project's ResNet9 and torchvision's ResNets (``model_card`` rebuilds a trained one)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig


def conv_block(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
              nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels), conv_block(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GlobalMaxPool(nn.Module):
    """``[N, C, H, W] -> [N, C, 1, 1]``, the maximum over each feature map.

    The same output as ``nn.AdaptiveMaxPool2d(1)``, but its backward (``amax``'s, which shares
    the gradient among tied maxima) has a deterministic CUDA kernel, while adaptive max pooling's
    has none: ``train.deterministic=true`` would refuse to train the model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


class Scale(nn.Module):
    """Multiplies its input by a constant (the speedruns' ``Mul``): scaled-down logits let SGD
    train at large learning rates without the softmax saturating early."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class ResNet9(nn.Module):
    """The ResNet9 of the fast CIFAR-10 / fruits tutorials; ``width`` channels in the first block.

    Three 2x poolings, then global max pooling, so any input of at least 8x8 pixels works. The
    logits are multiplied by ``logit_scale`` (1: as the tutorials; 0.125: as the speedruns'
    ResNet9, which SGD-Nesterov trains at a large learning rate).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, dropout: float = 0.2,
                 logit_scale: float = 1.0) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_block(in_channels, w),
            conv_block(w, 2 * w, pool=True), Residual(2 * w),
            conv_block(2 * w, 4 * w, pool=True),
            conv_block(4 * w, 8 * w, pool=True), Residual(8 * w),
        )
        self.classifier = nn.Sequential(GlobalMaxPool(), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(8 * w, num_classes), Scale(logit_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(model: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """A fresh network for ``model``; pretrained torchvision weights are loaded when asked for."""
    if model.name == "resnet9":
        network = ResNet9(in_channels, num_classes, model.width, model.dropout, model.logit_scale)
        # Frozen before the optimizer and DistributedDataParallel see it: neither expects its gradient.
        first_convolution(network).requires_grad_(model.whiten != "frozen")
        return network
    return _torchvision_resnet(model, in_channels, num_classes)


def first_convolution(network: ResNet9) -> nn.Conv2d:
    """The convolution that sees the images (``model.whiten`` initialises it)."""
    return network.features[0][0]


def _torchvision_resnet(model: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, model.name)
    weights = torchvision.models.get_model_weights(model.name).DEFAULT if model.pretrained else None
    try:
        network = builder(weights=weights)
    except (OSError, RuntimeError) as error:  # offline (URLError is an OSError) or a bad file
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise PretrainedWeightsMissing(
            f"could not load pretrained weights {weights} ({error}). Download {weights.url} to "
            f"{cache} (TORCH_HOME moves the cache), or set model.pretrained=false to train from scratch."
        ) from error
    if in_channels != 3:  # keep pretrained filters by averaging them over the RGB channels
        conv = network.conv1
        network.conv1 = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                  conv.padding, bias=False)
        with torch.no_grad():
            network.conv1.weight.copy_(conv.weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1))
    network.fc = nn.Sequential(nn.Dropout(model.dropout), nn.Linear(network.fc.in_features, num_classes))
    return network


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights are neither cached nor downloadable."""


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
