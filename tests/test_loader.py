"""The loader (src/vision_pipelines/loader.py): batches of a subset in memory or streamed from the
cache's shards, normalised, shuffled and augmented for training, sliced per distributed process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vision_pipelines.cache import ShardedImages
from vision_pipelines.config import ComputeConfig
from vision_pipelines.loader import Loader, MemoryImages, has_fast_bf16

N = 50
IMAGES = torch.arange(N, dtype=torch.uint8)[:, None, None, None].expand(N, 1, 4, 4).contiguous()  # image i is all i
LABELS = torch.arange(N) % 5
NCHW = ComputeConfig(device="cpu", channels_last=False, mixed_precision=False)


def sharded(folder: Path, per_shard: int = 12) -> ShardedImages:
    """``IMAGES`` written as shards of ``per_shard`` images, as the cache writes them."""
    paths, counts = [], []
    for start in range(0, N, per_shard):
        paths.append(folder / f"shard-{start}.npy")
        np.save(paths[-1], IMAGES[start:start + per_shard].numpy())
        counts.append(len(IMAGES[start:start + per_shard]))
    return ShardedImages(paths, counts, (1, 4, 4), window=2)


def loader(images, batch_size: int = 8, **training) -> Loader:
    return Loader.create(images, LABELS, [0.0], [1 / 255], batch_size, NCHW, **training)


def image_ids(batch: torch.Tensor) -> list[int]:
    """Which images a normalised batch holds (with mean 0, std 1/255, pixel value = image id)."""
    return batch[:, 0, 0, 0].round().long().tolist()


def test_evaluation_goes_through_the_set_once_in_order() -> None:
    batches = list(loader(MemoryImages(IMAGES)))
    assert len(batches) == len(loader(MemoryImages(IMAGES))) == 7  # 6 batches of 8, then 2
    assert sum((image_ids(x) for x, _ in batches), []) == list(range(N))
    assert torch.equal(torch.cat([y for _, y in batches]), LABELS)
    assert batches[0][0].dtype == torch.float32


@pytest.mark.parametrize("store", ["tensor", "streamed"])
def test_an_unlabelled_loader_goes_through_the_images_once_in_order(store: str, tmp_path: Path) -> None:
    images = IMAGES if store == "tensor" else sharded(tmp_path)
    unlabelled = Loader.unlabelled(images, [0.0], [1 / 255], 8, NCHW)
    batches = list(unlabelled)
    assert len(batches) == len(unlabelled) == 7  # 6 batches of 8, then 2
    assert sum((image_ids(x) for x, _ in batches), []) == list(range(N))
    assert torch.equal(torch.cat([y for _, y in batches]), torch.full((N,), -1))
    assert unlabelled.memory_format == torch.contiguous_format and not unlabelled.amp  # compute's settings


@pytest.mark.parametrize("store", ["memory", "streamed"])
def test_training_sees_every_image_once_per_epoch_with_its_label(store: str, tmp_path: Path) -> None:
    images = MemoryImages(IMAGES) if store == "memory" else sharded(tmp_path)
    train = loader(images, generator=torch.Generator().manual_seed(0))
    epochs = [[(i, y) for x, labels in train for i, y in zip(image_ids(x), labels.tolist())] for _ in range(2)]
    for seen in epochs:
        assert sorted(i for i, _ in seen) == list(range(N))  # 6 batches of 8, and 2 more
        assert all(y == LABELS[i] for i, y in seen)
    assert [i for i, _ in epochs[0]] != [i for i, _ in epochs[1]]  # reshuffled every epoch
    assert [i for i, _ in epochs[0]] != list(range(N))


def test_streaming_holds_only_a_window_of_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = sharded(tmp_path, per_shard=5)  # 10 shards, a window of 2
    loaded, load = [], np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: loaded.append(path) or load(path, *a, **k))
    windows = list(images.chunks(torch.Generator().manual_seed(0)))
    assert len(windows) == 5 and all(len(positions) == 10 for _, positions, _ in windows)
    assert sorted(loaded) == sorted(images.paths)  # every shard read once per epoch
    # a window's images are those of its shards, shuffled together
    for window, positions, order in windows:
        assert image_ids(window.float()) == positions.tolist() and sorted(order.tolist()) == list(range(10))


def test_a_last_training_batch_of_one_image_is_dropped() -> None:
    """Batch norm cannot train on one image; evaluation keeps it."""
    train = loader(MemoryImages(IMAGES[:17]), generator=torch.Generator().manual_seed(0))
    train.labels = LABELS[:17]
    assert len(train) == 2 and [len(y) for _, y in train] == [8, 8]


def test_distributed_processes_split_every_global_batch_between_them() -> None:
    """Two processes together see exactly the images (and augmentations) one process sees."""
    pictures = torch.randint(0, 256, (48, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

    def batches(rank: int, world: int) -> list[torch.Tensor]:
        train = Loader.create(MemoryImages(pictures), LABELS[:48], [0.0], [1 / 255], 8, NCHW, crop_padding=2, flip=True,
                              generator=torch.Generator().manual_seed(3), rank=rank, world_size=world)
        return [x for x, _ in train]

    alone, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    assert len(alone) == len(first) == len(second)
    for whole, a, b in zip(alone, first, second):
        assert torch.equal(torch.cat([a, b]), whole)


def test_augmentation_crops_and_flips_each_image_on_its_own() -> None:
    gradient = torch.arange(8, dtype=torch.uint8).repeat(N, 1, 8, 1) * 30  # columns 0, 30, ..., 210
    train = Loader.create(MemoryImages(gradient), LABELS, [0.0], [1 / 255], 50, NCHW, crop_padding=2, flip=True,
                          generator=torch.Generator().manual_seed(0))
    (batch, _), = list(train)
    rows = batch[:, 0, 0, :]
    flipped = rows[:, 0] > rows[:, -1]
    assert 0 < flipped.sum() < N  # some mirrored, some not
    assert len({tuple(r.tolist()) for r in rows}) > 4  # different crops


def cpu_with_bf16(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True),
                                                        (False, False, False)])
def test_bf16_autocast_on_cpus_with_bf16_instructions_only(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool,
                                                           amx: bool, expected: bool) -> None:
    cpu_with_bf16(monkeypatch, avx512_bf16, amx)
    assert has_fast_bf16(torch.device("cpu")) is expected
    made = Loader.create(MemoryImages(IMAGES), LABELS, [0.5], [0.5], 8, ComputeConfig(device="cpu"))
    assert made.amp is expected and made.precision == ("bf16" if expected else "fp32")
    fp32 = Loader.create(MemoryImages(IMAGES), LABELS, [0.5], [0.5], 8,
                         ComputeConfig(device="cpu", mixed_precision=False))
    assert not fp32.amp


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_consecutive_epochs() -> None:
    """airbench's alternating flip, also after a resume (a new generator in the saved state)."""
    gradient = torch.arange(4, dtype=torch.uint8).repeat(N, 1, 4, 1) * 60  # columns 0, 60, 120, 180

    def flipped(train: Loader, epoch: int) -> torch.Tensor:
        """Whether each image (its label is its number) was mirrored in ``epoch``."""
        train.epoch = epoch
        batches = list(train)
        images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        return (images[:, 0, 0, 0] > images[:, 0, 0, -1])[labels.argsort()]

    train = Loader.create(MemoryImages(gradient), torch.arange(N), [0.0], [1 / 255], 10, NCHW, flip="alternating",
                          generator=torch.Generator().manual_seed(7))
    first = flipped(train, 1)
    resumed = Loader.create(MemoryImages(gradient), torch.arange(N), [0.0], [1 / 255], 10, NCHW, flip="alternating",
                            generator=torch.Generator().manual_seed(7))
    resumed.generator.set_state(train.generator.get_state())
    second, third = flipped(resumed, 2), flipped(resumed, 3)
    assert 0 < first.sum() < N  # a seeded half, not all
    assert torch.equal(first ^ second, torch.ones(N, dtype=torch.bool))  # once each way over epochs 1 and 2
    assert torch.equal(second ^ third, torch.ones(N, dtype=torch.bool)) and torch.equal(first, third)
