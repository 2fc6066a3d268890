"""The training engine: one training function for one device or many (torch.distributed).

``train(job)`` builds the network and its loaders from the image cache and calls ``fit``; the
train node calls it in-process, or in every process of a distributed job (``distributed.py``),
as nanoGPT's one script serves one GPU or many: each process trains on its slice of every
batch, gradients are averaged by DistributedDataParallel, and only rank 0 writes.

The data path stays on the training device (``loader.Loader``). After every epoch a
``CheckpointSaver`` writes the whole run state atomically, and a rerun resumes from it. Mixed
precision is bf16 autocast, which needs no gradient scaler.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import io
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .atomic import write_atomically
from .cache import ImageCache
from .collectives import rank_and_world, share_buffers, sync_batchnorm
from .config import ComputeConfig, ImageConfig, ModelConfig, TrainConfig
from .console import Progress, format_seconds
from .loader import Loader, memory_limit_bytes, subset_images
from .models import build_model, count_parameters
from .optimizers import build_optimizer
from .recipe import Callback, Callbacks, MixedLabels, PatchWhitening, callbacks_for
from .threads import ThreadPolicy

log = logging.getLogger(__name__)

# Settings that do not change what is learned: a checkpoint stays valid when only these differ.
RUN_ONLY_SETTINGS = ("resume", "compile", "deterministic")
CPU_WARNING_SECONDS = 1800  # a CPU run expected to take longer than this gets a warning
RECENT_STEPS = 20  # the progress bar's loss and accuracy are over this many recent batches
# An epoch whose mean train loss is not finite, or this many times the first step's loss (about
# ln(classes) at initialisation), has diverged: the run stops before saving anything.
DIVERGENCE_FACTOR = 1e3


class TrainingDiverged(RuntimeError):
    """The loss exploded or became NaN; the message names the setting to lower."""


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


class TrainStep:
    """One optimizer step on a ready batch: forward, backward, clip, step, schedule.

    ``fit`` runs it over epochs; ``benchmarks/train_throughput.py`` times the very same code.
    ``callbacks`` (``recipe.py``, from ``train``'s options) see each batch before the forward
    pass and the step after it; ``train.accumulate`` splits each batch into that many parts whose
    gradients add up to the whole batch's before the one optimizer step.
    """

    def __init__(self, network: nn.Module, config: TrainConfig, loader: Loader, total_steps: int,
                 callbacks: Callbacks | None = None) -> None:
        self.config, self.loader = config, loader
        self.callbacks = callbacks or Callbacks([])
        self.class_weights: torch.Tensor | None = None  # train.class_balance=loss sets them
        if dist.is_initialized() and config.distributed.sync_batchnorm:
            network = sync_batchnorm(network, loader.device)
        self.network = network.to(loader.device, memory_format=loader.memory_format)
        self.model: nn.Module = self.network
        if dist.is_initialized():
            device_ids = [loader.device] if loader.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.network, device_ids=device_ids)
        if config.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.network, config)
        # OneCycleLR divides by (pct_start * total_steps - 1): a warm-up of exactly one step
        # (e.g. 4 steps at 0.25) would crash it, so stretch that warm-up a hair past the step.
        pct_start = config.pct_start * (1.01 if config.pct_start * total_steps == 1 else 1)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(  # each group's peak: train.bn_bias_lr_scale
            self.optimizer, max_lr=[group["lr"] for group in self.optimizer.param_groups],
            total_steps=total_steps, pct_start=pct_start)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on a normalised batch; returns the (detached) loss and logits, without a host sync."""
        images, targets = self.callbacks.on_batch(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        # Parts of at least 2 images (batch norm); each part's mean loss weighs its share of the batch.
        parts = max(1, min(self.config.accumulate, len(images) // 2))
        bounds = torch.linspace(0, len(images), parts + 1).long().tolist()
        losses, outputs = [], []
        for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
            last = i == parts - 1  # DistributedDataParallel averages the gradients once, on the last part
            with (contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()):
                with self.loader.autocast():
                    logits = self.model(images[start:end])
                    loss = self.loss(logits.float(), targets[start:end]) * ((end - start) / len(images))
                loss.backward()
            losses.append(loss.detach())
            outputs.append(logits.detach())
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_value_(self.network.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.callbacks.after_step(self)
        return torch.stack(losses).sum(), torch.cat(outputs)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor | MixedLabels) -> torch.Tensor:
        """Cross-entropy with the recipe's label smoothing and class weights; mixed targets as
        probabilities."""
        if isinstance(targets, MixedLabels):
            targets = targets.probabilities(logits.shape[1])
        return F.cross_entropy(logits, targets, weight=self.class_weights, label_smoothing=self.config.label_smoothing)


@dataclass
class RunState:
    """Everything a run has done so far: what a checkpoint saves and a resumed run continues."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one row per epoch
    steps: list[dict] = field(default_factory=list)  # one row per optimizer step
    best_loss: float = math.inf
    best_epoch: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    stopped: bool = False  # train.early_stopping ended the run before train.epochs

    def record(self, row: dict, network: nn.Module, keep: str) -> None:
        """Add an epoch's row, and keep its weights when they are the best so far."""
        self.history.append(row)
        self.epoch = row["epoch"]
        if keep == "best_val_loss" and row["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch = row["val_loss"], row["epoch"]
            self.best_weights = cpu_copy(network.state_dict())

    def kept(self, network: nn.Module, keep: str) -> tuple[int, dict[str, torch.Tensor]]:
        """The epoch whose weights the run returns (``train.keep``), and those weights."""
        if keep == "best_val_loss" and self.best_weights is not None:
            return self.best_epoch, self.best_weights
        return self.epoch, cpu_copy(network.state_dict())


class CheckpointSaver:
    """The run state in one file, replaced after every epoch (as timm's ``CheckpointSaver``).

    The file is written whole to a temporary name, then renamed: a kill at any moment leaves
    the previous checkpoint intact. A checkpoint is used only by a run with the same
    ``fingerprint`` (settings and training data); under torch.distributed, rank 0 alone reads
    and writes it, and hands what it read to the other processes.
    """

    def __init__(self, path: Path | None, fingerprint: str, resume: bool = True) -> None:
        self.path, self.fingerprint, self.resume = (Path(path) if path else None), fingerprint, resume

    def save(self, step: TrainStep, generator: torch.Generator, state: RunState, config: TrainConfig) -> None:
        if self.path is None or rank_and_world()[0] != 0:
            return
        payload = {
            "fingerprint": self.fingerprint, "config": dataclasses.asdict(config),
            "model": step.network.state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(), "generator": generator.get_state(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "state": vars(state), "callbacks": step.callbacks.state_dict(),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)  # serialised first: a full disk then fails on a plain write
        write_atomically(self.path, buffer.getbuffer())

    def restore(self, step: TrainStep, generator: torch.Generator, config: TrainConfig) -> RunState:
        """The saved run state loaded into ``step`` and ``generator``; a fresh one when there is
        no usable checkpoint."""
        saved = self._read(config) if rank_and_world()[0] == 0 else None
        if dist.is_initialized():
            shared = [saved]
            dist.broadcast_object_list(shared, src=0)
            saved = shared[0]
        if saved is None:
            return RunState()
        step.network.load_state_dict(saved["model"])
        step.optimizer.load_state_dict(saved["optimizer"])
        step.scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        step.callbacks.load_state_dict(saved.get("callbacks", {}))
        torch.set_rng_state(saved["rng"]["torch"])
        if saved["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        state = RunState(**saved["state"])
        log.info("resuming from %s after epoch %d of %d", self.path, state.epoch, config.epochs)
        return state

    def _read(self, config: TrainConfig) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        if not self.resume:
            log.info("train.resume=false: ignoring checkpoint %s and training from scratch", self.path)
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)  # never executes code
        except Exception as error:  # noqa: BLE001 - a damaged checkpoint only costs a fresh start
            log.warning("checkpoint %s is unreadable (%s): training from scratch", self.path, error)
            return None
        if saved.get("fingerprint") != self.fingerprint:
            log.info("checkpoint %s was made with other settings or data (%s): training from scratch",
                     self.path, _changes(saved.get("config") or {}, config))
            return None
        return saved


def _changes(saved_config: dict, config: TrainConfig) -> str:
    """What differs between a checkpoint's train settings and ``config``, for the log."""
    changed = [f"train.{name} {saved_config.get(name)!r} -> {value!r}"
               for name, value in dataclasses.asdict(config).items()
               if name not in RUN_ONLY_SETTINGS and saved_config.get(name) != value]
    return ", ".join(changed) or "the training images, or the image or model settings, differ"


@dataclass
class TrainResult:
    weights: dict[str, torch.Tensor]  # the weights the run keeps (train.keep)
    kept_epoch: int
    history: pd.DataFrame  # one row per epoch
    steps: pd.DataFrame  # one row per optimizer step: learning rate and loss
    device: str
    precision: str
    world_size: int
    seconds: float  # training wall time, this run only
    threads: int | None = None  # CPU threads the last steps ran on (compute.threads)


def train_one_epoch(step: TrainStep, loader: Loader, epoch: int, state: RunState,
                    eta: EtaReport | None = None, threads: ThreadPolicy | None = None) -> dict:
    """One pass over ``loader``; returns the epoch's train loss and accuracy (all processes').
    ``threads`` times every step (``compute.threads: auto`` re-times the counts when it drifts)."""
    threads = threads or ThreadPolicy(None)
    step.network.train()
    loader.epoch = epoch  # train.flip=alternating: which images this epoch mirrors
    rank, world = rank_and_world()
    bar = Progress(len(loader), f"epoch {epoch}/{step.config.epochs}", unit="batch", enabled=rank == 0)
    losses, hits, seen = [], [], 0
    for images, labels in loader:
        state.steps.append({"step": len(state.steps) + 1, "epoch": epoch, "lr": step.scheduler.get_last_lr()[0]})
        loss, logits = threads.timed(step, images, labels)
        losses.append(loss)
        hits.append((logits.argmax(1) == labels).sum())
        seen += len(labels)
        bar.update()
        if len(losses) % RECENT_STEPS == 0 and rank == 0:  # the only host sync in the loop
            recent = slice(-RECENT_STEPS, None)
            bar.postfix(loss=f"{torch.stack(losses[recent]).mean().item():.3f}",
                        accuracy=f"{torch.stack(hits[recent]).sum().item() / (RECENT_STEPS * len(labels)):.3f}")
        if eta is not None:
            eta.step()
    bar.close()
    totals = torch.stack([torch.stack(losses).float().sum(), torch.stack(hits).sum().float(),
                          torch.tensor(float(seen), device=loss.device)])
    step_losses = torch.stack(losses).float()
    if world > 1:  # every process reports the same, global, figures
        dist.all_reduce(totals)
        dist.all_reduce(step_losses)
        step_losses /= world
    for row, value in zip(state.steps[-len(losses):], step_losses.cpu().tolist()):
        row["loss"] = value
    return {"train_loss": totals[0].item() / len(losses) / world, "train_accuracy": totals[1].item() / totals[2].item()}


class EtaReport:
    """Early in training, one line with the expected training time, and a warning when a CPU run
    would take hours (a GPU recipe on a laptop).

    It comes after ``after_steps`` steps, or sooner when waiting for the next step would take it
    past ``within_s`` seconds; a first step still running at ``within_s`` (a timer) is reported
    as a lower bound. Either way a user knows within ``within_s`` of the start.
    """

    def __init__(self, total_steps: int, device: torch.device, after_steps: int = 10,
                 within_s: float = 30.0) -> None:
        self.total, self.device, self.after = total_steps, device, min(after_steps, total_steps)
        self.within_s, self.done, self.started = within_s, 0, time.time()
        self.unreported = threading.Lock()  # held by the first report: the step's or the timer's
        self.timer = threading.Timer(within_s, self.overdue)
        self.timer.daemon = True
        self.timer.start()

    def step(self) -> None:
        self.done += 1
        per_step = (time.time() - self.started) / self.done
        if self.done >= self.after or per_step * (self.done + 1) > self.within_s:
            self.report(per_step)

    def overdue(self) -> None:
        """At ``within_s``, if not reported yet: the steps are slower than they looked, or the
        first one is still running (then each takes longer than the time so far)."""
        elapsed = time.time() - self.started
        self.report(elapsed / self.done if self.done else elapsed, lower_bound=not self.done)

    def report(self, per_step: float, lower_bound: bool = False) -> None:
        if not self.unreported.acquire(blocking=False):
            return
        self.close()
        seconds, about = per_step * self.total, "more than" if lower_bound else "about"
        log.info("%s %s of training for %d steps (%s per step)", about, format_seconds(seconds), self.total,
                 format_seconds(per_step))
        if self.device.type == "cpu" and seconds > CPU_WARNING_SECONDS:
            log.warning("training on the CPU will take %s %s with these settings, which are sized "
                        "for a GPU. `kedro run --env=cpu ...` trains a CPU-sized recipe in minutes.",
                        about, format_seconds(seconds))

    def close(self) -> None:
        self.timer.cancel()


def fit(network: nn.Module, train: Loader, val: Loader, config: TrainConfig,
        checkpoint: CheckpointSaver | None = None, threads: ThreadPolicy | None = None,
        callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``network`` with ``config``'s one-cycle recipe on ``train``, validating on ``val``
    after each epoch; resumes from ``checkpoint`` and saves to it every epoch; ``threads`` sets
    and times the CPU thread count of the steps; ``callbacks`` run after those
    ``config``'s options ask for (a hyperparameter search's pruner: it may raise to stop the run)."""
    started = time.time()
    rank, world = rank_and_world()
    train.generator = torch.Generator().manual_seed(config.seed)  # batch order and augmentation
    # Counted once the generator is set: a training loader drops a last batch too small for
    # batch norm, so the schedule ends exactly on the last step taken.
    total_steps = config.epochs * len(train)
    if total_steps == 0:
        raise ValueError(f"{len(train.labels)} training image(s) make no training batch: batch norm needs at "
                         f"least {2 * train.world_size} (2 per process); see the data report")
    step = TrainStep(network, config, train, total_steps, callbacks_for(config, callbacks))
    step.callbacks.on_train_start(step, train)
    checkpoint = checkpoint or CheckpointSaver(None, "")
    state = checkpoint.restore(step, train.generator, config)
    last_epoch = state.epoch if state.stopped else config.epochs  # a run stopped early stays stopped
    eta = EtaReport(total_steps - len(state.steps), train.device) if rank == 0 and state.epoch < last_epoch else None
    try:
        for epoch in range(state.epoch + 1, last_epoch + 1):
            epoch_started = time.time()
            row = {"epoch": epoch, **train_one_epoch(step, train, epoch, state, eta, threads)}
            share_buffers(step.network)
            evaluated = step.callbacks.eval_network(step.network)  # train.ema: the averaged weights
            row["val_loss"], row["val_accuracy"] = evaluate(evaluated, val)
            row.update(lr=state.steps[-1]["lr"], seconds=time.time() - epoch_started)
            stop_if_diverged(row, state.steps[0]["loss"], config, validated=len(val.labels) > 0)
            state.record(row, evaluated, config.keep)
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f (%.1f s)", epoch,
                     config.epochs, row["train_loss"], row["val_loss"], row["val_accuracy"], row["seconds"])
            state.stopped = step.callbacks.on_epoch_end(row) and epoch < config.epochs
            if state.stopped:
                log.info("train.early_stopping: no lower validation loss for %d epochs, stopping after epoch %d",
                         config.early_stopping, epoch)
            checkpoint.save(step, train.generator, state, config)
            if state.stopped:
                break
    finally:
        if eta is not None:
            eta.close()  # no estimate from a run that has stopped
    kept_epoch, weights = state.kept(step.callbacks.eval_network(step.network), config.keep)
    return TrainResult(weights, kept_epoch, pd.DataFrame(state.history), pd.DataFrame(state.steps),
                       str(train.device), train.precision, world, time.time() - started, torch.get_num_threads())


def stop_if_diverged(row: dict, first_loss: float, config: TrainConfig, validated: bool) -> None:
    """Raise ``TrainingDiverged`` when an epoch's mean train loss is not finite or has grown
    ``DIVERGENCE_FACTOR`` times the run's first step loss, or its validation loss is not finite:
    such weights are no model, and neither they nor a checkpoint of them may be saved. Checked
    once an epoch, on figures ``train_one_epoch`` syncs anyway: no extra sync per step."""
    train_loss, val_loss = row["train_loss"], row["val_loss"]
    if train_loss <= DIVERGENCE_FACTOR * first_loss and (math.isfinite(val_loss) or not validated):
        return  # (a NaN compares False: a NaN train loss or first loss does not return here)
    raise TrainingDiverged(
        f"training diverged in epoch {row['epoch']}: train loss {train_loss:.3g} (first step {first_loss:.3g}), "
        f"validation loss {val_loss:.3g}. Neither the model nor this epoch's checkpoint was saved: lower "
        f"train.max_lr (now {config.max_lr:g}) and run again")


@torch.no_grad()
def predict(model: nn.Module, loader: Loader, tta_flip: bool = False,
            threads: ThreadPolicy | None = None, tta_crops: bool = False) -> torch.Tensor:
    """Logits ``[N, classes]`` (float32, on the loader's device) for every image of ``loader``,
    in order, in eval mode; with ``tta_flip``, averaged with the mirrored image's; with
    ``tta_crops``, half the image's and a quarter each of the image shifted one pixel up-left
    and down-right (airbench's multi-crop); on ``threads``' CPU thread count (``auto``: chosen
    on the first batch, unless chosen before)."""
    was_training = model.training
    model = model.to(loader.device, memory_format=loader.memory_format).eval()
    threads = threads or ThreadPolicy(None)

    def view(images: torch.Tensor) -> torch.Tensor:
        logits = model(images).float()
        return (logits + model(images.flip(-1)).float()) / 2 if tta_flip else logits

    def forward(images: torch.Tensor) -> torch.Tensor:
        with loader.autocast():
            logits = view(images)
            if tta_crops:
                shifted = [shift(images, by) for by in (-1, 1)]
                logits = logits / 2 + (view(shifted[0]) + view(shifted[1])) / 4
        return logits

    outputs = []
    with threads:
        for images, _ in loader:
            if threads.auto and not threads.trials:
                threads.calibrate(functools.partial(forward, images))
            outputs.append(threads.timed(forward, images))
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, device=loader.device)


def shift(images: torch.Tensor, by: int) -> torch.Tensor:
    """``images`` moved ``by`` pixels down and right (up and left when negative), the edge
    reflected into the gap."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - by:1 - by + height, 1 - by:1 - by + width]


def evaluate(model: nn.Module, loader: Loader, tta_flip: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a labelled loader (NaN when it is empty)."""
    if len(loader.labels) == 0:
        return float("nan"), float("nan")
    logits = predict(model, loader, tta_flip)
    labels = loader.labels.to(logits.device)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies: channels_last weights would otherwise keep their NHWC strides,
    which safetensors refuses to save."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True) for k, v in state_dict.items()}


# --- the training job: what the train node runs, in one process or in each of many -------------


@dataclass
class TrainingJob:
    """Everything a training process needs; small to pickle (the cache travels as its folder)."""

    cache: ImageCache
    model: ModelConfig
    images: ImageConfig
    train: TrainConfig
    compute: ComputeConfig
    checkpoint_path: Path | None = None

    @property
    def fingerprint(self) -> str:
        """What determines the trained weights: settings and training data, not where they run."""
        settings = {k: v for k, v in dataclasses.asdict(self.train).items()
                    if k not in (*RUN_ONLY_SETTINGS, "distributed")}
        # Of the distributed settings, the number of processes (each one's batch-norm batch)
        # and batch-norm synchronisation change what is learned; where they run does not.
        key = (settings, dataclasses.asdict(self.model), dataclasses.asdict(self.images),
               self.cache.fingerprint, rank_and_world()[1], self.train.distributed.sync_batchnorm)
        return hashlib.sha256(repr(key).encode()).hexdigest()


def train(job: TrainingJob, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Build the network and loaders from ``job`` and fit: the same code in every process."""
    rank, world = rank_and_world()
    seed_everything(job.train.seed, job.train.deterministic)
    network = build_model(job.model, job.images.channels, len(job.cache.class_names))
    limit = memory_limit_bytes(job.images) / world  # processes on one machine share its memory
    norm = {"mean": job.images.mean, "std": job.images.std}
    train_loader = Loader.create(subset_images(job.cache, "train", limit), job.cache.labels("train"), **norm,
                                 batch_size=job.train.batch_size, compute=job.compute,
                                 crop_padding=job.train.crop_padding, flip=job.train.flip, rank=rank,
                                 world_size=world)
    val_loader = Loader.create(subset_images(job.cache, "val", limit), job.cache.labels("val"), **norm,
                               batch_size=job.train.batch_size, compute=job.compute)
    checkpoint = CheckpointSaver(job.checkpoint_path, job.fingerprint, job.train.resume)
    with ThreadPolicy.for_device(job.compute.threads, train_loader.device) as threads:
        if threads.auto and len(train_loader):
            threads.calibrate(probe_step(network, train_loader, job.train))
        if rank == 0:
            log.info("training %s (%s parameters) on %s%s, %s, %s: %d train / %d val images at %d px, "
                     "batch %d, %d epochs", job.model.name, f"{count_parameters(network):,}", train_loader.device,
                     f" x {world} processes" if world > 1 else "", train_loader.precision, threads.describe(),
                     len(train_loader.labels), len(val_loader.labels), job.images.size, job.train.batch_size,
                     job.train.epochs)
        whitening = [PatchWhitening()] if job.model.whiten else []  # the model's, not train's, option
        return fit(network, train_loader, val_loader, job.train, checkpoint, threads, [*whitening, *callbacks])


def probe_step(network: nn.Module, loader: Loader, config: TrainConfig):
    """A training step's forward and backward on a copy of ``network`` and of the random state:
    what ``compute.threads: auto`` times before training, without changing the run."""
    scratch = copy.deepcopy(network).to(loader.device, memory_format=loader.memory_format).train()
    images, labels = next(iter(loader))  # no generator yet: the first images, in order
    images, labels = images[:config.batch_size // loader.world_size], labels[:config.batch_size // loader.world_size]

    def probe() -> None:
        with torch.random.fork_rng(devices=[]), loader.autocast():
            loss = F.cross_entropy(scratch(images).float(), labels)
        scratch.zero_grad(set_to_none=True)
        loss.backward()
    return probe
