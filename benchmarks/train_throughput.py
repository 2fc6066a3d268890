"""Training throughput three ways, with the same model, image size, batch size, optimizer and data:

1. project   - the train stage itself: ``engine.fit`` on a ``loader.Loader`` over the uint8
               image cache (``cache.write_cache`` decodes every image once); batches are
               gathered, cropped, flipped and normalised as whole tensors on the training device;
2. reference - the loop of the tutorials: torchvision ``ImageFolder`` + per-sample
               RandomCrop(pad 4, reflect) + RandomHorizontalFlip + ToTensor + Normalize, a
               ``DataLoader`` with worker processes, feeding the same model step;
3. ceiling   - the same model step (``engine.TrainStep``) on one float batch already on the
               device: no data path.

    python benchmarks/train_throughput.py                          # cifar10, --env=cpu profile
    python benchmarks/train_throughput.py --dataset fruits         # fruits, --env=cpu profile
    python benchmarks/train_throughput.py --env base               # the GPU recipe (CUDA when present)

The model, image size, batch size and recipe come from the project's own parameters
(``conf/<env>`` over ``conf/base``), so the benchmark measures a configuration users run; flags
override them. The image cache is built once, before timing. Timing runs in ``--windows``
rounds; in each round every path, in a fresh process, trains one warm-up window of ``--steps``
steps and then one timed window. Fresh processes keep any path from inheriting another's warm
caches, worker processes or memory peak, and rounds spread the load of a shared machine over all
paths alike; the median window is reported. Data: the dataset's sample in ``$DATASETS_DIR``
(default ``../shared/datasets``), repeated to fill the windows, or generated JPEGs when there is none.
Results: ``benchmarks/results/train_throughput_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets, transforms

from common import (
    RESULTS,
    SAMPLE_ROOTS,
    SAMPLES,
    generate_class_folders,
    machine_line,
    machine_record,
    project_parameters,
    write_record,
)
from vision_pipelines import engine, lineage
from vision_pipelines.cache import CacheBuild, ImageCache, write_cache
from vision_pipelines.config import ComputeConfig, ImageConfig, ModelConfig, TrainConfig, parse
from vision_pipelines.loader import Loader, MemoryImages, resolve_device, uses_bf16
from vision_pipelines.models import build_model

PATHS = ("project", "reference", "ceiling")
# The class folders of the training images inside each sample (apparel's is a CSV layout).
TRAIN_FOLDERS = {"cifar10": "train", "fruits": "fruits-360/Training",
                 "garbage": "Garbage classification/Garbage classification", "intel": "seg_train/seg_train"}
TARGETS = {"project_over_ceiling": 0.9, "project_over_reference": {"cpu": 1.6, "cuda": 5.0}}


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration; plain data, so a child process receives it whole."""

    folder: Path  # class folders, ImageFolder's layout
    dataset: str  # whose parameters (conf/<env>/parameters*.yml) the configs come from
    env: str
    images: ImageConfig
    model: ModelConfig
    compute: ComputeConfig
    train: TrainConfig
    cache: Path | None = None  # the image cache of ``folder``'s images; measure() builds it when None
    steps: int = 40  # steps per window
    windows: int = 5  # timed windows (rounds); each comes after a warm-up window
    workers: int = 2  # DataLoader worker processes of the reference loop

    @property
    def images_per_window(self) -> int:
        return self.steps * self.train.batch_size

    @property
    def total_steps(self) -> int:  # warm-up window + timed windows: the one-cycle schedule's length
        return (1 + self.windows) * self.steps


def make_setup(dataset: str = "cifar10", env: str = "cpu", folder: Path | None = None,
               overrides: dict[str, dict[str, Any]] | None = None, **timing: int) -> Setup:
    """The project's ``<dataset>`` parameters under ``--env=<env>``, with ``overrides`` per section."""
    params = project_parameters(dataset, env)
    sections = {name: {**params.get(name, {}), **(overrides or {}).get(name, {})}
                for name in ("images", "model", "compute", "train")}
    sections["train"]["resume"] = False  # fit() gets no checkpoint: nothing to resume
    folder = Path(folder) if folder else SAMPLES / SAMPLE_ROOTS[dataset] / TRAIN_FOLDERS[dataset]
    return Setup(folder=folder, dataset=dataset, env=env,
                 images=parse(ImageConfig, sections["images"], "images"),
                 model=parse(ModelConfig, sections["model"], "model"),
                 compute=parse(ComputeConfig, sections["compute"], "compute"),
                 train=parse(TrainConfig, sections["train"], "train"), **timing)


# --- the three paths: each returns ``one_step()`` ---------------------------------------------


def labelled_files(setup: Setup) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, class index)`` and class names exactly as ImageFolder lists them: both paths
    train on the same files."""
    folder = datasets.ImageFolder(str(setup.folder))
    return folder.samples, folder.classes


def build_cache(setup: Setup, folder: Path) -> float:
    """Decode ``setup.folder``'s images into an image cache at ``folder`` (all of them in the
    ``train`` subset), as the cache stage does; returns the seconds it took."""
    samples, classes = labelled_files(setup)
    manifest = pd.DataFrame({"file": [os.path.relpath(path, setup.folder) for path, _ in samples],
                             "label": [classes[label] for _, label in samples], "subset": "train"})
    files = manifest.assign(label=[label for _, label in samples], row=manifest.index)
    started = time.perf_counter()
    write_cache(folder, CacheBuild(setup.folder, files, classes, setup.images,
                                   lineage.manifest_fingerprint(manifest, classes)))
    return time.perf_counter() - started


def project_rates(setup: Setup, device: torch.device) -> tuple[list[float], dict[str, Any]]:
    """Path 1: ``engine.fit`` itself, one epoch per window (the first one is warm-up)."""
    cache = ImageCache(setup.cache)
    # The images repeated (or cut) to exactly one window per epoch, as a dataset of that size would be.
    copies = -(-setup.images_per_window // cache.count("train"))
    train_x = cache.images("train").repeat(copies, 1, 1, 1)[:setup.images_per_window]
    train_y = cache.labels("train").repeat(copies)[:setup.images_per_window]
    norm = {"mean": setup.images.mean, "std": setup.images.std, "batch_size": setup.train.batch_size,
            "compute": setup.compute}
    train = Loader.create(MemoryImages(train_x), train_y, **norm, crop_padding=setup.train.crop_padding,
                          flip=setup.train.flip)
    no_val = Loader.create(MemoryImages(train_x[:0]), train_y[:0], **norm)
    engine.seed_everything(setup.train.seed)
    network = build_model(setup.model, setup.images.channels, len(cache.class_names))
    result = engine.fit(network, train, no_val, dataclasses.replace(setup.train, epochs=1 + setup.windows))
    rates = [setup.images_per_window / seconds for seconds in result.history["seconds"].iloc[1:]]
    return rates, {"sample_images": cache.count("train")}


def reference_step(setup: Setup, device: torch.device) -> Callable[[], None]:
    """Path 2: what the tutorials write, feeding the project's model step."""
    samples, classes = labelled_files(setup)
    size, padding = setup.images.size, setup.train.crop_padding
    pipeline = []
    with Image.open(samples[0][0]) as first:
        if first.size != (size, size):  # the cache squashes images to size x size once; here, every time
            pipeline.append(transforms.Resize((size, size)))
    if setup.images.channels == 1:
        pipeline.append(transforms.Grayscale())
    if padding:
        pipeline.append(transforms.RandomCrop(size, padding=padding, padding_mode="reflect"))
    if setup.train.flip:
        pipeline.append(transforms.RandomHorizontalFlip())
    pipeline += [transforms.ToTensor(), transforms.Normalize(setup.images.mean, setup.images.std)]
    dataset = datasets.ImageFolder(str(setup.folder), transform=transforms.Compose(pipeline))
    # One long shuffled pass over the repeated sample: no epoch boundary (where workers would
    # restart) inside the measurement, as with a real dataset of that size.
    sampler = RandomSampler(dataset, num_samples=setup.total_steps * setup.train.batch_size)
    loader = DataLoader(dataset, batch_size=setup.train.batch_size, sampler=sampler, drop_last=True,
                        num_workers=setup.workers, pin_memory=device.type == "cuda")
    step = new_train_step(setup, len(classes), device)
    batches = iter(loader)

    def one_step() -> None:
        x, y = next(batches)
        step(x.to(device, non_blocking=True).contiguous(memory_format=step.loader.memory_format),
             y.to(device, non_blocking=True))

    return one_step


def ceiling_step(setup: Setup, device: torch.device) -> Callable[[], None]:
    """Path 3: the model step alone, on one float batch made on the device beforehand."""
    classes = ImageCache(setup.cache).class_names
    step = new_train_step(setup, len(classes), device)
    generator = torch.Generator(device).manual_seed(0)
    shape = (setup.train.batch_size, setup.images.channels, setup.images.size, setup.images.size)
    x = torch.randn(shape, generator=generator, device=device).contiguous(memory_format=step.loader.memory_format)
    y = torch.randint(0, len(classes), (setup.train.batch_size,), generator=generator, device=device)
    return lambda: step(x, y)


def new_train_step(setup: Setup, classes: int, device: torch.device) -> engine.TrainStep:
    """The project's model step, as ``fit`` builds it: its loader gives the device, precision
    (bf16 autocast where native) and memory format (channels_last); it holds no images here."""
    engine.seed_everything(setup.train.seed)
    network = build_model(setup.model, setup.images.channels, classes)
    no_images = MemoryImages(torch.empty(0, setup.images.channels, setup.images.size, setup.images.size,
                                         dtype=torch.uint8))
    loader = Loader.create(no_images, torch.empty(0, dtype=torch.int64), setup.images.mean, setup.images.std,
                           setup.train.batch_size, setup.compute)
    return engine.TrainStep(network, setup.train, loader, total_steps=setup.total_steps)


def window_rates(one_step: Callable[[], None], setup: Setup, device: torch.device) -> list[float]:
    """Images/s of each timed window, after one warm-up window."""
    rates = []
    for window in range(1 + setup.windows):
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(setup.steps):
            one_step()
        _synchronize(device)  # CUDA runs ahead of Python: stop the clock when the work is done
        if window:
            rates.append(setup.images_per_window / (time.perf_counter() - started))
    return rates


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- measuring --------------------------------------------------------------------------------


def measure_path(setup: Setup, path: str) -> dict[str, Any]:
    """Window rates, median images/s and peak memory of one path (run it in a fresh process)."""
    device = resolve_device(setup.compute.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    details: dict[str, Any] = {}
    if path == "project":
        rates, details = project_rates(setup, device)
    else:
        make_step = reference_step if path == "reference" else ceiling_step
        rates = window_rates(make_step(setup, device), setup, device)
    result = {"images_per_second": round(statistics.median(rates), 1),
              "window_images_per_second": [round(r, 1) for r in rates], **details}
    if device.type == "cuda":
        result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:  # ru_maxrss is in KiB on Linux; the children are the reference loop's DataLoader workers
        result["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if path == "reference" and setup.workers:  # forked: pages shared with the parent count too
            result["largest_worker_peak_rss_mib"] = round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return result


def measure(setup: Setup, isolate: bool = True) -> dict[str, Any]:
    """``setup.windows`` timed windows of each path, each window in its own spawned process
    unless ``isolate`` is False (tests, smoke runs)."""
    if setup.cache is None:  # decoded once, here, for every round of the project path
        with tempfile.TemporaryDirectory(prefix="throughput-cache-") as folder:
            seconds = build_cache(setup, Path(folder))
            record = measure(dataclasses.replace(setup, cache=Path(folder)), isolate)
        record["paths"]["project"]["cache_build_seconds"] = round(seconds, 2)
        return record
    device = resolve_device(setup.compute.device)
    record = {**machine_record(device),
              "setup": {"dataset": setup.dataset, "env": setup.env, "data": str(setup.folder),
                        "steps_per_window": setup.steps, "windows": setup.windows,
                        "dataloader_workers": setup.workers, "images": dataclasses.asdict(setup.images),
                        "model": dataclasses.asdict(setup.model), "compute": dataclasses.asdict(setup.compute),
                        "train": dataclasses.asdict(setup.train),
                        "bf16_autocast": uses_bf16(setup.compute, device),
                        "channels_last": setup.compute.channels_last},
              "paths": {}}
    # Round after round, each path trains one warm-up window and one timed window in a fresh
    # process: a burst of load from elsewhere on a shared machine then hits all paths alike.
    one_window = dataclasses.replace(setup, windows=1)
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    for round_ in range(setup.windows):
        for path in PATHS[round_ % 3:] + PATHS[:round_ % 3]:  # and no path always goes first
            if isolate:
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                    runs[path].append(child.submit(measure_path, one_window, path).result())
            else:
                runs[path].append(measure_path(one_window, path))
            print(f"round {round_ + 1}/{setup.windows} {path:>9}: "
                  f"{runs[path][-1]['images_per_second']:8.1f} images/s", flush=True)
    for path, results in runs.items():
        rates = [r["images_per_second"] for r in results]
        record["paths"][path] = {**results[-1], "images_per_second": round(statistics.median(rates), 1),
                                 "window_images_per_second": rates,
                                 **{key: max(r[key] for r in results) for key in results[0] if "memory" in key}}
    rate = {path: record["paths"][path]["images_per_second"] for path in PATHS}
    record["ratios"] = {"project_over_ceiling": round(rate["project"] / rate["ceiling"], 3),
                        "project_over_reference": round(rate["project"] / rate["reference"], 3)}
    record["targets"] = {"project_over_ceiling": TARGETS["project_over_ceiling"],
                         "project_over_reference": TARGETS["project_over_reference"].get(device.type)}
    return record


def markdown(record: dict[str, Any]) -> list[str]:
    s, paths, ratios, targets = record["setup"], record["paths"], record["ratios"], record["targets"]
    train, model, image = s["train"], s["model"], s["images"]
    describe = {"project": "train stage: uint8 cache, batch crop + flip on the device (`engine.fit`)",
                "reference": f"ImageFolder + per-sample transforms, DataLoader({s['dataloader_workers']} workers)",
                "ceiling": "model step on a batch already on the device"}
    memory = "peak GPU memory allocated" if record["device_type"] == "cuda" else "peak RSS of the process"
    lines = [f"# Training throughput, {record['device_type'].upper()}", "", machine_line(record), "",
             f"Profile: the project's `{s['dataset']}` parameters under `--env={s['env']}`, with the "
             f"command's overrides.", "",
             f"{model['name']} width {model['width']}, {image['size']} px, batch {train['batch_size']}, "
             f"{train['optimizer']}, crop pad {train['crop_padding']} + flip {train['flip']}, bf16 "
             f"{s['bf16_autocast']}, channels_last {s['channels_last']}, compile {train['compile']}; data "
             f"`{s['data']}`. Median of {s['windows']} timed windows of {s['steps_per_window']} steps, one per "
             f"round; in each round every path runs in a fresh process, warm-up window first.", "",
             f"| path | what | images/s (median) | windows | {memory} (MiB) |", "|---|---|---|---|---|"]
    for path in PATHS:
        p = paths[path]
        lines.append(f"| {path} | {describe[path]} | {p['images_per_second']:.1f} | "
                     f"{', '.join(f'{r:.0f}' for r in p['window_images_per_second'])} | "
                     f"{p['peak_memory_mib']:.0f} |")
    target = targets["project_over_reference"]
    lines += ["", f"- project / ceiling = **{ratios['project_over_ceiling']:.2f}** "
                  f"(target ≥ {targets['project_over_ceiling']})",
              f"- project / reference = **{ratios['project_over_reference']:.2f}**"
              + (f" (target ≥ {target} on this device type)" if target else "")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=sorted(TRAIN_FOLDERS),
                        help="whose parameters (and sample) to use")
    parser.add_argument("--env", default="cpu", help="Kedro environment of the parameters: cpu, base, ...")
    parser.add_argument("--data", type=Path, help="class folders to read instead of the dataset's sample")
    parser.add_argument("--size", type=int, help="image side in pixels (default: the profile's)")
    parser.add_argument("--width", type=int, help="network width (model.width; default: the profile's)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the profile's)")
    parser.add_argument("--steps", type=int, default=40, help="steps per window (default 40)")
    parser.add_argument("--windows", type=int, default=5, help="timed windows (rounds) per path (default 5)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="DataLoader workers of the reference loop (default: min(2, cores))")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (all three paths)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast, even where the device has bf16")
    parser.add_argument("--results", type=Path, default=None, help="folder for the results (benchmarks/results)")
    args = parser.parse_args()

    overrides = {"images": {"size": args.size}, "model": {"width": args.width},
                 "compute": {"device": args.device, "mixed_precision": False if args.fp32 else None},
                 "train": {"batch_size": args.batch_size, "compile": args.compile}}
    overrides = {section: {k: v for k, v in values.items() if v is not None} for section, values in overrides.items()}
    setup = make_setup(args.dataset, args.env, args.data, overrides, steps=args.steps, windows=args.windows,
                       workers=args.workers)
    generated = not setup.folder.is_dir()
    with tempfile.TemporaryDirectory() as scratch:
        if generated:
            print(f"{setup.folder} not found: generating stand-in images")
            setup = dataclasses.replace(setup, folder=generate_class_folders(
                Path(scratch) / "images", size=setup.images.size))
        record = measure(setup)
    record["setup"]["data_source"] = "generated stand-in JPEGs" if generated else "sample folder"
    lines = markdown(record)
    # the default profile's file is train_throughput_<device>; other profiles get their own
    profile = ("" if (args.dataset, args.env) == ("cifar10", "cpu") else f"_{args.dataset}_{args.env}") + (
        "_fp32" if args.fp32 else "")
    write_record(record, lines, f"train_throughput_{record['device_type']}{profile}", args.results or RESULTS)


if __name__ == "__main__":
    main()
