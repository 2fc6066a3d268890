"""The image cache (src/vision_pipelines/cache.py): written shard by shard, committed by its index,
so a build killed at any moment leaves the previous cache whole; reused while what it was built
from is unchanged; checked against its checksums when read; read whole or streamed."""

from __future__ import annotations

import dataclasses
import json
import logging
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

from conftest import IMAGES, SPLIT, build_cache, make_class_folders, make_folders_dataset, write_cache
from vision_pipelines import cache as cache_module
from vision_pipelines.cache import CacheError, ImageCache, ShardedImages
from vision_pipelines.cache import write_cache as write_shards
from vision_pipelines.config import ImageConfig


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folders_dataset(tmp_path_factory.mktemp("raw"), train=20, test=4)


ONE_WORKER = dataclasses.replace(IMAGES, decode_workers=1)  # no process pool to start: quicker on 72 images


def files_of(folder: Path) -> dict[str, int]:
    """The cache's files and their modification times: what a rebuild would change."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_shards_hold_the_subset_in_order_and_stream_as_they_read_whole(raw: Path, tmp_path: Path) -> None:
    small = write_cache(build_cache(raw, dataclasses.replace(IMAGES, shard_mb=1)), tmp_path / "one")
    assert len(small.stream("train").paths) == 1
    ten_images = 16 * 16 * 3 * 10 / 2 ** 20  # MB
    cache = write_cache(build_cache(raw, dataclasses.replace(IMAGES, shard_mb=ten_images)), tmp_path / "many")
    stream = cache.stream("train")
    assert stream.counts == [10, 10, 10, 10, 8]
    whole = cache.images("train")
    assert torch.equal(torch.cat([torch.from_numpy(np.load(p)) for p in stream.paths]), whole)
    assert torch.equal(stream.head(3), whole[:3])
    assert torch.equal(small.images("train"), whole)  # same images whatever the sharding
    assert small.fingerprint == cache.fingerprint


def test_fingerprint_follows_the_pixels_not_only_the_file_names(raw: Path, tmp_path: Path) -> None:
    first = write_cache(build_cache(raw), tmp_path / "first")
    edited = shutil.copytree(raw, tmp_path / "edited")
    make_class_folders(edited / "Training", ["apple"], 1, start_seed=777)  # apple/0.jpg, other pixels
    second = write_cache(build_cache(edited), tmp_path / "second")
    assert first.manifest_fingerprint == second.manifest_fingerprint
    assert first.fingerprint != second.fingerprint
    assert write_cache(build_cache(raw), tmp_path / "again").fingerprint == first.fingerprint


def test_a_cache_pickles_as_its_folder(raw: Path, tmp_path: Path) -> None:
    """What distributed training processes receive: a few hundred bytes, not the images."""
    cache = write_cache(build_cache(raw), tmp_path / "cache")
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
        write_shards(tmp_path / "cache", build_cache(raw))
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
    checksum = save(path, array)
    print("wrote", path.name, flush=True)
    time.sleep(0.5)
    return checksum
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
    before = write_cache(build_cache(raw), folder)
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
    write_cache(build_cache(raw, ImageConfig(size=12)), folder)  # ...go with the next build,
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


# --- reused while what it was built from is unchanged --------------------------------------------


def test_a_cache_built_from_the_same_files_and_settings_is_reused_without_decoding(
        raw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache"
    first = write_cache(build_cache(raw, ONE_WORKER), folder)
    before = files_of(folder)
    monkeypatch.setattr(cache_module, "decode_all", lambda *args, **kwargs: pytest.fail("decoded again"))
    caplog.set_level(logging.INFO, logger="vision_pipelines.cache")
    again = write_cache(build_cache(raw, ONE_WORKER), folder)
    assert "image cache up to date (72 images)" in caplog.text
    assert files_of(folder) == before  # same files, untouched
    assert again.fingerprint == first.fingerprint


def edit_an_image_in_place(raw: Path) -> None:
    make_class_folders(raw / "Training", ["apple"], 1, start_seed=777)  # apple/0.jpg, other pixels


@pytest.mark.parametrize("change", ["an image edited in place", "images.size", "images.shard_mb", "split.seed"])
def test_a_changed_image_or_image_setting_or_split_rebuilds_the_cache(change: str, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    raw = make_folders_dataset(tmp_path / "raw", train=20, test=4)
    folder = tmp_path / "cache"
    first = write_cache(build_cache(raw, ONE_WORKER), folder)
    before = files_of(folder)
    images, split = ONE_WORKER, SPLIT
    if change == "an image edited in place":
        edit_an_image_in_place(raw)
    elif change == "split.seed":
        split = dataclasses.replace(SPLIT, seed=SPLIT.seed + 1)
    else:
        images = dataclasses.replace(ONE_WORKER, **{change.split(".")[1]: {"images.size": 12,
                                                                            "images.shard_mb": 0.01}[change]})
    caplog.set_level(logging.INFO, logger="vision_pipelines.cache")
    second = write_cache(build_cache(raw, images, split), folder)
    assert "decoding 72 images" in caplog.text and "up to date" not in caplog.text
    assert not set(before) & set(files_of(folder)) - {"index.json"}  # every file written anew
    assert (second.fingerprint != first.fingerprint) == (change in ("an image edited in place", "images.size",
                                                                     "split.seed"))


# --- a damaged cache: an error naming the file and the way out; the next build rebuilds it ------


def read_everything(folder: Path) -> None:
    """What training, evaluation and the data report read of a cache."""
    cache = ImageCache(folder)
    assert len(cache.decoded) == 72
    for subset in ("train", "val", "test"):
        assert len(cache.labels(subset)) == len(cache.rows(subset)) == len(cache.images(subset))


def _shard(index: dict, subset: str = "test") -> str:
    return index["subsets"][subset]["shards"][0]["file"]


def _edit_index(folder: Path, edit) -> None:
    index = json.loads((folder / "index.json").read_text())
    edit(index)
    (folder / "index.json").write_text(json.dumps(index))


def _rot(path: Path) -> None:
    """Bit rot: the shard's pixels permuted, its size and modification time as they were."""
    stat = path.stat()
    array = np.load(path)
    np.save(path, np.ascontiguousarray(array.reshape(-1)[::-1].reshape(array.shape)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _link_out(folder: Path, name: str, outside: Path) -> None:
    shutil.copy(folder / name, outside / name)
    (folder / name).unlink()
    (folder / name).symlink_to(outside / name)


DAMAGE = {  # what is done to a committed cache -> what the error says (after the file's name)
    "pixels rotted": (lambda folder, index, outside: _rot(folder / _shard(index)), "is damaged: its content does "
                      "not match the checksum"),
    "shard truncated": (lambda folder, index, outside: os.truncate(folder / _shard(index), 100), "is damaged"),
    "shard missing": (lambda folder, index, outside: (folder / _shard(index)).unlink(), "is missing"),
    "shard count wrong": (lambda folder, index, outside: _edit_index(
        folder, lambda i: i["subsets"]["test"]["shards"][0].update(count=11)), r"holds uint8 \(12, 3, 16, 16\) "
        r"where the image cache's index.json says uint8 \(11, 3, 16, 16\)"),
    "labels rewritten": (lambda folder, index, outside: np.save(folder / index["subsets"]["test"]["labels"],
                                                                np.full(12, 7)), "is damaged"),
    "a class dropped from the index": (lambda folder, index, outside: _edit_index(
        folder, lambda i: i.update(class_names=i["class_names"][:2])), "holds class 2, but the cache's index.json "
        "lists 2 classes"),
    "index not JSON": (lambda folder, index, outside: (folder / "index.json").write_text('{"subsets": {'),
                       "is unreadable"),
    "index without its subsets": (lambda folder, index, outside: _edit_index(folder, lambda i: i.pop("subsets")),
                                  "is incomplete \\(no 'subsets'\\)"),
    "absolute path in the index": (lambda folder, index, outside: _edit_index(folder, lambda i: (
        i["subsets"]["test"].update(rows=str(outside / "rows.npy")),
        i["checksums"].update({str(outside / "rows.npy"): "0"}))), "which is not a file of the cache's folder"),
    "path with .. in the index": (lambda folder, index, outside: _edit_index(folder, lambda i: (
        i["subsets"]["test"].update(rows="../outside/rows.npy"),
        i["checksums"].update({"../outside/rows.npy": "0"}))), "which is not a file of the cache's folder"),
    "link out of the cache": (lambda folder, index, outside: _link_out(folder, _shard(index), outside),
                              "which is not a file of the cache's folder"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_is_refused_naming_the_file_and_rebuilt_by_the_next_build(damage: str, raw: Path,
                                                                                  tmp_path: Path) -> None:
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "rows.npy", np.arange(12))  # a file outside the cache, which must never be read
    first = write_cache(build_cache(raw, ONE_WORKER), folder)
    test_images = first.images("test")
    do, message = DAMAGE[damage]
    do(folder, first.index, outside)
    with pytest.raises(CacheError, match=rf"(index.json|{_shard(first.index)}|-labels.npy)\W.*{message}.*"
                                         r"--tags=cache.*a rerun rebuilds a damaged cache") as error:
        read_everything(folder)
    assert str(folder) in str(error.value)
    again = write_cache(build_cache(raw, ONE_WORKER), folder)
    again.verify()
    assert again.fingerprint == first.fingerprint
    assert torch.equal(again.images("test"), test_images)
    left_outside = ["rows.npy", *([_shard(first.index)] if "link" in damage else [])]
    assert sorted(p.name for p in outside.iterdir()) == sorted(left_outside)  # never deleted either


def test_a_damaged_shard_is_refused_when_training_reads_it(raw: Path, tmp_path: Path) -> None:
    """Streamed shards are checked as they are first read, once per process."""
    cache = write_cache(build_cache(raw, dataclasses.replace(ONE_WORKER, shard_mb=16 * 16 * 3 * 10 / 2 ** 20)),
                        tmp_path / "cache")
    stream = cache.stream("train")
    assert len(list(stream.chunks(None))) == 5  # read, and checked, once
    _rot(stream.paths[3])
    with pytest.raises(CacheError, match=f"{stream.paths[3].name} is damaged"):
        list(stream.chunks(None))
