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

    The same output as ``nn.AdaptiveMaxPool2d(1)``, but its backward (a scatter to each maximum's
    index) has a deterministic CUDA kernel, while adaptive max pooling's has none:
    ``train.deterministic=true`` would refuse to train the model. Not ``amax``: under
    ``torch.compile`` with bf16 autocast, after a GELU, its backward compares the bf16 maximum with
    an fp32 recomputation, finds no element equal to it and divides by zero (NaN gradients; torch
    2.14, CPU).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).max(dim=2).values[..., None, None]


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


class ConvGroup(nn.Sequential):
    """airbench's block: a convolution, 2x max pooling, then batch norm and GELU, another
    convolution at the lower resolution, batch norm and GELU. Pooling before the normalisation
    saves three quarters of its (memory-bound) work. The batch norms' weights stay 1 (airbench's:
    only their biases train, at ``train.bn_bias_lr_scale`` times the lr); their statistics follow
    each batch closely (momentum 0.4, airbench's: a run of a few epochs has few steps to average over)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(dirac_conv(in_channels, out_channels), nn.MaxPool2d(2), frozen_scale_norm(out_channels),
                         nn.GELU(), dirac_conv(out_channels, out_channels), frozen_scale_norm(out_channels), nn.GELU())


def dirac_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 convolution whose first ``in_channels`` filters start as the identity (airbench's
    initialisation: each group starts close to passing its input through)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(in_channels, out_channels)])
    return conv


def frozen_scale_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


class AirbenchNet(nn.Module):
    """The network of airbench (KellerJordan/cifar10-airbench), shaped for few epochs: a 2x2
    convolution of as many filters as its patches have dimensions, twice (``model.whiten``
    initialises it to whiten them), then three ``ConvGroup`` of ``width``, ``4 * width`` and
    ``4 * width`` channels (width 64: airbench94's), global max pooling and scaled logits. At
    equal FLOPs its wide low-resolution layers run faster on a CPU than ResNet9's narrow
    high-resolution ones. Inputs of at least 9x9 pixels."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, dropout: float = 0.0,
                 logit_scale: float = 1.0) -> None:
        super().__init__()
        stem = 2 * in_channels * 2 * 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, stem, 2), nn.GELU(),
            ConvGroup(stem, width), ConvGroup(width, 4 * width), ConvGroup(4 * width, 4 * width),
        )
        with torch.no_grad():
            self.features[0].bias.zero_()
        self.classifier = nn.Sequential(GlobalMaxPool(), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(4 * width, num_classes, bias=False), Scale(logit_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NETWORKS = {"resnet9": ResNet9, "airbench": AirbenchNet}


def build_model(model: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """A fresh network for ``model``; pretrained torchvision weights are loaded when asked for."""
    if model.name in NETWORKS:
        network = NETWORKS[model.name](in_channels, num_classes, model.width, model.dropout, model.logit_scale)
        # Frozen before the optimizer and DistributedDataParallel see it: neither expects its gradient.
        first_convolution(network).requires_grad_(model.whiten != "frozen")
        return network
    return _torchvision_resnet(model, in_channels, num_classes)


def first_convolution(network: ResNet9 | AirbenchNet) -> nn.Conv2d:
    """The convolution that sees the images (``model.whiten`` initialises it)."""
    first = network.features[0]
    return first if isinstance(first, nn.Conv2d) else first[0]


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
