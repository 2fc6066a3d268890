"""The collectives training uses inside one process of a torch.distributed job.

This process's rank and world size, the backend for a device, batch norm over the global batch
(``nn.SyncBatchNorm`` on GPUs, ``CpuSyncBatchNorm`` on CPUs), and rank 0's batch-norm statistics
for every process. Alone (no process group), each is a no-op or the single-process answer.
``engine`` and ``distributed`` (the launcher) both build on this module, which imports neither.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes training together (0, 1 when alone)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def backend_for(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    return "nccl" if device.type == "cuda" else "gloo"


def sync_batchnorm(network: nn.Module, device: torch.device) -> nn.Module:
    """``network`` with its batch-norm layers normalising over the global batch, across processes:
    ``nn.SyncBatchNorm``, whose fused kernels need a GPU; on the CPU, ``CpuSyncBatchNorm``."""
    if device.type == "cpu":
        return CpuSyncBatchNorm.convert(network)
    return nn.SyncBatchNorm.convert_sync_batchnorm(network)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over every process's slice of the batch on CPUs (gloo), which ``nn.SyncBatchNorm``
    does not support (nor does DistributedDataParallel let it run there).

    In training, the mean and variance are all-reduced sums, through a differentiable all-reduce
    whose backward all-reduces the gradients, as SyncBatchNorm's backward does. The state (weight,
    bias, running statistics) is BatchNorm's, and evaluation uses the running statistics.
    """

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every batch-norm layer replaced by one of these, with its state."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            layer = cls(module.num_features, module.eps, module.momentum, module.affine,
                        module.track_running_stats)
            layer.load_state_dict(module.state_dict())
            return layer.train(module.training)
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        dims, shape = [0, *range(2, input.dim())], [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])])
        total = _all_reduce(local)
        count = total[-1]
        mean = total[:-1] / count
        centred = x - mean.view(shape)  # two passes: stable, unlike E[x^2] - E[x]^2
        var = _all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * count / (count - 1), momentum)  # unbiased, as BatchNorm
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over every process, differentiable: the backward sums the gradients likewise
    (torch.distributed's functional collectives, which torch.distributed.nn.functional defers to)."""
    return functional_collectives.all_reduce(tensor, "sum", dist.group.WORLD).wait()


def share_buffers(network: nn.Module) -> None:
    """Give every process rank 0's batch-norm statistics, so all hold the same model."""
    if dist.is_initialized():
        for buffer in network.buffers():
            dist.broadcast(buffer, src=0)
