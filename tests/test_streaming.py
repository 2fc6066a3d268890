"""Training sets larger than memory (subset_images, cache.ShardedImages, loader.Loader):
with ``images.max_memory_gb`` below the training set's size, training streams it from the
cache's shards, a window of shards at a time, and still sees every image once per epoch."""

from __future__ import annotations

import dataclasses
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import (
    CPU,
    FOLDERS_SOURCE,
    IMAGES,
    MODEL,
    SPLIT,
    fast_params,
    latest,
    make_class_folders,
    make_folders_dataset,
    run_kedro,
    write_cache,
)
from vision_pipelines import engine
from vision_pipelines.cache import ImageCache, ShardedImages
from vision_pipelines.config import TrainConfig
from vision_pipelines.loader import Loader, MemoryImages, memory_limit_bytes, subset_images
from vision_pipelines.pipelines.image_classification import nodes

IMAGE_BYTES = 3 * 16 * 16
FOUR_IMAGES_MB = 4 * IMAGE_BYTES / 2 ** 20  # images.shard_mb for shards of 4 images at 16 px
CAPPED = dataclasses.replace(IMAGES, max_memory_gb=1e-6, shard_mb=FOUR_IMAGES_MB)


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Full batches, and a last smaller one when it holds at least 2 images (batch norm)."""
    return images // batch_size + (images % batch_size >= 2)


def test_a_run_with_a_memory_cap_trains_from_the_streamed_cache(kedro_project: Path, tmp_path: Path,
                                                                project_log: pytest.LogCaptureFixture) -> None:
    images = tmp_path / "images"
    make_class_folders(images / "Training", ["Apple", "Banana", "Kiwi"], 20)
    make_class_folders(images / "Test", ["Apple", "Banana", "Kiwi"], 4, start_seed=500)
    params = fast_params("fruits", **{"source.kind": "local", "source.path": str(images),
                                      "images.max_memory_gb": 1e-6, "images.shard_mb": FOUR_IMAGES_MB})
    run_kedro(kedro_project, "fruits", params)

    cache = ImageCache(kedro_project / "data/05_model_input/fruits/image_cache")
    assert "train images (0.0 GB) exceed the memory limit (0.0 GB): streaming them from" in project_log.text
    assert str(cache.folder) in project_log.text
    stream = cache.stream("train")
    assert len(stream.paths) > 2 * stream.window  # several windows of shards per epoch
    reports = kedro_project / "data/08_reporting/fruits"
    steps = pd.read_csv(latest(reports / "training_steps.csv"))
    assert steps.groupby("epoch").size().tolist() == [steps_per_epoch(cache.count("train"), 16)] * 3
    history = pd.read_csv(latest(reports / "training_history.csv"))
    assert history["epoch"].tolist() == [1, 2, 3]
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    assert history["val_accuracy"].between(0, 1).all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]  # it learns from the streamed images


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    """40 training images at 16 px in shards of 4: 10 shards, more than two windows."""
    raw = make_folders_dataset(tmp_path_factory.mktemp("raw"), classes=("apple", "kiwi"), train=25, test=2)
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    built = write_cache(nodes.build_image_cache(raw, manifest, classes, CAPPED), tmp_path_factory.mktemp("cache"))
    assert built.count("train") == 40 and len(built.stream("train").paths) == 10
    return built


def seen_per_epoch(loader: Loader, epochs: int) -> list[Counter]:
    """Each epoch's (pixels, label) pairs; with mean 0 and std 1/255 a normalised pixel is its value."""
    return [Counter((bytes(x.round().to(torch.uint8).flatten().tolist()), int(y))
                    for images, labels in loader for x, y in zip(images, labels)) for _ in range(epochs)]


def test_a_memory_cap_streams_the_training_set_and_every_epoch_sees_each_image_once(cache: ImageCache) -> None:
    capped = subset_images(cache, "train", memory_limit_bytes(CAPPED))
    whole = subset_images(cache, "train", memory_limit_bytes(IMAGES))
    assert isinstance(capped, ShardedImages) and isinstance(whole, MemoryImages)
    expected = Counter((bytes(x.flatten().tolist()), int(y))
                       for x, y in zip(cache.images("train"), cache.labels("train")))
    assert len(expected) == cache.count("train")  # every image distinct: a repeat would show
    for images in (capped, whole):
        loader = Loader.create(images, cache.labels("train"), [0.0] * 3, [1 / 255] * 3, 8, CPU,
                               generator=torch.Generator().manual_seed(0))
        assert len(loader) == steps_per_epoch(40, 8) == len(list(loader))
        assert seen_per_epoch(loader, 2) == [expected, expected]


def test_capped_training_takes_the_same_steps_as_training_in_memory(cache: ImageCache) -> None:
    train = TrainConfig(epochs=2, batch_size=6, resume=False)  # 40 = 6 x 6 + 4: the last batch spans shards
    steps = {}
    for name, images in (("capped", CAPPED), ("in memory", IMAGES)):
        result = engine.train(engine.TrainingJob(cache, MODEL, images, train, CPU))
        steps[name] = result.steps.groupby("epoch").size().tolist()
    assert steps["capped"] == steps["in memory"] == [steps_per_epoch(40, 6)] * 2


def test_streaming_holds_one_window_of_shards_whatever_their_number(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory while streaming is one window of shards (and the one shard being read into it),
    however many shards the subset has: counted with weak references, not measured as RSS."""
    per_shard, shards, window = 5, 24, 3
    paths = []
    for k in range(shards):
        paths.append(tmp_path / f"{k:02d}.npy")
        np.save(paths[-1], np.full((per_shard, 1, 2, 2), k, dtype=np.uint8))
    stream = ShardedImages(paths, [per_shard] * shards, (1, 2, 2), window=window)
    reads, windows = [], []  # weak references: alive while anything still holds the array or window

    def alive(refs: list) -> int:
        return sum(r() is not None for r in refs)

    load, chunks = np.load, stream.chunks

    def tracked_load(*args, **kwargs):
        assert alive(windows) == 0 and alive(reads) == 0  # the last window went before this one's reads
        array = load(*args, **kwargs)
        reads.append(weakref.ref(array))
        return array

    def tracked_chunks(generator):
        for images, positions, order in chunks(generator):
            windows.append(weakref.ref(images))
            yield images, positions, order
            del images  # this wrapper must not hold a window longer than the loader does

    monkeypatch.setattr(np, "load", tracked_load)
    stream.chunks = tracked_chunks
    loader = Loader.create(stream, torch.zeros(shards * per_shard, dtype=torch.int64), [0.0], [1.0], 4, CPU,
                           generator=torch.Generator().manual_seed(0))
    batches = 0
    for _ in loader:
        batches += 1
        assert alive(windows) == 1 and alive(reads) == 0  # the window in use; no shard read kept
    assert batches == shards * per_shard // 4
    assert len(reads) == shards and len(windows) == shards // window  # every shard read once an epoch
