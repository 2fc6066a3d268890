"""The image data path, part 2: the image cache, every image decoded once into uint8 shards.

No epoch decodes a JPEG again. The cache is a folder (``data/05_model_input/<dataset>/image_cache``)::

    index.json                    what the cache holds; written last: the commit point
    <build>-<subset>-<k>.npy      uint8 [n, C, H, W] shards of about ``images.shard_mb``
    <build>-<subset>-labels.npy   int64 class index per image (-1: unlabelled)
    <build>-<subset>-rows.npy     int64 manifest row per image
    <build>-decoded.parquet       one row per file: original width, height, mode, or why it was skipped

It is written shard by shard as images are decoded, so building it never holds the decoded set
in memory, and it replaces the previous cache only when ``index.json`` is renamed into place:
killed at any moment, the folder holds the previous cache, whole (leftover shards of the
unfinished build are removed by the next one). Training reads a subset whole when it fits in
memory, or streams it shard by shard (``ShardedImages``) when it does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import write_atomically
from .config import ImageConfig
from .console import Progress
from .images import decode_all

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX = "index.json"
DECODED_COLUMNS = ["file", "width", "height", "mode", "reason"]


class CacheError(RuntimeError):
    """The cache is missing, unfinished or cannot be written; the message says what to do."""


@dataclass
class CacheBuild:
    """What the cache node returns: the images still to decode, in the order they are written.

    Decoding happens while the catalog saves it (``write_cache``), so the decoded images go
    straight to disk, as PartitionedDataset's lazy saving does.
    """

    root: Path
    files: pd.DataFrame  # file, label (class index, -1 unlabelled), subset, row (manifest index)
    class_names: list[str]
    images: ImageConfig
    manifest_fingerprint: str

    @property
    def image_bytes(self) -> int:
        return self.images.channels * self.images.size ** 2

    @property
    def nbytes(self) -> int:
        return len(self.files) * self.image_bytes


def write_cache(folder: Path, build: CacheBuild) -> None:
    """Decode ``build``'s images into shards under ``folder``, then commit a new index."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    free = shutil.disk_usage(folder).free
    if build.nbytes > free * 0.95:
        raise CacheError(f"the image cache needs {build.nbytes / 1e9:.1f} GB but {folder} has only "
                         f"{free / 1e9:.1f} GB free: use a smaller images.size, or free disk space")
    log.info("decoding %d images to %d px into the image cache (%.2f GB)", len(build.files),
             build.images.size, build.nbytes / 1e9)
    build_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    shard_images = max(1, int(build.images.shard_mb * 2 ** 20 // build.image_bytes))
    # The fingerprint covers the pixels themselves: images edited in place make another cache.
    content = hashlib.sha256(repr((FORMAT_VERSION, build.manifest_fingerprint, build.images.size,
                                   build.images.channels)).encode())
    index = {"format_version": FORMAT_VERSION, "manifest_fingerprint": build.manifest_fingerprint,
             "size": build.images.size, "channels": build.images.channels, "class_names": build.class_names,
             "subsets": {}}
    decoded, started = [], time.time()
    bar = Progress(len(build.files), "decoding images", unit="img")
    for subset, files in build.files.groupby("subset", sort=False):
        content.update(subset.encode())
        outcome = _write_subset(folder, f"{build_id}-{subset}", files, build, shard_images, bar, content)
        decoded += outcome.decoded
        if outcome.count:
            index["subsets"][subset] = outcome.entry()
    bar.close()
    index["fingerprint"] = content.hexdigest()[:16]
    _save_frame(folder / f"{build_id}-decoded.parquet", pd.DataFrame(decoded, columns=DECODED_COLUMNS))
    index["decoded"] = f"{build_id}-decoded.parquet"
    skipped = sum(d["reason"] is not None for d in decoded)
    if skipped:
        log.warning("skipped %d of %d images that could not be decoded (listed in the data report)",
                    skipped, len(decoded))
    log.info("image cache written: %d images in %.0f s (%.0f images/s)", len(decoded) - skipped,
             time.time() - started, len(decoded) / max(time.time() - started, 1e-9))
    write_atomically(folder / INDEX, json.dumps(index, indent=1).encode())  # the commit point
    remove_leftovers(folder)  # the previous build's shards


@dataclass
class _SubsetWriter:
    count: int = 0
    shards: list[dict] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    decoded: list[dict] = field(default_factory=list)
    prefix: str = ""

    def entry(self) -> dict:
        return {"count": self.count, "shards": self.shards, "labels": f"{self.prefix}-labels.npy",
                "rows": f"{self.prefix}-rows.npy"}


def _write_subset(folder: Path, prefix: str, files: pd.DataFrame, build: CacheBuild,
                  shard_images: int, bar: Progress, content) -> _SubsetWriter:
    shape = (build.images.channels, build.images.size, build.images.size)
    writer = _SubsetWriter(prefix=prefix)
    buffer = np.empty((min(shard_images, len(files)), *shape), dtype=np.uint8)
    filled = 0

    def flush() -> None:
        nonlocal filled
        if filled:
            name = f"{prefix}-{len(writer.shards):05d}.npy"
            _save_array(folder / name, buffer[:filled])
            content.update(buffer[:filled].tobytes())
            writer.shards.append({"file": name, "count": filled})
            filled = 0

    paths = (build.root / f for f in files["file"])
    results = decode_all(paths, build.images.size, build.images.channels, build.images.decode_workers)
    for row, (array, original_size, detail) in zip(files.itertuples(index=False), results):
        bar.update()
        if array is None:
            log.warning("skipping %s: %s", row.file, detail)
            writer.decoded.append({"file": row.file, "width": None, "height": None, "mode": None, "reason": detail})
            continue
        writer.decoded.append({"file": row.file, "width": original_size[0], "height": original_size[1],
                               "mode": detail, "reason": None})
        buffer[filled] = array
        filled += 1
        writer.count += 1
        writer.labels.append(row.label)
        writer.rows.append(row.row)
        if filled == len(buffer):
            flush()
    flush()
    if writer.count:
        for kind in ("labels", "rows"):
            array = np.asarray(getattr(writer, kind), dtype=np.int64)
            _save_array(folder / f"{prefix}-{kind}.npy", array)
            content.update(array.tobytes())
    return writer


def remove_leftovers(folder: Path) -> None:
    """Delete files the committed index does not name: an unfinished or superseded build's."""
    keep = {INDEX}
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
        keep.add(index["decoded"])
        for entry in index["subsets"].values():
            keep.update([entry["labels"], entry["rows"], *(s["file"] for s in entry["shards"])])
    for path in folder.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink()


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, array)


def _save_frame(path: Path, frame: pd.DataFrame) -> None:
    frame.astype({"file": object, "mode": object, "reason": object}).to_parquet(path)


class ImageCache:
    """A committed image cache: its fingerprints, and each subset's labels, rows and images."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise CacheError(f"no image cache at {self.folder}: run the cache stage (--tags=cache)")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"the image cache at {self.folder} has another format "
                             f"({self.index.get('format_version')}): re-run the cache stage (--tags=cache)")

    fingerprint = property(lambda self: self.index["fingerprint"])
    manifest_fingerprint = property(lambda self: self.index["manifest_fingerprint"])
    class_names = property(lambda self: list(self.index["class_names"]))
    size = property(lambda self: self.index["size"])
    channels = property(lambda self: self.index["channels"])

    def count(self, subset: str) -> int:
        return self.index["subsets"].get(subset, {}).get("count", 0)

    def nbytes(self, subset: str) -> int:
        return self.count(subset) * self.channels * self.size ** 2

    def labels(self, subset: str) -> torch.Tensor:
        """int64 class index of each image (-1 when unlabelled)."""
        return self._small_array(subset, "labels")

    def rows(self, subset: str) -> torch.Tensor:
        """int64 manifest row of each image."""
        return self._small_array(subset, "rows")

    def images(self, subset: str) -> torch.Tensor:
        """The subset's uint8 ``[N, C, H, W]`` images, read whole into memory."""
        return self.stream(subset).read_all()

    def stream(self, subset: str) -> ShardedImages:
        """The subset's images as shards read one at a time."""
        shards = self.index["subsets"].get(subset, {}).get("shards", [])
        return ShardedImages([self.folder / s["file"] for s in shards], [s["count"] for s in shards],
                             (self.channels, self.size, self.size))

    @property
    def decoded(self) -> pd.DataFrame:
        """One row per file the cache tried to decode: width, height, mode, or a reason."""
        return pd.read_parquet(self.folder / self.index["decoded"])

    def _small_array(self, subset: str, kind: str) -> torch.Tensor:
        entry = self.index["subsets"].get(subset)
        if entry is None:
            return torch.empty(0, dtype=torch.int64)
        return torch.from_numpy(np.load(self.folder / entry[kind]))

    def __getstate__(self) -> dict:  # pickled (to distributed workers) as its folder and index
        return {"folder": self.folder, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class ShardedImages:
    """A subset kept on disk and read a window of shards at a time: memory stays at about
    ``window`` shards whatever the subset's size.

    Shuffling is two-level, as WebDataset and tf.data shuffle streams: each epoch draws the
    shards' order, then shuffles the images of each window of ``window`` shards together. The
    training subset is written to the cache in a seeded random order, so every shard is already
    a random sample of it and a batch drawn from a window is as mixed as one drawn from the whole
    set; what streaming changes is only which images can meet in one epoch's batches.
    """

    paths: list[Path]
    counts: list[int]
    shape: tuple[int, int, int]
    window: int = 4

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.shape))

    def read_all(self) -> torch.Tensor:
        return self._read(range(len(self.paths)))

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images (a random sample for the training subset, stored shuffled)."""
        return torch.from_numpy(np.array(np.load(self.paths[0], mmap_mode="r")[:n])) if self.paths else \
            torch.empty((0, *self.shape), dtype=torch.uint8)

    def chunks(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(images, their positions in the subset, the order to take them in)``, a window of
        shards at a time: shuffled with ``generator``, shard by shard in order without one."""
        starts = np.concatenate([[0], np.cumsum(self.counts)]).tolist()
        shuffle = generator is not None
        shards = len(self.paths)
        order = torch.randperm(shards, generator=generator).tolist() if shuffle else list(range(shards))
        size = self.window if shuffle else 1
        for first in range(0, len(order), size):
            shards = order[first:first + size]
            images = self._read(shards)
            positions = torch.cat([torch.arange(starts[s], starts[s + 1]) for s in shards])
            take = torch.randperm(len(positions), generator=generator) if shuffle else torch.arange(len(positions))
            yield images, positions, take
            del images  # the loader is done with this window: let it go before the next one is read

    def _read(self, shards: list[int] | range) -> torch.Tensor:
        """The images of ``shards``, in that order, copied from each mapped file straight into one
        tensor: a window costs its own size in memory (and one shard's pages while it is copied),
        not twice it."""
        images = torch.empty((sum(self.counts[s] for s in shards), *self.shape), dtype=torch.uint8)
        start = 0
        for s in shards:
            images[start:start + self.counts[s]].numpy()[:] = np.load(self.paths[s], mmap_mode="r")
            start += self.counts[s]
        return images
