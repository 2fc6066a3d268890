"""The training engine: one function that trains on CUDA or CPU from uint8 tensor caches.

The whole data path stays on the training device: batches are gathered from the cached uint8
tensors, augmented and normalised there, with no per-sample Python and no per-step host sync
except an occasional progress-bar update. Each epoch ends with an atomic checkpoint, a plain
dict ``{model, optimizer, scheduler, epoch, config, ...}``, from which a rerun resumes. It holds
no gradient scaler: mixed precision is bf16 autocast, which needs none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import augment, normalize
from .config import ImageConfig, TrainConfig

log = logging.getLogger(__name__)

# Settings that do not change what is learned: a checkpoint stays valid when only these differ.
RUN_ONLY_SETTINGS = ("device", "checkpoint_path", "resume", "compile", "deterministic")


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]  # the weights the run keeps (train.keep)
    history: pd.DataFrame  # one row per epoch
    steps: pd.DataFrame  # one row per optimizer step: learning rate and loss
    device: str
    seconds: float  # training wall time, this process only


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available; use train.device=auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every generator; with ``deterministic``, also refuse non-deterministic CUDA kernels.

    CPU training is repeatable bit for bit as it is. On CUDA, cuDNN picks algorithms per run and
    some backward kernels use atomics, so results differ in the last bits unless deterministic
    algorithms are forced (at some cost in speed).
    """
    torch.manual_seed(seed)  # seeds the CPU and every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS for it
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def fingerprint(train_config: TrainConfig, image_config: ImageConfig, model_config: object,
                *tensors: torch.Tensor) -> str:
    """A hash of everything that determines training: settings and the training data itself."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in dataclasses.asdict(train_config).items() if k not in RUN_ONLY_SETTINGS}
    digest.update(repr((settings, dataclasses.asdict(image_config), dataclasses.asdict(model_config))).encode())
    for tensor in tensors:
        digest.update(repr((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


class TrainStep:
    """One optimizer step from a uint8 batch: augment, normalise, forward, backward, clip, step.

    ``fit`` runs it over epochs; ``benchmarks/train_throughput.py`` times the very same code.
    """

    def __init__(self, network: nn.Module, config: TrainConfig, image_config: ImageConfig,
                 device: torch.device, total_steps: int) -> None:
        self.config, self.device = config, device
        # NHWC: the layout cuDNN's and oneDNN's (CPU) fastest convolution kernels work in.
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.amp = config.mixed_precision and has_fast_bf16(device)  # bf16 needs no GradScaler
        self.network = network.to(device, memory_format=self.memory_format)
        self.model = torch.compile(self.network) if config.compile else self.network
        self.mean = torch.tensor(image_config.mean, device=device)
        self.std = torch.tensor(image_config.std, device=device)
        self.optimizer = _optimizer(self.network, config)
        # OneCycleLR divides by (pct_start * total_steps - 1): a warm-up of exactly one step
        # (e.g. 4 steps at 0.25) would crash it, so stretch that warm-up a hair past the step.
        pct_start = config.pct_start * (1.01 if config.pct_start * total_steps == 1 else 1)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.max_lr, total_steps=total_steps, pct_start=pct_start)

    def __call__(self, batch: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on uint8 ``batch``; returns the (detached) loss and logits, without a host sync."""
        images = augment(batch, self.config.crop_padding, self.config.flip, generator)
        return self.forward_backward(normalize(images, self.mean, self.std), labels)

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own work on a ready float batch: what a data path cannot make faster."""
        images = images.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_value_(self.network.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach()


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds ``device`` up: CUDA GPUs with bf16 (Ampere and later), and
    CPUs with bf16 instructions (AVX512-BF16 or AMX), where oneDNN runs ResNet9's train step 1.28x
    faster than in fp32 on a 2-core EPYC (benchmarks/results/train_throughput_cpu*.md). Other CPUs
    would only emulate bf16, slowly."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def epoch_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                  device: torch.device):
    """Shuffled ``(uint8 batch, labels)`` pairs on ``device``, gathered straight from the cache.

    A last batch of one image is dropped: batch norm cannot train on it.
    """
    order = torch.randperm(len(labels), generator=generator)  # drawn on the CPU: same order anywhere
    # The order goes to the cache's device once per epoch: a blocking copy per step would make the
    # host wait for the GPU to finish each step before it could queue the next one.
    image_order, label_order = order.to(images.device), order.to(labels.device)
    # A cache too large for the GPU stays in pinned host memory; a batch gathered from it is pinned
    # too, so that its copy to the GPU is truly asynchronous.
    pin = images.device.type == "cpu" and device.type == "cuda"
    for start in range(0, len(order), batch_size):
        if len(order) - start < 2 and start > 0:
            break
        batch = images[image_order[start:start + batch_size]]
        yield ((batch.pin_memory() if pin else batch).to(device, non_blocking=True),
               labels[label_order[start:start + batch_size]].to(device, non_blocking=True))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size + (n % batch_size >= 2))


def fit(network: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
        val_images: torch.Tensor, val_labels: torch.Tensor, config: TrainConfig,
        image_config: ImageConfig, run_fingerprint: str = "") -> TrainResult:
    """Train ``network`` with one-cycle ``config`` on uint8 ``[N, C, H, W]`` images."""
    started = time.time()
    device = resolve_device(config.device)
    train_images = _to_device(train_images, device)
    train_labels = train_labels.to(device)
    per_epoch = steps_per_epoch(len(train_labels), config.batch_size)
    step = TrainStep(network, config, image_config, device, total_steps=config.epochs * per_epoch)
    generator = torch.Generator().manual_seed(config.seed)  # batch order and augmentation
    state = {"epoch": 0, "history": [], "steps": [], "best_loss": float("inf"), "best_state": None}
    checkpoint = Path(config.checkpoint_path) if config.checkpoint_path else None
    if checkpoint is not None:
        _resume(checkpoint, config, run_fingerprint, step.network, step.optimizer, step.scheduler, generator, state)

    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        step.network.train()
        epoch_started = time.time()
        losses, correct, seen = [], torch.zeros((), device=device, dtype=torch.int64), 0
        batches = epoch_batches(train_images, train_labels, config.batch_size, generator, device)
        bar = tqdm(batches, total=per_epoch, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                   disable=not sys.stderr.isatty(), unit="batch")
        for batch, labels in bar:
            state["steps"].append({"step": len(state["steps"]) + 1, "epoch": epoch,
                                   "lr": step.scheduler.get_last_lr()[0]})
            loss, logits = step(batch, labels, generator)
            seen += len(labels)
            losses.append(loss)
            correct += (logits.argmax(1) == labels).sum()
            if len(losses) % 20 == 1 and not bar.disable:  # the only host sync in the loop
                bar.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{correct.item() / seen:.3f}")
        step_losses = torch.stack(losses).float().cpu().tolist()
        for row, value in zip(state["steps"][-len(step_losses):], step_losses):
            row["loss"] = value
        val_loss, val_accuracy = evaluate(step.model, val_images, val_labels, step.mean, step.std,
                                          config.batch_size, device, step.memory_format, step.amp)
        row = {"epoch": epoch, "train_loss": sum(step_losses) / len(step_losses),
               "train_accuracy": correct.item() / seen,
               "val_loss": val_loss, "val_accuracy": val_accuracy,
               "lr": state["steps"][-1]["lr"], "seconds": time.time() - epoch_started}
        state["history"].append(row)
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f (%.1f s)", epoch,
                 config.epochs, row["train_loss"], val_loss, val_accuracy, row["seconds"])
        if config.keep == "best_val_loss" and val_loss < state["best_loss"]:
            state["best_loss"] = val_loss
            state["best_state"] = _cpu_copy(step.network.state_dict())
        state["epoch"] = epoch
        if checkpoint is not None:
            _save_checkpoint(checkpoint, config, run_fingerprint, step.network, step.optimizer,
                             step.scheduler, generator, state)

    kept = state["best_state"] if config.keep == "best_val_loss" and state["best_state"] else step.network.state_dict()
    return TrainResult(_cpu_copy(kept), pd.DataFrame(state["history"]), pd.DataFrame(state["steps"]),
                       str(device), time.time() - started)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, batch_size: int, device: torch.device,
             memory_format: torch.memory_format = torch.contiguous_format,
             amp: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a labelled set (NaN when it is empty)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, images, mean, std, batch_size, device, memory_format, amp)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   batch_size: int, device: torch.device,
                   memory_format: torch.memory_format = torch.contiguous_format, amp: bool = False,
                   tta_flip: bool = False) -> torch.Tensor:
    """Logits ``[N, classes]`` (float32, on ``device``) for uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        batch = normalize(batch, mean.to(device), std.to(device)).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch).float()
            if tta_flip:  # average the image and its mirror
                logits = (logits + model(batch.flip(-1)).float()) / 2
        outputs.append(logits)
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, device=device)


def _optimizer(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(network.parameters(), lr=config.max_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(network.parameters(), lr=config.max_lr, momentum=0.9, nesterov=True,
                           weight_decay=config.weight_decay)


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep the uint8 cache on the GPU when it fits in half the free memory; else pin it."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() < free // 2:
        return images.to(device)
    log.info("image cache (%.1f GB) does not fit on %s: streaming from pinned memory",
             images.numel() / 1e9, device)
    return images.pin_memory()


def _cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies: channels_last weights would otherwise keep their NHWC strides,
    which safetensors refuses to save."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True) for k, v in state_dict.items()}


def _save_checkpoint(path: Path, config: TrainConfig, run_fingerprint: str, network: nn.Module,
                     optimizer, scheduler, generator: torch.Generator, state: dict) -> None:
    """Write the checkpoint next to ``path`` and rename it over ``path``: never half a file."""
    payload = {
        "model": network.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "epoch": state["epoch"],
        "config": dataclasses.asdict(config), "fingerprint": run_fingerprint,
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "history": state["history"], "steps": state["steps"],
        "best": {"loss": state["best_loss"], "state": state["best_state"]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def _changes(saved_config: dict, config: TrainConfig) -> str:
    """What differs between a checkpoint's train settings and ``config``, for the log."""
    changed = [f"train.{name} {saved_config.get(name)!r} -> {value!r}"
               for name, value in dataclasses.asdict(config).items()
               if name not in RUN_ONLY_SETTINGS and saved_config.get(name) != value]
    return ", ".join(changed) or "the training images, or the image or model settings, differ"


def _resume(path: Path, config: TrainConfig, run_fingerprint: str, network: nn.Module, optimizer,
            scheduler, generator: torch.Generator, state: dict) -> None:
    if not config.resume:
        if path.exists():
            log.info("train.resume=false: ignoring checkpoint %s and training from scratch", path)
        return
    if not path.exists():
        return
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # never executes code
    except Exception as error:  # noqa: BLE001 - a damaged checkpoint only costs a fresh start
        log.warning("checkpoint %s is unreadable (%s): training from scratch", path, error)
        return
    if saved.get("fingerprint") != run_fingerprint:
        log.info("checkpoint %s was made with other settings or data (%s): training from scratch",
                 path, _changes(saved.get("config") or {}, config))
        return
    network.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    generator.set_state(saved["rng"]["generator"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    state.update(epoch=saved["epoch"], history=saved["history"], steps=saved["steps"],
                 best_loss=saved["best"]["loss"], best_state=saved["best"]["state"])
    log.info("resuming from %s after epoch %d of %d", path, saved["epoch"], config.epochs)


