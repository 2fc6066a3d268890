"""Image caches larger than memory: training streamed from the cache's shards vs held in memory.

    python benchmarks/streaming_cache.py                 # a cache of 1.1x this machine's RAM, 64 px
    python benchmarks/streaming_cache.py --ram-factor 0.1 --max-memory-gb 1 --windows 2 --build intel  # a look

Everything goes through the project's own code:

1. build rate - the cache stage on the real samples in ``$DATASETS_DIR`` (``nodes.build_manifest``,
   ``nodes.build_image_cache``, ``cache.write_cache``, all cores decoding): images/s decoded and
   written, the source files dropped from the page cache first.
2. a synthetic cache larger than RAM, written by ``cache.write_cache`` itself (only decoding is
   replaced by random pixels: two million JPEGs would take hours to make), each shard dropped
   from the page cache once written (``posix_fadvise(DONTNEED)``) so that reads come from the
   disk; and a small cache of the same images, one streaming window's worth, that fits in memory.
3. training (``engine.TrainStep`` over the train stage's ``Loader``, intel's ``--env=cpu``
   profile: ResNet9 width 16, 64 px, batch 32) streamed from the large cache vs in memory from
   the small one. ``subset_images`` picks the path with the default ``images.max_memory_gb``
   (half the memory available), as in a real run. Each path trains in its own fresh process (its
   own peak RSS); the two take turns window after window of a few steps, so that load from
   elsewhere on a shared machine hits both alike; the median window is reported.
4. a whole streamed epoch's reads: every window of the large cache read from disk as the loader
   reads them, with no training: what streaming adds to an epoch, and the peak RSS over it.
5. a change of window: a streamed loader run on into its next window of shards, with the model in
   memory: the wait for that read, and the peak RSS across it.

Streaming reads a window of shards on the training thread once per window (every 87,000 images
at 64 px with the default 256 MB shards): the timed steps lie inside a window, so the
epoch-average streaming rate charges every image its share of the whole epoch's reads as well.
The caches are deleted at the end (``--keep`` keeps them). Results:
``benchmarks/results/streaming_cache_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch

from common import RESULTS, SAMPLES, machine_line, machine_record, project_parameters, write_record
from vision_pipelines import cache as cache_module
from vision_pipelines import engine
from vision_pipelines.cache import CacheBuild, ImageCache, ShardedImages
from vision_pipelines.config import (
    ComputeConfig,
    ImageConfig,
    ModelConfig,
    SourceConfig,
    SplitConfig,
    TrainConfig,
    parse,
)
from vision_pipelines.loader import Loader, memory_limit_bytes, subset_images
from vision_pipelines.models import build_model

PROFILE = ("intel", "cpu")  # whose parameters: ResNet9 width 16, 64 px, batch 32
# (dataset whose parameters apply, its sample folder): the real samples the build rate is measured on
BUILD_SAMPLES = (("cifar10", "cifar10-full"), ("fruits", "fruits360"), ("intel", "intel"))
POOL = 4096  # distinct synthetic images, repeated over the large cache
TARGETS = {"peak_rss_gib": 4.0, "stream_over_memory": 0.8}


# --- helpers ----------------------------------------------------------------------------------


def drop_from_page_cache(path: Path) -> None:
    """Write ``path``'s dirty pages and evict it from the page cache: the next read is from disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def memory_total() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1]) * 1024


def rss_mib() -> float:
    """This process's resident set now (VmRSS)."""
    with open("/proc/self/status") as status:
        return round(int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024, 1)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def profile() -> dict[str, Any]:
    """The image, model, train and compute settings of ``PROFILE``, as plain dicts (for a child)."""
    params = project_parameters(*PROFILE)
    settings = {"images": params["images"], "model": params["model"], "compute": {**params["compute"], "device": "cpu"},
                "train": {**params["train"], "resume": False}}
    for name, cls in (("images", ImageConfig), ("model", ModelConfig), ("compute", ComputeConfig),
                      ("train", TrainConfig)):
        settings[name] = dataclasses.asdict(parse(cls, settings[name], name))
    return settings


def configs(settings: dict[str, Any]) -> tuple[ImageConfig, ModelConfig, ComputeConfig, TrainConfig]:
    train = dict(settings["train"])
    train.pop("distributed", None)
    return (ImageConfig(**settings["images"]), ModelConfig(**settings["model"]),
            ComputeConfig(**settings["compute"]), TrainConfig(**train))


# --- 1. build rate on the real samples --------------------------------------------------------


def build_rate(dataset: str, sample: Path, folder: Path, limit: int) -> dict[str, Any]:
    """The cache stage on (the first ``limit`` images of) ``sample`` with ``dataset``'s ``--env=cpu``
    settings: images/s decoded and written."""
    from vision_pipelines.pipelines.image_classification import nodes

    params = project_parameters(dataset, "cpu")
    source = parse(SourceConfig, {**params["source"], "kind": "local", "path": str(sample)}, "source")
    images = parse(ImageConfig, params["images"], "images")  # decode_workers None: all cores
    manifest, classes = nodes.build_manifest(sample, source, parse(SplitConfig, params["split"], "split"))
    build = nodes.build_image_cache(sample, manifest, classes, images)
    build = dataclasses.replace(build, files=build.files.iloc[:limit])
    for file in build.files["file"]:
        drop_from_page_cache(sample / file)
    started = time.perf_counter()
    cache_module.write_cache(folder, build)
    seconds = time.perf_counter() - started
    written = sum(p.stat().st_size for p in folder.iterdir())
    return {"dataset": dataset, "sample": str(sample), "images": len(build.files), "size": images.size,
            "workers": images.decode_workers or os.cpu_count(), "seconds": round(seconds, 2),
            "images_per_second": round(len(build.files) / seconds, 1),
            "written_mb_per_second": round(written / seconds / 1e6, 1)}


# --- 2. the synthetic caches (each step in a fresh process: see ``child``) ---------------------


def write_synthetic(folder: Path, count: int, settings: dict[str, Any], classes: int = 6) -> dict[str, Any]:
    """A cache of ``count`` random images, written by ``cache.write_cache`` with decoding replaced
    by a pool of random pixels, every shard dropped from the page cache once written."""
    images = ImageConfig(**settings["images"])
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (POOL, images.channels, images.size, images.size), dtype=np.uint8)
    files = pd.DataFrame({"file": [f"synthetic/{i}.png" for i in range(count)],
                          "label": rng.integers(0, classes, count), "subset": "train", "row": np.arange(count)})
    build = CacheBuild(Path("synthetic"), files, [f"class_{c}" for c in range(classes)], images, f"synthetic-{count}")

    def decode_all(paths, size, channels, workers=None):
        for i, _ in enumerate(paths):
            yield pool[i % POOL], (size, size), "RGB"

    save = cache_module._save_array

    def save_then_drop(path: Path, array: np.ndarray) -> str:
        checksum = save(path, array)
        drop_from_page_cache(path)
        return checksum

    started = time.perf_counter()
    with mock.patch.object(cache_module, "decode_all", decode_all), \
            mock.patch.object(cache_module, "_save_array", save_then_drop):
        cache_module.write_cache(folder, build)
    seconds = time.perf_counter() - started
    cache = ImageCache(folder)
    return {"images": count, "bytes": cache.nbytes("train"), "shards": len(cache.stream("train").paths),
            "seconds": round(seconds, 1), "written_mb_per_second": round(cache.nbytes("train") / seconds / 1e6, 1),
            "peak_rss_mib": peak_rss_mib()}


def training_loader(folder: Path, settings: dict[str, Any]) -> tuple[Loader, ImageCache, float]:
    """The training loader the train stage makes: in memory or streamed, as ``engine.train`` decides."""
    images, _, compute, train = configs(settings)
    cache = ImageCache(folder)
    limit = memory_limit_bytes(images)
    data = subset_images(cache, "train", limit)
    loader = Loader.create(data, cache.labels("train"), images.mean, images.std, train.batch_size, compute,
                           crop_padding=train.crop_padding, flip=train.flip,
                           generator=torch.Generator().manual_seed(train.seed))
    return loader, cache, limit


def path_name(loader: Loader) -> str:
    return "stream" if isinstance(loader.images, ShardedImages) else "memory"


def read_pass(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Every window of a streamed epoch read from disk (``ShardedImages.chunks``, as the loader
    reads them), no batches: the time streaming adds per epoch, and the peak RSS over the epoch."""
    images, _, _, train = configs(settings)
    cache = ImageCache(folder)
    stream = subset_images(cache, "train", memory_limit_bytes(images))
    assert isinstance(stream, ShardedImages), f"{folder} fits in memory: nothing to stream"
    seen, windows, started = 0, 0, time.perf_counter()
    for window, _, _ in stream.chunks(torch.Generator().manual_seed(train.seed)):
        seen, windows = seen + len(window), windows + 1
        del window  # as the loader does: the last window goes before the next one is read
    seconds = time.perf_counter() - started
    return {"images": seen, "windows": windows, "gb": round(cache.nbytes("train") / 1e9, 2),
            "seconds": round(seconds, 1), "gb_per_second": round(cache.nbytes("train") / seconds / 1e9, 3),
            "peak_rss_mib": peak_rss_mib()}


def start_training(folder: Path, settings: dict[str, Any], total_steps: int):
    """The train stage's model step over its loader, and the first batch of an epoch: for a
    streamed subset, that batch waits for the first window of shards to be read from disk."""
    loader, cache, limit = training_loader(folder, settings)
    images, model, _, train = configs(settings)
    engine.seed_everything(train.seed)
    step = engine.TrainStep(build_model(model, images.channels, len(cache.class_names)), train, loader, total_steps)
    step.network.train()
    batches = iter(loader)
    started = time.perf_counter()
    first = next(batches)
    about = {"path": path_name(loader), "precision": loader.precision, "threads": torch.get_num_threads(),
             "memory_limit_gb": round(limit / 1e9, 2), "first_batch_seconds": round(time.perf_counter() - started, 2)}
    step(*first)
    return loader, step, batches, about


def serve(folder: Path, settings: dict[str, Any], warmup: int, steps: int, windows: int) -> dict[str, Any]:
    """Timed windows of ``steps`` training steps on command: one per line on stdin, each answered
    with its seconds; when stdin closes, the process reports and ends. Two of these, one per
    path, take turns (``interleaved``)."""
    _, step, batches, about = start_training(folder, settings, 1 + warmup + windows * steps)
    for _ in range(warmup):
        step(*next(batches))
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        for _ in range(steps):
            loss, _ = step(*next(batches))
        loss.item()
        print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
    return {**about, "peak_rss_mib": peak_rss_mib()}


def window_change(folder: Path, settings: dict[str, Any], warmup: int) -> dict[str, Any]:
    """A streamed loader run on, past ``warmup`` training steps, into its next window of shards
    without training: the wait for that window's read, the loader's own rate, and the peak RSS of
    a change of window with the model in memory."""
    loader, step, batches, about = start_training(folder, settings, 1 + warmup)
    for _ in range(warmup):
        step(*next(batches))
    assert isinstance(loader.images, ShardedImages), f"{folder} fits in memory: nothing to stream"
    window_images = loader.images.window * loader.images.counts[0]
    waits, started = [], time.perf_counter()
    for _ in range(window_images // loader.batch_size - warmup + 1):
        before = time.perf_counter()
        next(batches)
        waits.append(time.perf_counter() - before)
    return {**about, "next_window_wait_seconds": round(max(waits), 2),
            "loader_only_images_per_second": round(len(waits) * loader.batch_size / (time.perf_counter() - started)),
            "peak_rss_mib": peak_rss_mib()}


CHILDREN = {"write": write_synthetic, "read": read_pass, "serve": serve, "window_change": window_change}


def child(task: str, folder: Path, **kwargs: Any) -> dict[str, Any]:
    """Run ``CHILDREN[task]`` in a fresh Python process: its own memory peak, no inherited caches."""
    load = os.getloadavg()[0]
    done = subprocess.run(command(task, folder, **kwargs), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{task} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "load_average_1min": round(load, 2), **streaming_line(done.stderr)}


def command(task: str, folder: Path, **kwargs: Any) -> list[str]:
    return [sys.executable, __file__, "--child", json.dumps({"task": task, "folder": str(folder), **kwargs})]


def streaming_line(log: str) -> dict[str, str]:
    lines = [line.split(" - ")[-1] for line in log.splitlines() if "streaming them from" in line]
    return {"log": lines[0]} if lines else {}


def interleaved(folders: dict[str, Path], settings: dict[str, dict[str, Any]], warmup: int, steps: int,
                windows: int) -> dict[str, Any]:
    """Both paths trained side by side, each in its own fresh process (its own peak RSS), taking
    turns window by window (each goes first every other time): load from elsewhere on a shared
    machine hits both alike. Returns each path's images/s per window and its process's report."""
    processes, logs = {}, {}
    for name, folder in folders.items():
        drop_shards(folder)
        logs[name] = tempfile.TemporaryFile("w+")
        processes[name] = subprocess.Popen(command("serve", folder, settings=settings[name], warmup=warmup,
                                                   steps=steps, windows=windows),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[name], text=True)
        answer(processes[name], logs[name])  # ready
    batch = settings["small"]["train"]["batch_size"]
    rates: dict[str, list[float]] = {name: [] for name in processes}
    loads = []
    for window in range(windows):
        for name in list(processes)[::1 if window % 2 == 0 else -1]:
            processes[name].stdin.write("run\n")
            processes[name].stdin.flush()
            rates[name].append(round(steps * batch / answer(processes[name], logs[name])["seconds"], 1))
        loads.append(round(os.getloadavg()[0], 2))
    results = {"windows": windows, "steps_per_window": steps, "warmup_steps": warmup, "load_average_1min": loads}
    for name, process in processes.items():
        out, _ = process.communicate()  # closes its stdin: it reports and ends
        logs[name].seek(0)
        results[name] = {**json.loads(out.strip().splitlines()[-1]), "images_per_second": rates[name],
                         **streaming_line(logs[name].read())}
    return results


def answer(process: subprocess.Popen, log) -> dict[str, Any]:
    line = process.stdout.readline()
    if not line:
        log.seek(0)
        raise RuntimeError(f"a training process ended early:\n{log.read()[-4000:]}")
    return json.loads(line)


# --- the benchmark ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = profile()
    # the large cache's runs: the default limit (half the memory available) unless told otherwise
    streamed = {**settings, "images": {**settings["images"], "max_memory_gb": args.max_memory_gb}}
    images = ImageConfig(**settings["images"])
    image_bytes = images.channels * images.size ** 2
    ram = memory_total()
    large = math.ceil(args.ram_factor * ram / image_bytes)
    shard_images = int(images.shard_mb * 2 ** 20 // image_bytes)
    small = shard_images * ShardedImages.__dataclass_fields__["window"].default  # one streaming window's worth
    if large <= 2 * small:
        raise SystemExit(f"--ram-factor {args.ram_factor} gives a large cache of {large:,} images: it needs more than "
                         f"{2 * small:,} (two windows of shards) for a window change to happen")
    root = Path(tempfile.mkdtemp(prefix="streaming_cache_", dir=args.folder))
    free = shutil.disk_usage(root).free
    needed = (large + small) * image_bytes
    if needed > free - 10e9:
        shutil.rmtree(root)
        raise SystemExit(f"the caches need {needed / 1e9:.1f} GB but {root} has {free / 1e9:.1f} GB free "
                         f"(10 GB kept as margin): use --ram-factor or --folder")
    record = {**machine_record(torch.device("cpu")), "ram_gib": round(ram / 2 ** 30, 2),
              "disk_free_gb_before": round(free / 1e9, 1), "cache_folder": str(root),
              "load_average_before": [round(x, 2) for x in os.getloadavg()],
              "profile": {"dataset": PROFILE[0], "env": PROFILE[1], **settings}, "targets": TARGETS}
    try:
        print(f"build rate on the real samples in {SAMPLES}", flush=True)
        record["build"] = []
        for dataset, name in BUILD_SAMPLES:
            if name in args.build and (SAMPLES / name).is_dir():
                record["build"].append(build_rate(dataset, SAMPLES / name, root / f"build-{name}",
                                                  args.build_limit))
                shutil.rmtree(root / f"build-{name}")
                print("  ", record["build"][-1], flush=True)
        print(f"writing a synthetic cache of {large:,} images ({large * image_bytes / 2 ** 30:.1f} GiB, "
              f"RAM {ram / 2 ** 30:.1f} GiB) and one of {small:,}", flush=True)
        record["large_cache"] = child("write", root / "large", count=large, settings=settings)
        record["small_cache"] = child("write", root / "small", count=small, settings=settings)
        print("  ", record["large_cache"], flush=True)
        drop_shards(root / "large")
        record["read_pass"] = child("read", root / "large", settings=streamed)
        print("   read pass", record["read_pass"], flush=True)
        record["train"] = interleaved({"small": root / "small", "large": root / "large"},
                                      {"small": settings, "large": streamed}, args.warmup, args.steps, args.windows)
        print("   train", record["train"], flush=True)
        drop_shards(root / "large")
        record["window_change"] = child("window_change", root / "large", settings=streamed, warmup=args.warmup)
        print("   window change", record["window_change"], flush=True)
    finally:
        record["disk_free_gb_after_writing"] = round(shutil.disk_usage(root).free / 1e9, 1)
        if args.keep:
            print("kept", root)
        else:
            shutil.rmtree(root)
    record["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    record["summary"] = summarise(record)
    return record


def drop_shards(folder: Path) -> None:
    for path in folder.iterdir():
        drop_from_page_cache(path)


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    train, read = record["train"], record["read_pass"]
    memory = statistics.median(train["small"]["images_per_second"])
    stream = statistics.median(train["large"]["images_per_second"])
    pairs = statistics.median(b / a for a, b in zip(train["small"]["images_per_second"],
                                                    train["large"]["images_per_second"]))
    # Streaming reads its windows on the training thread: over an epoch, each image also costs
    # its share of reading the whole cache from disk.
    read_per_image = read["seconds"] / read["images"]
    epoch_stream = 1 / (1 / stream + read_per_image)
    peak = max(read["peak_rss_mib"], record["window_change"]["peak_rss_mib"], train["large"]["peak_rss_mib"])
    return {"memory_images_per_second": memory, "stream_images_per_second": stream,
            "stream_over_memory": round(stream / memory, 3), "stream_over_memory_median_of_pairs": round(pairs, 3),
            "read_ms_per_image": round(read_per_image * 1e3, 4),
            "stream_epoch_average_images_per_second": round(epoch_stream, 1),
            "stream_epoch_average_over_memory": round(epoch_stream / memory, 3),
            "stream_peak_rss_mib": peak, "stream_peak_rss_gib": round(peak / 1024, 2),
            "memory_peak_rss_mib": train["small"]["peak_rss_mib"]}


def markdown(record: dict[str, Any]) -> list[str]:
    s, p, large, small = record["summary"], record["profile"], record["large_cache"], record["small_cache"]
    image, model, train, read = p["images"], p["model"], p["train"], record["read_pass"]
    window = ShardedImages.__dataclass_fields__["window"].default
    paths = record["train"]
    lines = [
        "# Image caches larger than memory, CPU", "", machine_line(record), "",
        f"RAM {record['ram_gib']} GiB; {record['disk_free_gb_before']} GB disk free before; load average "
        f"(1, 5, 15 min) {record['load_average_before']} before, {record['load_average_after']} after (above the "
        "core count, other work shared the machine; the 1-minute load after every pair of windows is in the JSON).",
        "",
        "## Training streamed vs in memory", "",
        f"Profile: `{p['dataset']}` under `--env={p['env']}`: {model['name']} width {model['width']}, "
        f"{image['size']} px, batch {train['batch_size']}, {train['optimizer']}, crop pad {train['crop_padding']} "
        f"+ flip {train['flip']}, channels_last {p['compute']['channels_last']}, {paths['small']['precision']} "
        f"(bf16 autocast only where the CPU has bf16 instructions), {paths['small']['threads']} torch threads. "
        f"Shards of {image['shard_mb']:g} MB (`images.shard_mb`), windows of {window} shards.", "",
        f"- large cache: {large['images']:,} synthetic images, {large['bytes'] / 2 ** 30:.1f} GiB in "
        f"{large['shards']} shards, RAM {record['ram_gib']} GiB: streamed (`{paths['large'].get('log', '')}`)",
        f"- small cache: {small['images']:,} of the same images (one window's worth), "
        f"{small['bytes'] / 2 ** 30:.2f} GiB: in memory", "",
        "Each path trains in its own fresh process, its cache dropped from the page cache first; after "
        f"{paths['warmup_steps']} warm-up steps the two processes take turns, window after window ("
        f"{paths['steps_per_window']} steps each, each path first every other time), so that load from elsewhere "
        f"hits both alike. Median of {paths['windows']} windows per path. A streamed epoch's first batch waits "
        "for the first window of shards to be read from disk.", "",
        "| path | images/s (median) | windows | first batch of the epoch (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|"]
    for name, label in (("small", "in memory (`MemoryImages`)"), ("large", "streamed (`ShardedImages`)")):
        rates = paths[name]["images_per_second"]
        lines.append(f"| {label} | {statistics.median(rates):.1f} | {', '.join(f'{r:.0f}' for r in rates)} | "
                     f"{paths[name]['first_batch_seconds']:.2f} | {paths[name]['peak_rss_mib']:.0f} |")
    change = record["window_change"]
    lines += ["", f"A change of window, with the model in memory: one more streamed process trained "
                  f"{paths['warmup_steps']} steps, then ran the loader on without training into the next window of "
                  f"shards. The batch that needed the next window waited {change['next_window_wait_seconds']:.2f} s "
                  f"for its read; the loader delivered {change['loader_only_images_per_second']:.0f} images/s "
                  f"(gathered, cropped, flipped, normalised; the read included); peak RSS "
                  f"{change['peak_rss_mib']:.0f} MiB. Every peak includes the "
                  f"{change['rss_before_images_mib']:.0f} MiB a process holds before reading any image (Python, "
                  "torch, the project's modules)."]
    lines += ["", f"A whole streamed epoch's reads (`ShardedImages.chunks` over the large cache, every window from "
                  f"disk, no training): {read['windows']} windows, {read['gb']} GB in {read['seconds']} s "
                  f"({read['gb_per_second']} GB/s, {s['read_ms_per_image']:.4f} ms per image), peak RSS "
                  f"{read['peak_rss_mib']:.0f} MiB.", "",
              "## Results against the targets", "",
              f"- streamed / in memory, timed steps inside a window: **{s['stream_over_memory']:.2f}** "
              f"(median of the window-by-window ratios: {s['stream_over_memory_median_of_pairs']:.2f})",
              f"- streamed / in memory, epoch average (each image also charged its share of reading the whole "
              f"cache from disk, synchronously): **{s['stream_epoch_average_over_memory']:.2f}** "
              f"(target ≥ {TARGETS['stream_over_memory']})",
              f"- peak RSS of a streaming process: **{s['stream_peak_rss_gib']:.2f} GiB** "
              f"(target < {TARGETS['peak_rss_gib']} GiB); in memory (one window's worth of images): "
              f"{s['memory_peak_rss_mib'] / 1024:.2f} GiB", "",
              "## Cache build rate on the real samples", "",
              "`cache.write_cache` as the cache stage runs it, decoding on all cores, with each dataset's "
              "`--env=cpu` image size; source files dropped from the page cache first. The synthetic large cache "
              f"(random pixels, no decoding) was written at {large['written_mb_per_second']:.0f} MB/s.", "",
              "| dataset | sample | images | px | workers | seconds | images/s | MB/s written |",
              "|---|---|---|---|---|---|---|---|"]
    for b in record["build"]:
        lines.append(f"| {b['dataset']} | `{Path(b['sample']).name}` | {b['images']:,} | {b['size']} | "
                     f"{b['workers']} | {b['seconds']} | {b['images_per_second']:.0f} | "
                     f"{b['written_mb_per_second']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ram-factor", type=float, default=1.1, help="large cache size / RAM (default 1.1)")
    parser.add_argument("--windows", type=int, default=12, help="timed windows per path (default 12)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per window (default 10)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps before the windows (default 5)")
    parser.add_argument("--build", nargs="*", default=[name for _, name in BUILD_SAMPLES],
                        help="samples to measure the build rate on (default: all)")
    parser.add_argument("--build-limit", type=int, default=20000,
                        help="images per sample for the build rate, at most (default 20000)")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="images.max_memory_gb of the large cache's runs (default: none, as a user's)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the caches (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the caches (default: deleted at the end)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
        before = rss_mib()  # Python, torch, the project: what any process holds before the images
        result = CHILDREN[spec.pop("task")](Path(spec.pop("folder")), **spec)
        print(json.dumps({**result, "rss_before_images_mib": before}))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still delete the caches when stopped
    record = run(args)
    lines = markdown(record)
    stem = "streaming_cache_cpu" if args.ram_factor >= 1 else "streaming_cache_cpu_small"
    write_record(record, lines, stem, args.results)


if __name__ == "__main__":
    main()
