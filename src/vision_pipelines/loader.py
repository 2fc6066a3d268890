"""The image data path, part 4: a loader carries a set of images and everything needed to batch
them for the network, as airbench's ``CifarLoader`` does: images (in memory or streamed from
the cache's shards), labels, normalisation, batch size, device and precision. So ``evaluate``
and ``predict`` take a model, a loader and a test-time-augmentation flag, nothing else.

Iterating a loader yields ``(images, labels)``: float images normalised on the device in the
network's memory format. A loader with a ``generator`` (training) shuffles every epoch and
augments; without one it goes through the set once, in order.

The memory policy lives here too: a subset is held in memory when it fits under the limit
(``memory_limit_bytes``), else streamed from the cache's shards (``subset_images``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from .augment import alternating_flips, augment, flip_coins, flip_mode, normalize, random_draws
from .cache import ImageCache, ShardedImages
from .config import ComputeConfig, ImageConfig

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``compute.device`` as a device: ``auto`` is CUDA when present (this process's GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("compute.device=cuda but no CUDA device is available; use compute.device=auto")
    return torch.device("cuda", torch.cuda.current_device())


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds ``device`` up: CUDA GPUs with bf16 (Ampere and later), and
    CPUs with bf16 instructions (AVX512-BF16 or AMX), where oneDNN runs ResNet9's train step 1.28x
    faster than in fp32 on a 2-core EPYC (benchmarks/results/train_throughput_cpu*.md). Other CPUs
    would only emulate bf16, slowly."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def uses_bf16(compute: ComputeConfig, device: torch.device) -> bool:
    """Whether ``compute`` runs the network in bf16 autocast on ``device``: asked for
    (``compute.mixed_precision``) and native there."""
    return compute.mixed_precision and has_fast_bf16(device)


@dataclass
class MemoryImages:
    """A subset held whole in memory (on the GPU when it fits there): the fast, default path."""

    images: torch.Tensor  # uint8 [N, C, H, W]

    def __len__(self) -> int:
        return len(self.images)

    def chunks(self, generator: torch.Generator | None):
        order = torch.randperm(len(self.images), generator=generator) if generator is not None else None
        positions = torch.arange(len(self.images))
        yield self.images, positions, positions if order is None else order


def subset_images(cache: ImageCache, subset: str, limit_bytes: float) -> MemoryImages | ShardedImages:
    """A subset in memory when it fits in ``limit_bytes``, else streamed from the cache's shards."""
    if cache.nbytes(subset) <= limit_bytes:
        return MemoryImages(cache.images(subset))
    log.info("%s images (%.1f GB) exceed the memory limit (%.1f GB): streaming them from %s",
             subset, cache.nbytes(subset) / 1e9, limit_bytes / 1e9, cache.folder)
    return cache.stream(subset)


def memory_limit_bytes(images: ImageConfig | None = None) -> float:
    """``images.max_memory_gb``, or half the memory available now."""
    if images is not None and images.max_memory_gb is not None:
        return images.max_memory_gb * 1e9
    return available_memory_bytes() / 2


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass
class Loader:
    images: MemoryImages | ShardedImages
    labels: torch.Tensor  # int64 [N]; -1 for unlabelled images
    mean: list[float]
    std: list[float]
    batch_size: int  # the global batch when distributed: each process takes its slice
    device: torch.device
    amp: bool = False  # bf16 autocast
    channels_last: bool = True
    crop_padding: int = 0  # training augmentation, applied when ``generator`` is set
    flip: bool | str = False  # train.flip: random (true) | alternating | none (false)
    generator: torch.Generator | None = None  # shuffles and augments every epoch
    epoch: int = 1  # the epoch the next pass trains (train.flip=alternating mirrors by its parity)
    rank: int = 0
    world_size: int = 1

    @classmethod
    def create(cls, images: MemoryImages | ShardedImages, labels: torch.Tensor, mean: list[float],
               std: list[float], batch_size: int, compute: ComputeConfig, **training) -> Loader:
        """A loader on ``compute``'s device and precision; ``training`` sets augmentation,
        ``generator`` and the distributed rank."""
        device = resolve_device(compute.device)
        if isinstance(images, MemoryImages):
            images = MemoryImages(_place(images.images, device))
        return cls(images, labels, mean, std, batch_size, device,
                   amp=uses_bf16(compute, device),
                   channels_last=compute.channels_last, **training)

    @classmethod
    def unlabelled(cls, images: torch.Tensor | MemoryImages | ShardedImages, mean: list[float], std: list[float],
                   batch_size: int, compute: ComputeConfig) -> Loader:
        """A loader that goes through ``images`` (uint8 ``[N, C, H, W]``, held in memory, or a
        subset's images) once, in order, for prediction: every label is -1."""
        if isinstance(images, torch.Tensor):
            images = MemoryImages(images)
        return cls.create(images, torch.full((len(images),), -1), mean, std, batch_size, compute)

    @property
    def precision(self) -> str:
        return "bf16" if self.amp else "fp32"

    @property
    def memory_format(self) -> torch.memory_format:
        # NHWC: the layout cuDNN's and oneDNN's (CPU) fastest convolution kernels work in.
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def __len__(self) -> int:
        """Batches per pass; training drops a last batch too small to give each process two
        images (batch norm cannot train on one)."""
        n, smallest = len(self.labels), self._smallest_batch
        return n // self.batch_size + (n % self.batch_size >= smallest)

    @property
    def _smallest_batch(self) -> int:
        return 2 * self.world_size if self.generator is not None else 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mean = torch.tensor(self.mean, device=self.device)
        std = torch.tensor(self.std, device=self.device)
        # A subset too large for the GPU stays in host memory; a batch gathered from it is pinned
        # so that its copy to the GPU is truly asynchronous.
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        alternating = self.generator is not None and flip_mode(self.flip) == "alternating"
        # Coins seeded by the generator's seed (train.seed), which a resumed generator keeps.
        coins = flip_coins(len(self.labels), self.generator.initial_seed()) if alternating else None
        for images, positions in self._global_batches():
            if len(positions) < self._smallest_batch:
                break
            if self.generator is not None:
                draws = random_draws(len(positions), self.generator)
                if coins is not None:  # drawn all the same: the crops are those of flip=random
                    draws[2] = alternating_flips(positions, self.epoch, coins)
                part = slice(self.rank * len(positions) // self.world_size,
                             (self.rank + 1) * len(positions) // self.world_size)
                images, positions, draws = images[part], positions[part], draws[:, part]
            if images.device.type == "cpu" and pin:
                images = images.pin_memory()
            images = images.to(self.device, non_blocking=True)
            if self.generator is not None:
                images = augment(images, self.crop_padding, self.flip, draws)
            labels = self.labels[positions].to(self.device, non_blocking=True)
            yield normalize(images, mean, std).contiguous(memory_format=self.memory_format), labels

    def _global_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 batches of ``batch_size`` images (the last one smaller) and their positions, in
        the order the images' chunks give, a batch spanning two chunks where one ends."""
        pending: tuple[torch.Tensor, torch.Tensor] | None = None
        for images, positions, order in self.images.chunks(self.generator):
            start = 0
            if pending is not None:
                start = self.batch_size - len(pending[1])
                take = order[:start].to(images.device)
                pending = (torch.cat([pending[0], images[take].to(pending[0].device)]),
                           torch.cat([pending[1], positions[take.cpu()]]))
                if len(pending[1]) < self.batch_size:
                    continue
                yield pending
                pending = None
            for first in range(start, len(order), self.batch_size):
                take = order[first:first + self.batch_size]
                batch = (images[take.to(images.device)], positions[take])
                if len(take) < self.batch_size:
                    pending = batch
                else:
                    yield batch
            del images  # batches are copies: a streamed window goes before the next one is read
        if pending is not None:
            yield pending


def _place(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep uint8 images on the GPU when they fit in half its free memory; else in host memory."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() < free // 2:
        return images.to(device)
    log.info("images (%.1f GB) do not fit on %s: batches are copied from pinned host memory",
             images.numel() / 1e9, device)
    return images.pin_memory()
