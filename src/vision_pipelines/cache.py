"""The image data path, part 2: the image cache, every image decoded once into uint8 shards.

No epoch decodes a JPEG again. The cache is a folder (``data/05_model_input/<dataset>/image_cache``)::

    index.json                    what the cache holds; written last: the commit point
    <build>-<subset>-<k>.npy      uint8 [n, C, H, W] shards of about ``images.shard_mb``
    <build>-<subset>-labels.npy   int64 class index per image (-1: unlabelled)
    <build>-<subset>-rows.npy     int64 manifest row per image
    <build>-decoded.parquet       one row per file: original width, height, mode, or why it was skipped

A rerun decodes nothing when the committed cache was built from the same files (names, sizes and
modification times: an image edited in place keeps its name) with the same image settings, and
is whole. Whole means every file matches the SHA-256 the index records for it and every array
the shape the index gives it; a file is hashed when first read in a process, and again only
once it changes. A damaged cache is an error that names the file, and the next run of the cache
stage rebuilds it. The index never names a file outside the cache's folder.

It is written shard by shard as images are decoded, so building it never holds the decoded set
in memory, and it replaces the previous cache only when ``index.json`` is renamed into place:
killed at any moment, the folder holds the previous cache, whole (leftover shards of the
unfinished build are removed by the next one). Training reads a subset whole when it fits in
memory, or streams it shard by shard (``ShardedImages``) when it does not.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import write_atomically
from .config import ImageConfig
from .console import Progress
from .images import decode_all

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: each file's checksum, and what the cache was built from
# Salts the content fingerprint. Kept at 1 when the format went to 2: a cache rebuilt in the new
# format has the fingerprint it had, so the models trained on it still match it.
FINGERPRINT_VERSION = 1
INDEX = "index.json"
INDEX_KEYS = ("fingerprint", "manifest_fingerprint", "size", "channels", "class_names", "subsets", "decoded",
              "checksums")
DECODED_COLUMNS = ["file", "width", "height", "mode", "reason"]
REBUILD = ("re-run the cache stage (kedro run --pipelines=<dataset> --tags=cache), or just rerun: "
           "a rerun rebuilds a damaged cache")


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

    @cached_property
    def built_from(self) -> str:
        """A hash of what the cache is made from: the image folder, each file in cache order with
        its label, subset, manifest row, size and modification time (an image edited in place
        keeps its name), the classes and the image settings. A stat per file: cheap."""
        digest = hashlib.sha256(repr((FORMAT_VERSION, str(self.root), self.manifest_fingerprint, self.class_names,
                                      self.images.size, self.images.channels, self.images.shard_mb)).encode())
        for file, label, subset, row in zip(self.files["file"], self.files["label"], self.files["subset"],
                                            self.files["row"]):
            try:
                stat = (self.root / file).stat()
                size, modified = stat.st_size, stat.st_mtime_ns
            except OSError:  # gone since the split: decoding skips it
                size = modified = -1
            digest.update(f"{file}\0{label}\0{subset}\0{row}\0{size}\0{modified}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]


def write_cache(folder: Path, build: CacheBuild) -> None:
    """Decode ``build``'s images into shards under ``folder``, then commit a new index; decode
    nothing when the committed cache was built from the same files and settings and is whole."""
    folder.mkdir(parents=True, exist_ok=True)
    current = _reusable(folder, build)
    remove_leftovers(folder)
    if current is not None:
        log.info("image cache up to date (%d images)", current.total)
        return
    free = shutil.disk_usage(folder).free
    if build.nbytes > free * 0.95:
        raise CacheError(f"the image cache needs {build.nbytes / 1e9:.1f} GB but {folder} has only "
                         f"{free / 1e9:.1f} GB free: use a smaller images.size, or free disk space")
    log.info("decoding %d images to %d px into the image cache (%.2f GB)", len(build.files),
             build.images.size, build.nbytes / 1e9)
    build_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    shard_images = max(1, int(build.images.shard_mb * 2 ** 20 // build.image_bytes))
    # The fingerprint covers the pixels themselves: images edited in place make another cache.
    content = hashlib.sha256(repr((FINGERPRINT_VERSION, build.manifest_fingerprint, build.images.size,
                                   build.images.channels)).encode())
    index = {"format_version": FORMAT_VERSION, "built_from": build.built_from,
             "manifest_fingerprint": build.manifest_fingerprint, "size": build.images.size,
             "channels": build.images.channels, "class_names": build.class_names, "subsets": {}, "checksums": {}}
    decoded, started = [], time.time()
    bar = Progress(len(build.files), "decoding images", unit="img")
    for subset, files in build.files.groupby("subset", sort=False):
        content.update(subset.encode())
        outcome = _write_subset(folder, f"{build_id}-{subset}", files, build, shard_images, bar, content)
        decoded += outcome.decoded
        index["checksums"].update(outcome.checksums)
        if outcome.count:
            index["subsets"][subset] = outcome.entry()
    bar.close()
    index["fingerprint"] = content.hexdigest()[:16]
    index["decoded"] = f"{build_id}-decoded.parquet"
    index["checksums"][index["decoded"]] = _save_frame(folder / index["decoded"],
                                                       pd.DataFrame(decoded, columns=DECODED_COLUMNS))
    skipped = sum(d["reason"] is not None for d in decoded)
    if skipped:
        log.warning("skipped %d of %d images that could not be decoded (listed in the data report)",
                    skipped, len(decoded))
    log.info("image cache written: %d images in %.0f s (%.0f images/s)", len(decoded) - skipped,
             time.time() - started, len(decoded) / max(time.time() - started, 1e-9))
    write_atomically(folder / INDEX, json.dumps(index, indent=1).encode())  # the commit point
    remove_leftovers(folder)  # the previous build's shards


def _reusable(folder: Path, build: CacheBuild) -> ImageCache | None:
    """The committed cache when it was built from ``build``'s files and settings and is whole."""
    if not (folder / INDEX).exists():
        return None
    try:
        cache = ImageCache(folder)
        if cache.index.get("built_from") != build.built_from:
            log.info("the images, the split or the image settings changed since the image cache was built: "
                     "decoding them again")
            return None
        cache.verify()
        return cache
    except CacheError as error:
        log.warning("rebuilding the image cache: %s", error)
        return None


@dataclass
class _SubsetWriter:
    count: int = 0
    shards: list[dict] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    decoded: list[dict] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256
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
            writer.checksums[name] = _save_array(folder / name, buffer[:filled])
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
            writer.checksums[f"{prefix}-{kind}.npy"] = _save_array(folder / f"{prefix}-{kind}.npy", array)
            content.update(array.tobytes())
    return writer


def remove_leftovers(folder: Path) -> None:
    """Delete files the committed index does not name: an unfinished or superseded build's, or
    all of them when there is no readable index."""
    try:
        keep = {INDEX, *ImageCache(folder).index["checksums"]}
    except CacheError:
        keep = {INDEX}
    for path in folder.iterdir():
        if path.name not in keep and (path.is_file() or path.is_symlink()):
            path.unlink()


class _Hashing:
    """A file that hashes what is written to it, as it is written."""

    def __init__(self, file, digest) -> None:
        self.file, self.digest = file, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)


def _save_array(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as a ``.npy`` file; returns the file's SHA-256 (hashed while written, not read back)."""
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        np.lib.format.write_array(_Hashing(file, digest), np.ascontiguousarray(array), allow_pickle=False)
    return _written(path, digest.hexdigest())


def _save_frame(path: Path, frame: pd.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.astype({"file": object, "mode": object, "reason": object}).to_parquet(buffer)
    path.write_bytes(buffer.getvalue())
    return _written(path, hashlib.sha256(buffer.getvalue()).hexdigest())


# --- checks on read -----------------------------------------------------------------------------

# Files whose checksum matched in this process: path -> (inode, size, mtime, ctime, checksum). A
# file is hashed again only when one of them changes (any write changes ctime, even one that
# puts mtime back).
_verified: dict[str, tuple] = {}


def _stat_key(path: Path, checksum: str) -> tuple:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, checksum


def _written(path: Path, checksum: str) -> str:
    """Note a file this process has just written as checked; returns its checksum."""
    _verified[str(path)] = _stat_key(path, checksum)
    return checksum


def verify_file(path: Path, checksum: str) -> None:
    """Raise ``CacheError`` unless ``path``'s SHA-256 is ``checksum``; hashed once per process."""
    try:
        key = _stat_key(path, checksum)
    except FileNotFoundError:
        raise CacheError(f"{path} is missing from the image cache: {REBUILD}") from None
    if _verified.get(str(path)) == key:
        return
    with open(path, "rb") as file:
        found = hashlib.file_digest(file, "sha256").hexdigest()
    if found != checksum:
        raise CacheError(f"{path} is damaged: its content does not match the checksum in the image "
                         f"cache's {INDEX}. {REBUILD}")
    _verified[str(path)] = key


def load_array(path: Path, shape: tuple[int, ...], dtype: np.dtype, checksum: str | None) -> np.ndarray:
    """The ``.npy`` array at ``path``, memory-mapped, once its checksum (when given), shape and
    dtype are checked."""
    if checksum is not None:
        verify_file(path, checksum)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CacheError(f"{path} cannot be read ({error}): {REBUILD}") from None
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise CacheError(f"{path} holds {array.dtype} {array.shape} where the image cache's {INDEX} says "
                         f"{np.dtype(dtype)} {tuple(shape)}: {REBUILD}")
    return array


def read_index(folder: Path) -> dict:
    """The committed index of the cache in ``folder``: readable, of this format, complete, and
    naming only files inside ``folder``, each with a checksum."""
    path = folder / INDEX
    if not path.is_file():
        raise CacheError(f"no image cache at {folder}: run the cache stage (--tags=cache)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, or not JSON
        raise CacheError(f"{path} is unreadable ({error}): {REBUILD}") from None
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        found = index.get("format_version") if isinstance(index, dict) else None
        raise CacheError(f"the image cache at {folder} has another format ({found}): re-run the cache stage "
                         "(--tags=cache)")
    absent = [key for key in INDEX_KEYS if key not in index]
    if absent:
        raise CacheError(f"{path} is incomplete (no {absent[0]!r}): {REBUILD}")
    try:
        named = [index["decoded"]] + [name for entry in index["subsets"].values() for name in
                                      (entry["labels"], entry["rows"], *(shard["file"] for shard in entry["shards"]))]
        unchecked = [name for name in named if name not in dict(index["checksums"])]
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise CacheError(f"{path} is damaged ({type(error).__name__}: {error}): {REBUILD}") from None
    if unchecked:
        raise CacheError(f"{path} names {unchecked[0]} without its checksum: {REBUILD}")
    for name in index["checksums"]:
        _check_inside(folder, name)
    return index


def _check_inside(folder: Path, name: object) -> None:
    """Refuse a file name that leaves ``folder``: a path, ``..``, or a link to elsewhere."""
    inside = (isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
              and Path(name).name == name and (folder / name).resolve().parent == folder.resolve())
    if not inside:
        raise CacheError(f"{folder / INDEX} names {name!r}, which is not a file of the cache's folder "
                         f"{folder}: the cache reads nothing outside it. {REBUILD}")


class ImageCache:
    """A committed image cache: its fingerprints, and each subset's labels, rows and images."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)

    fingerprint = property(lambda self: self.index["fingerprint"])
    manifest_fingerprint = property(lambda self: self.index["manifest_fingerprint"])
    class_names = property(lambda self: list(self.index["class_names"]))
    size = property(lambda self: self.index["size"])
    channels = property(lambda self: self.index["channels"])

    def count(self, subset: str) -> int:
        return self.index["subsets"].get(subset, {}).get("count", 0)

    @property
    def total(self) -> int:
        """Images in the cache, all subsets together."""
        return sum(self.count(subset) for subset in self.index["subsets"])

    def nbytes(self, subset: str) -> int:
        return self.count(subset) * self.channels * self.size ** 2

    def labels(self, subset: str) -> torch.Tensor:
        """int64 class index of each image (-1 when unlabelled)."""
        labels = self._small_array(subset, "labels")
        wrong = labels[(labels < -1) | (labels >= len(self.class_names))]
        if len(wrong):
            raise CacheError(f"{self.folder / self.index['subsets'][subset]['labels']} holds class {wrong[0]}, "
                             f"but the cache's {INDEX} lists {len(self.class_names)} classes: {REBUILD}")
        return labels

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
                             (self.channels, self.size, self.size),
                             checksums=[self.index["checksums"][s["file"]] for s in shards])

    @property
    def decoded(self) -> pd.DataFrame:
        """One row per file the cache tried to decode: width, height, mode, or a reason."""
        return pd.read_parquet(self._checked(self.index["decoded"]))

    def verify(self) -> None:
        """Check every file of the cache against its checksum and every array against the index
        (what a rerun does before reusing the cache); raises ``CacheError`` naming the first
        file that is not right."""
        for subset in self.index["subsets"]:
            self.labels(subset)
            self.rows(subset)
            stream = self.stream(subset)
            for shard in range(len(stream.paths)):
                stream.shard(shard)
        self._checked(self.index["decoded"])

    def _checked(self, name: str) -> Path:
        """The path of ``name``, a file the index lists, once its checksum is checked."""
        verify_file(self.folder / name, self.index["checksums"][name])
        return self.folder / name

    def _small_array(self, subset: str, kind: str) -> torch.Tensor:
        entry = self.index["subsets"].get(subset)
        if entry is None:
            return torch.empty(0, dtype=torch.int64)
        array = load_array(self.folder / entry[kind], (self.count(subset),), np.dtype(np.int64),
                           self.index["checksums"][entry[kind]])
        return torch.from_numpy(np.array(array))

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
    checksums: list[str] | None = None  # each shard's SHA-256, checked when it is first read

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.shape))

    def read_all(self) -> torch.Tensor:
        return self._read(range(len(self.paths)))

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images (a random sample for the training subset, stored shuffled)."""
        return torch.from_numpy(np.array(self.shard(0)[:n])) if self.paths else \
            torch.empty((0, *self.shape), dtype=torch.uint8)

    def shard(self, s: int) -> np.ndarray:
        """Shard ``s``'s images, memory-mapped, once its checksum and shape are checked."""
        return load_array(self.paths[s], (self.counts[s], *self.shape), np.dtype(np.uint8),
                          self.checksums[s] if self.checksums else None)

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
            images[start:start + self.counts[s]].numpy()[:] = self.shard(s)
            start += self.counts[s]
        return images
