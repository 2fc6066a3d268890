"""The image cache (src/vision_pipelines/cache.py): written shard by shard, committed by its index,
so a build killed at any moment leaves the previous cache whole; read whole or streamed."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FOLDERS_SOURCE, IMAGES, SPLIT, make_class_folders, make_folders_dataset, write_cache
from vision_pipelines.cache import CacheError, ImageCache, ShardedImages
from vision_pipelines.cache import write_cache as write_shards
from vision_pipelines.config import ImageConfig
from vision_pipelines.pipelines.image_classification import nodes


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folders_dataset(tmp_path_factory.mktemp("raw"), train=20, test=4)


def build(raw: Path, images: ImageConfig = IMAGES):
    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, SPLIT)
    return nodes.build_image_cache(raw, manifest, classes, images)


def test_shards_hold_the_subset_in_order_and_stream_as_they_read_whole(raw: Path, tmp_path: Path) -> None:
    small = write_cache(build(raw, dataclasses.replace(IMAGES, shard_mb=1)), tmp_path / "one")
    assert len(small.stream("train").paths) == 1
    ten_images = 16 * 16 * 3 * 10 / 2 ** 20  # MB
    cache = write_cache(build(raw, dataclasses.replace(IMAGES, shard_mb=ten_images)), tmp_path / "many")
    stream = cache.stream("train")
    assert stream.counts == [10, 10, 10, 10, 8]
    whole = cache.images("train")
    assert torch.equal(torch.cat([torch.from_numpy(np.load(p)) for p in stream.paths]), whole)
    assert torch.equal(stream.head(3), whole[:3])
    assert torch.equal(small.images("train"), whole)  # same images whatever the sharding
    assert small.fingerprint == cache.fingerprint


def test_fingerprint_follows_the_pixels_not_only_the_file_names(raw: Path, tmp_path: Path) -> None:
    first = write_cache(build(raw), tmp_path / "first")
    edited = shutil.copytree(raw, tmp_path / "edited")
    make_class_folders(edited / "Training", ["apple"], 1, start_seed=777)  # apple/0.jpg, other pixels
    second = write_cache(build(edited), tmp_path / "second")
    assert first.manifest_fingerprint == second.manifest_fingerprint
    assert first.fingerprint != second.fingerprint
    assert write_cache(build(raw), tmp_path / "again").fingerprint == first.fingerprint


def test_a_cache_pickles_as_its_folder(raw: Path, tmp_path: Path) -> None:
    """What distributed training processes receive: a few hundred bytes, not the images."""
    cache = write_cache(build(raw), tmp_path / "cache")
    payload = pickle.dumps(cache)
    assert len(payload) < 5000
    assert torch.equal(pickle.loads(payload).images("test"), cache.images("test"))


def test_a_missing_or_foreign_cache_says_which_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="no image cache at .*run the cache stage"):
        ImageCache(tmp_path / "nothing")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "index.json").write_text('{"format_version": 0}')
    with pytest.raises(CacheError, match="has another format .*re-run the cache stage"):
        ImageCache(tmp_path / "old")


def test_a_cache_that_cannot_fit_on_disk_stops_before_decoding(raw: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(CacheError, match=r"needs 0.0 GB but .* has only 0.0 GB free: use a smaller images.size"):
        write_shards(tmp_path / "cache", build(raw))
    assert not list((tmp_path / "cache").iterdir())


KILLED_BUILD = """
import sys, time
from pathlib import Path
import numpy as np
from vision_pipelines import cache
from vision_pipelines.datasets import ImageCacheDataset
from vision_pipelines.pipelines.image_classification import nodes
from vision_pipelines.config import SourceConfig, SplitConfig, ImageConfig

save = cache._save_array
def slow_save(path, array):  # as on a slow disk: time to be killed half-way
    save(path, array)
    print("wrote", path.name, flush=True)
    time.sleep(0.5)
cache._save_array = slow_save
if __name__ == "__main__":  # the decode workers are spawned: they import this file
    raw = Path(sys.argv[1])
    source = SourceConfig(path="x", train_dir="Training", test_dir="Test")
    manifest, classes = nodes.build_manifest(raw, source, SplitConfig())
    build = nodes.build_image_cache(raw, manifest, classes, ImageConfig(size=24, shard_mb=1))
    ImageCacheDataset(path=sys.argv[2]).save(build)
"""


def test_a_build_killed_half_way_leaves_the_previous_cache_whole(raw: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    before = write_cache(build(raw), folder)
    previous = {p.name: p.read_bytes() for p in folder.iterdir()}
    script = tmp_path / "build.py"
    script.write_text(KILLED_BUILD)
    process = subprocess.Popen([sys.executable, str(script), str(raw), str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("wrote")  # a new shard is on disk
    process.send_signal(signal.SIGKILL)
    process.wait()
    after = ImageCache(folder)  # still the previous cache, whole
    assert after.fingerprint == before.fingerprint
    assert torch.equal(after.images("train"), before.images("train"))
    assert len(list(folder.iterdir())) > len(previous)  # the unfinished build's files...
    write_cache(build(raw, ImageConfig(size=12)), folder)  # ...go with the next build,
    assert not set(previous) & {p.name for p in folder.iterdir()} - {"index.json"}  # and so do the old shards
    assert ImageCache(folder).size == 12


def test_streamed_subset_reads_one_window_of_shards_at_a_time(tmp_path: Path) -> None:
    paths = []
    for k in range(6):
        paths.append(tmp_path / f"{k}.npy")
        np.save(paths[-1], np.full((4, 1, 2, 2), k, dtype="uint8"))
    stream = ShardedImages(paths, [4] * 6, (1, 2, 2), window=3)
    windows = list(stream.chunks(torch.Generator().manual_seed(0)))
    assert [len(images) for images, _, _ in windows] == [12, 12]
    shards_per_window = [sorted(set(images[:, 0, 0, 0].tolist())) for images, _, _ in windows]
    assert sorted(sum(shards_per_window, [])) == list(range(6))  # every shard once, three at a time
    in_order = list(stream.chunks(None))
    assert [images[0, 0, 0, 0].item() for images, _, _ in in_order] == list(range(6))
    assert os.path.getsize(paths[0]) < 1000
