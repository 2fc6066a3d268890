"""``train.optimizer``: Adam, SGD-Nesterov, or Muon for the convolution filters and SGD-Nesterov
for the rest, with each group's peak learning rate (the one-cycle schedule scales them alike)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

# Muon's quintic Newton-Schulz coefficients (Keller Jordan's): the steepest slope at 0 that still
# takes the singular values towards 1. Three steps, as airbench94_muon: five cost 7.6 % of the CIFAR-10
# CPU recipe's 128-image fp32 step (three: 4.9 %) and scored the same (width 32, 9 epochs, batch 64:
# 88.50 % with five, 88.57 % with three; docs/results.md).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 3


def build_optimizer(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config``'s optimizer at its peak learning rates (each group's ``lr``)."""
    groups = param_groups(network, config)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.max_lr, weight_decay=config.weight_decay)
    if config.optimizer == "muon":
        return Muon(groups, lr=config.max_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.max_lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


def param_groups(network: nn.Module, config: TrainConfig) -> list[dict]:
    """The trained parameters in groups: with ``train.bn_bias_lr_scale``, the batch-norm biases
    at that multiple of the learning rate and with the weight decay divided by it (airbench's:
    SGD then decays them as much per step as before); with ``optimizer: muon``, the convolution
    filters after the first (``muon_filters``) at ``train.muon_lr``, orthogonalised."""
    scale = config.bn_bias_lr_scale
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    biases = [m.bias for m in norms if m.bias is not None] if scale != 1 else []
    filters = muon_filters(network) if config.optimizer == "muon" else []
    apart = {id(p) for p in [*biases, *filters]}
    groups = [{"params": [p for p in network.parameters() if id(p) not in apart]}]
    if biases:
        groups.append({"params": biases, "lr": config.max_lr * scale, "weight_decay": config.weight_decay / scale})
    if filters:
        groups.append({"params": filters, "lr": config.muon_lr, "orthogonal": True})
    return [group for group in groups if group["params"]]


def muon_filters(network: nn.Module) -> list[nn.Parameter]:
    """The trained 4-D convolution weights but the first, which sees the pixels (airbench94_muon's
    choice; the linear head and every bias stay with SGD)."""
    convolutions = [m.weight for m in network.modules() if isinstance(m, nn.Conv2d)]
    return [w for w in convolutions[1:] if w.requires_grad]


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan; airbench94_muon trains CIFAR-10 with it in 20 % fewer epochs than with
    SGD): the Nesterov momentum of each filter bank, as a matrix ``[out, in x kh x kw]``, is
    replaced by the nearest semi-orthogonal matrix, so the step moves every direction alike however
    unevenly the gradient is spread; the filters are rescaled to norm ``sqrt(out)`` before each step
    instead of decayed (batch norm follows each, so their scale is free), making ``lr`` the size of
    each step relative to the weights. Groups without ``orthogonal`` take SGD-Nesterov steps with
    weight decay, as ``torch.optim.SGD``. (``torch.optim.Muon`` takes 2-D parameters only.)"""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "orthogonal": False})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            momentum, orthogonal = group["momentum"], group["orthogonal"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if orthogonal else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:  # not setdefault: it would zero a new tensor every step
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buffer = state["momentum_buffer"]
                update = grad.add(buffer.mul_(momentum).add_(grad), alpha=momentum)  # Nesterov
                if orthogonal:
                    p.mul_(math.sqrt(len(p)) / p.norm().clamp(min=1e-12))
                    update = orthogonalize(update.flatten(1)).view(p.shape)
                p.add_(update, alpha=-group["lr"])


def orthogonalize(matrix: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """About the semi-orthogonal matrix nearest ``matrix`` ``[m, n]`` (``U V^T`` of its SVD):
    ``steps`` Newton-Schulz iterations of Muon's quintic, on the smaller Gram matrix."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.float() / (matrix.norm() + 1e-7)  # every singular value at most 1
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)
