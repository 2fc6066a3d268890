"""Training throughput three ways, on the same model, image size, batch size and data:

1. project   - the train stage's own data path: the uint8 image cache, batches gathered on the
               device, whole-batch crop + flip, then the step (``engine.TrainStep``);
2. reference - the tutorials' loop: torchvision ImageFolder + per-sample RandomCrop(pad 4) +
               RandomHorizontalFlip + ToTensor + Normalize, a DataLoader with worker processes;
3. ceiling   - the same model's steps on one batch already on the device: no data path at all.

    python benchmarks/train_throughput.py                 # CPU profile of the fruits pipeline
    python benchmarks/train_throughput.py --size 100 --width 64 --batch-size 128   # GPU recipe

Images/s are measured after warm-up steps, as the median of several timed windows. Results go
to ``benchmarks/results/train_throughput_<device>.{json,md}`` with date, device, torch version
and cores. Data: a class-folder sample (default the Fruits-360 sample in ``$DATASETS_DIR`` or
``../shared/datasets``); without one, images are generated into a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from vision_pipelines import engine, images
from vision_pipelines.config import ImageConfig, ModelConfig, TrainConfig
from vision_pipelines.models import build_model

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
DEFAULT_SAMPLE = Path(os.environ.get("DATASETS_DIR", PROJECT.parent / "shared" / "datasets")) / "fruits360"


def find_class_folders(root: Path) -> Path:
    """The folder whose subfolders are classes (``Training`` when the sample has one)."""
    for candidate in [*root.rglob("Training"), *root.rglob("train"), root]:
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    raise FileNotFoundError(f"no class folders under {root}")


def generate_images(root: Path, classes: int = 10, per_class: int = 40, size: int = 100) -> Path:
    """A stand-in dataset of JPEGs, for machines without the shared samples."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for n in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{n}.jpg", quality=90)
    return root


def timed(run_steps: Callable[[int], None], steps: int, warmup: int, repeats: int, batch_size: int,
          device: torch.device) -> float:
    """Median images/s over ``repeats`` windows of ``steps`` steps, after ``warmup`` steps."""
    run_steps(warmup)
    rates = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        run_steps(steps)
        _synchronize(device)
        rates.append(steps * batch_size / (time.perf_counter() - started))
    return statistics.median(rates)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_step(config: TrainConfig, image_config: ImageConfig, model: ModelConfig, classes: int,
             device: torch.device) -> engine.TrainStep:
    """A fresh, identically initialised model and optimizer for each path."""
    engine.seed_everything(0)
    network = build_model(model, image_config.channels, classes)
    return engine.TrainStep(network, config, image_config, device, total_steps=10**6)


def project_path(folder: Path, config: TrainConfig, image_config: ImageConfig, model: ModelConfig,
                 device: torch.device, min_images: int) -> tuple[Callable[[int], None], int]:
    """Path 1: the image cache built by the project's code, batches via ``engine.epoch_batches``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    classes = sorted({p.parent.name for p in files})
    decoded = [array for array, _, _ in images.decode_all(files, image_config.size, image_config.channels)]
    cache = torch.from_numpy(np.stack(decoded))
    labels = torch.tensor([classes.index(p.parent.name) for p in files])
    repeats = -(-min_images // len(labels))  # a small sample repeated, so epochs are long enough
    cache = engine._to_device(cache.repeat(repeats, 1, 1, 1), device)
    labels = labels.repeat(repeats).to(device)
    step = new_step(config, image_config, model, len(classes), device)
    generator = torch.Generator().manual_seed(0)
    batches = _forever(lambda: engine.epoch_batches(cache, labels, config.batch_size, generator, device))

    def run(steps: int) -> None:
        for _ in range(steps):
            step(*next(batches), generator)

    return run, len(classes)


def reference_path(folder: Path, config: TrainConfig, image_config: ImageConfig, model: ModelConfig,
                   device: torch.device, workers: int) -> Callable[[int], None]:
    """Path 2: what the tutorials write, feeding the same model and optimizer."""
    transform = transforms.Compose([
        transforms.Resize((image_config.size, image_config.size)),
        transforms.RandomCrop(image_config.size, padding=config.crop_padding, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(image_config.mean, image_config.std),
    ])
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    step = new_step(config, image_config, model, len(dataset.classes), device)
    batches = _forever(lambda: iter(loader))

    def run(steps: int) -> None:
        for _ in range(steps):
            x, y = next(batches)
            step.forward_backward(x.to(device, non_blocking=True), y.to(device, non_blocking=True))

    return run


def ceiling_path(config: TrainConfig, image_config: ImageConfig, model: ModelConfig, classes: int,
                 device: torch.device) -> Callable[[int], None]:
    """Path 3: the model's steps on one float batch already on the device."""
    step = new_step(config, image_config, model, classes, device)
    x = torch.randn(config.batch_size, image_config.channels, image_config.size, image_config.size, device=device)
    y = torch.randint(0, classes, (config.batch_size,), device=device)

    def run(steps: int) -> None:
        for _ in range(steps):
            step.forward_backward(x, y)

    return run


def _forever(make_iterator: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make_iterator()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure(folder: Path, size: int, width: int, batch_size: int, steps: int, warmup: int,
            repeats: int, workers: int, device_setting: str = "auto") -> dict:
    """Run the three paths once each and return the record that gets written to results/."""
    device = engine.resolve_device(device_setting)
    image_config = ImageConfig(size=size)
    model = ModelConfig(name="resnet9", width=width)
    config = TrainConfig(batch_size=batch_size, device=device_setting)
    record = {"date": datetime.date.today().isoformat(), "device": device_name(device),
              "device_type": device.type, "torch": torch.__version__, "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(),
              "config": {"model": f"resnet9 width {width}", "image_size": size, "batch_size": batch_size,
                         "optimizer": config.optimizer, "crop_padding": config.crop_padding,
                         "mixed_precision_bf16": device.type == "cuda", "channels_last": device.type == "cuda",
                         "dataloader_workers": workers, "data": str(folder)},
              "timing": {"warmup_steps": warmup, "steps_per_window": steps, "windows": repeats},
              "images_per_second": {}, "peak_memory_mb": {},
              "command": " ".join(["python", *sys.argv]) if sys.argv[0].endswith(".py") else "measure()"}
    run_project, classes = project_path(folder, config, image_config, model, device,
                                        min_images=(warmup + steps) * batch_size)
    paths = {"project": run_project,
             "reference": reference_path(folder, config, image_config, model, device, workers),
             "ceiling": ceiling_path(config, image_config, model, classes, device)}
    for name, run in paths.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        record["images_per_second"][name] = round(timed(run, steps, warmup, repeats, batch_size, device), 1)
        record["peak_memory_mb"][name] = round(peak_memory_mb(device), 1)
        print(f"{name:>9}: {record['images_per_second'][name]:8.1f} images/s", flush=True)
    rates = record["images_per_second"]
    record["ratios"] = {"project_over_ceiling": round(rates["project"] / rates["ceiling"], 3),
                        "project_over_reference": round(rates["project"] / rates["reference"], 3)}
    if device.type == "cpu":
        record["peak_memory_note"] = "process peak RSS so far (cumulative); DataLoader workers not included"
    return record


def write_results(record: dict, results: Path = RESULTS) -> tuple[Path, Path]:
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"train_throughput_{record['device_type']}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    rates, ratios, memory = record["images_per_second"], record["ratios"], record["peak_memory_mb"]
    c = record["config"]
    lines = [
        f"# Training throughput, {record['device_type'].upper()}", "",
        f"{record['date']}; {record['device']}; {record['cores']} cores ({record['torch_threads']} torch threads); "
        f"torch {record['torch']}.", "",
        f"{c['model']}, {c['image_size']} px, batch {c['batch_size']}, {c['optimizer']}, crop pad "
        f"{c['crop_padding']} + flip; reference DataLoader workers: {c['dataloader_workers']}. "
        f"Median of {record['timing']['windows']} windows of {record['timing']['steps_per_window']} steps "
        f"after {record['timing']['warmup_steps']} warm-up steps.", "",
        "| path | images/s | peak memory (MB) |", "|---|---|---|",
        *[f"| {name} | {rates[name]:.1f} | {memory[name]:.0f} |" for name in ("project", "reference", "ceiling")],
        "", f"- project / ceiling = **{ratios['project_over_ceiling']:.2f}** (target ≥ 0.9)",
        f"- project / reference = **{ratios['project_over_reference']:.2f}**", "",
        f"Command: `{record['command']}`",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_SAMPLE, help="a folder with class folders")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (CPU profile: 32)")
    parser.add_argument("--width", type=int, default=16, help="ResNet9 width (CPU profile: 16)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (CPU profile: 32)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed window")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="DataLoader workers of the reference loop")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = find_class_folders(args.data) if args.data.is_dir() else generate_images(Path(scratch) / "images")
        record = measure(folder, args.size, args.width, args.batch_size, args.steps, args.warmup,
                         args.repeats, args.workers, args.device)
    for path in write_results(record):
        print(f"wrote {path}")
    print(json.dumps(record["ratios"]))


if __name__ == "__main__":
    main()
