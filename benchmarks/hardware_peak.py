"""How close training comes to the hardware: matmul peak, training FLOPs per image, and the
train stage's and the model-only throughput as a fraction of that peak.

- **peak**: the best of several timed ``n x n`` matrix products, in fp32, and in bf16 where the
  device runs it natively (``loader.has_fast_bf16``);
- **FLOPs per image**: forward + backward of the recipe's network on one batch, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions), per image;
- **train stage**: ``engine.fit`` over a training ``Loader`` of synthetic uint8 images (crop,
  flip, normalise on the device, the optimizer step, the schedule), images/s over a timed epoch
  after a warm-up epoch; **model only**: ``engine.TrainStep`` on one ready batch, repeated.

Fraction of peak = images/s x FLOPs per image / peak FLOP/s in the precision the recipe trains in.

    python benchmarks/hardware_peak.py                 # cifar10's --env=cpu recipe
    python benchmarks/hardware_peak.py --steps 5 --size 512   # quick look
    python benchmarks/hardware_peak.py --variants      # and channels_last, torch.compile, bf16 / fp32
    python benchmarks/hardware_peak.py --variants --fp32   # against the recipe in fp32 (*_fp32 record)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common import machine_line, machine_record, project_parameters, write_record
from vision_pipelines import engine
from vision_pipelines.config import ComputeConfig, ImageConfig, ModelConfig, TrainConfig, parse
from vision_pipelines.loader import Loader, MemoryImages, has_fast_bf16, resolve_device, uses_bf16
from vision_pipelines.models import build_model

CLASSES = 10


def matmul_peak(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` ``size x size`` products (after one untimed); on the
    CPU, the best over the candidate thread counts (all cores, 1): on a busy machine all cores
    can be far slower than one."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best, threads = float("inf"), torch.get_num_threads()
    for count in sorted({threads, 1}, reverse=True) if device.type == "cpu" else [threads]:
        torch.set_num_threads(count)
        for i in range(repeats + 1):
            _synchronize(device)
            started = time.perf_counter()
            torch.mm(a, b)
            _synchronize(device)
            if i:
                best = min(best, time.perf_counter() - started)
    torch.set_num_threads(threads)
    return 2 * size**3 / best


def train_flops_per_image(model: ModelConfig, images: ImageConfig, batch: int, device: torch.device,
                          amp: bool) -> float:
    """Forward + backward FLOPs of one training batch, per image."""
    network = build_model(model, images.channels, CLASSES).to(device).train()
    x = torch.randn(batch, images.channels, images.size, images.size, device=device)
    labels = torch.arange(batch, device=device) % CLASSES
    with FlopCounterMode(display=False) as counter, torch.autocast(device.type, torch.bfloat16, enabled=amp):
        F.cross_entropy(network(x).float(), labels).backward()
    return counter.get_total_flops() / batch


def configs(dataset: str, env: str, overrides: dict[str, dict[str, Any]]
            ) -> tuple[ImageConfig, ModelConfig, TrainConfig, ComputeConfig]:
    params = project_parameters(dataset, env)
    section = {name: {**params.get(name, {}), **overrides.get(name, {})}
               for name in ("images", "model", "train", "compute")}
    return (parse(ImageConfig, section["images"], "images"), parse(ModelConfig, section["model"], "model"),
            parse(TrainConfig, {**section["train"], "resume": False}, "train"),
            parse(ComputeConfig, section["compute"], "compute"))


def throughputs(images: ImageConfig, model: ModelConfig, train: TrainConfig, compute: ComputeConfig,
                steps: int, bf16: bool | None = None) -> dict[str, float]:
    """Images/s of the train stage (``engine.fit``, the second of two epochs of ``steps``
    batches) and of the model only (``TrainStep`` on one batch, ``steps`` times after one);
    ``bf16`` forces bf16 autocast on or off (default: the recipe's, where the device is fast)."""
    count = steps * train.batch_size
    pixels = torch.randint(0, 256, (count, images.channels, images.size, images.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    labels = torch.arange(count) % CLASSES
    norm = {"mean": images.mean, "std": images.std, "batch_size": train.batch_size, "compute": compute}
    loader = Loader.create(MemoryImages(pixels), labels, **norm, crop_padding=train.crop_padding, flip=train.flip)
    no_val = Loader.create(MemoryImages(pixels[:0]), labels[:0], **norm)
    batches = Loader.create(MemoryImages(pixels), labels, **norm)
    for each in (loader, no_val, batches):
        each.amp = each.amp if bf16 is None else bf16
    engine.seed_everything(train.seed)
    result = engine.fit(build_model(model, images.channels, CLASSES), loader, no_val,
                        dataclasses.replace(train, epochs=2))
    stage = count / result.history["seconds"].iloc[1]
    step = engine.TrainStep(build_model(model, images.channels, CLASSES), train, loader, total_steps=steps + 1)
    batch = next(iter(batches))
    step(*batch)
    _synchronize(loader.device)
    started = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    _synchronize(loader.device)
    return {"train_stage": stage, "model_only": steps * train.batch_size / (time.perf_counter() - started)}


def measure(dataset: str, env: str, overrides: dict[str, dict[str, Any]], steps: int, size: int) -> dict[str, Any]:
    images, model, train, compute = configs(dataset, env, overrides)
    device = resolve_device(compute.device)
    amp = uses_bf16(compute, device)
    peaks = {"fp32": matmul_peak(size, torch.float32, device)}
    if has_fast_bf16(device):
        peaks["bf16"] = matmul_peak(size, torch.bfloat16, device)
    flops = train_flops_per_image(model, images, train.batch_size, device, amp)
    rates = throughputs(images, model, train, compute, steps)
    peak = peaks["bf16" if amp else "fp32"]
    return {**machine_record(device), "dataset": dataset, "env": env, "matmul_size": size, "steps": steps,
            "precision": "bf16" if amp else "fp32", "peak_flops": peaks, "train_flops_per_image": flops,
            "setup": {"model": dataclasses.asdict(model), "images": images.size, "batch_size": train.batch_size},
            "images_per_second": rates,
            "fraction_of_peak": {path: rate * flops / peak for path, rate in rates.items()}}


VARIANTS = {  # name: (overrides, bf16 forced), against the recipe as configured (channels_last on)
    "channels_last off": ({"compute": {"channels_last": False}}, None),
    "torch.compile": ({"train": {"compile": True}}, None),
    "whitening trained": ({"model": {"whiten": True}}, None),  # where the recipe freezes it
    "bf16 autocast": ({}, True),
    "fp32": ({}, False),
}


def variants(dataset: str, env: str, overrides: dict[str, dict[str, Any]], steps: int) -> dict[str, dict]:
    """Train stage and model-only images/s as configured and with each of ``VARIANTS``; on CPUs
    without native bf16, the bf16 row measures oneDNN's emulation; the precision the recipe trains
    in is not repeated as a variant, nor trained whitening where the recipe does not freeze it.
    Each is run twice, in turn (configured, variant, configured, ...), and the better of the two
    counts."""
    _, model, _, compute = configs(dataset, env, overrides)
    chosen = chosen_variants(model, uses_bf16(compute, resolve_device(compute.device)))
    rows: dict[str, dict] = {}
    for _ in range(2):
        for name, (change, bf16) in {"as configured": ({}, None), **chosen}.items():
            merged = {key: {**overrides.get(key, {}), **change.get(key, {})} for key in {*overrides, *change}}
            rates = throughputs(*configs(dataset, env, merged), steps, bf16)
            best = rows.get(name, {})
            rows[name] = {path: max(rate, best.get(path, 0.0)) for path, rate in rates.items()}
    return rows


def chosen_variants(model: ModelConfig, configured_bf16: bool) -> dict[str, tuple[dict, bool | None]]:
    """``VARIANTS`` that differ from the recipe: not its own precision, and trained whitening only
    where it freezes the whitening."""
    return {name: variant for name, variant in VARIANTS.items() if variant[1] != configured_bf16
            and (name != "whitening trained" or model.whiten == "frozen")}


def variant_lines(record: dict[str, Any]) -> list[str]:
    rows = record.get("variants")
    if not rows:
        return []
    base = rows["as configured"]
    lines = ["", f"Variants of the recipe ({record['steps']} batches each, the better of two runs; ratio to "
             "as configured):", "", "| variant | train stage images/s | model only images/s |", "|---|---|---|"]
    for name, rates in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{rates[path]:.0f} ({rates[path] / base[path]:.2f}x)"
                                                  for path in ("train_stage", "model_only")) + " |")
    return lines


def markdown(record: dict[str, Any], note: str) -> list[str]:
    peaks = ", ".join(f"{name} {value / 1e9:.1f} GFLOP/s" for name, value in record["peak_flops"].items())
    lines = [f"# Training throughput against the hardware's peak ({record['dataset']}, --env={record['env']})", "",
             machine_line(record), ""]
    if note:
        lines += [f"**{note}**", ""]
    lines += [f"- matmul peak ({record['matmul_size']}²): {peaks}; the recipe trains in {record['precision']}",
              f"- training FLOPs per image (forward + backward, {record['setup']['model']['name']} width "
              f"{record['setup']['model']['width']}, {record['setup']['images']} px): "
              f"{record['train_flops_per_image'] / 1e6:.1f} MFLOP", "",
              "| path | images/s | GFLOP/s | fraction of peak |", "|---|---|---|---|"]
    for path, rate in record["images_per_second"].items():
        lines.append(f"| {path.replace('_', ' ')} | {rate:.0f} | {rate * record['train_flops_per_image'] / 1e9:.2f} | "
                     f"{record['fraction_of_peak'][path]:.3f} |")
    return lines + variant_lines(record)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--env", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="batches per timed epoch / model-only run")
    parser.add_argument("--size", type=int, default=2048, help="matrix side of the peak measure")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch threads for the training paths (default: torch's)")
    parser.add_argument("--variants", action="store_true",
                        help="also time channels_last off, torch.compile, trained whitening and the other precision")
    parser.add_argument("--fp32", action="store_true",
                        help="the recipe in fp32 (compute.mixed_precision=false) even where bf16 is native")
    parser.add_argument("--note", default="", help="a line on the machine's state, shown in the results")
    parser.add_argument("--results", type=Path, default=None, help="folder for the results (benchmarks/results)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"compute": {"device": args.device, **({"mixed_precision": False} if args.fp32 else {})}}
    record = measure(args.dataset, args.env, overrides, args.steps, args.size)
    if args.variants:
        record["variants"] = variants(args.dataset, args.env, overrides, args.steps)
    record["note"] = args.note
    stem = f"hardware_peak_{record['device_type']}" + ("_fp32" if args.fp32 else "")
    write_record(record, markdown(record, args.note), stem, *([args.results] if args.results else []))


if __name__ == "__main__":
    main()
