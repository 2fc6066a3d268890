"""Training options that slot into the engine as callbacks, as Lightning's ``Callback`` and timm's
hooks do: ``fit`` calls the hooks, each option is one class here, and none edits ``fit``.

``train.ema`` (average of the weights: validated, kept and saved), ``train.mixup_alpha`` /
``train.cutmix_alpha`` (mixed images and targets), ``model.whiten`` (the first convolution
initialised from the training images' patch covariance), ``train.class_balance`` (balanced sampling or
inverse-frequency loss weights) and ``train.early_stopping`` (patience on the validation loss).
Each keeps its state in the checkpoint (``state_dict``), so a resumed run continues it exactly.
Under ``train.distributed`` every process runs the same hooks on its slice of the batch: the
averaged weights start from and follow identical weights (DistributedDataParallel), and are
shared from rank 0 before validation; mixing draws from one seeded generator per process; the
balanced order is drawn for the global batch, which each process slices as before.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .augment import normalize
from .config import TrainConfig
from .models import first_convolution

if TYPE_CHECKING:  # the engine imports this module
    from .engine import TrainStep
    from .loader import Loader

class Callback:
    """A hook into training; every method is optional. The engine calls them in this order:
    ``on_train_start`` (before a checkpoint's state is loaded), then per batch ``on_batch``
    (before the forward pass) and ``after_step`` (after the optimizer step), then per epoch
    ``eval_network`` (the network to validate and keep) and ``on_epoch_end`` (True: stop).
    Callbacks run by ``order``, lowest first (as fastai's): one that sets the weights runs before
    one that copies them."""

    order = 0

    def on_train_start(self, step: TrainStep, train: Loader) -> None:
        pass

    def on_batch(self, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        return images, targets

    def after_step(self, step: TrainStep) -> None:
        pass

    def eval_network(self, network: nn.Module) -> nn.Module:
        return network

    def on_epoch_end(self, row: dict) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Callbacks(Callback):
    """Several callbacks as one, in order; their state keyed by class name."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = sorted(callbacks, key=lambda callback: callback.order)  # stable: else as given

    def on_train_start(self, step: TrainStep, train: Loader) -> None:
        for callback in self.callbacks:
            callback.on_train_start(step, train)

    def on_batch(self, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        for callback in self.callbacks:
            images, targets = callback.on_batch(images, targets)
        return images, targets

    def after_step(self, step: TrainStep) -> None:
        for callback in self.callbacks:
            callback.after_step(step)

    def eval_network(self, network: nn.Module) -> nn.Module:
        for callback in self.callbacks:
            network = callback.eval_network(network)
        return network

    def on_epoch_end(self, row: dict) -> bool:
        return any([callback.on_epoch_end(row) for callback in self.callbacks])  # a list: every one sees the row

    def state_dict(self) -> dict:
        return {type(c).__name__: c.state_dict() for c in self.callbacks}

    def load_state_dict(self, state: dict) -> None:
        for callback in self.callbacks:
            callback.load_state_dict(state.get(type(callback).__name__, {}))


def callbacks_for(config: TrainConfig, extra: Sequence[Callback] = ()) -> Callbacks:
    """The callbacks ``config``'s options ask for (none by default: today's recipe), then ``extra``."""
    callbacks: list[Callback] = []
    if config.class_balance != "none":
        callbacks.append(ClassBalance(config.class_balance))
    if config.mixup_alpha or config.cutmix_alpha:
        callbacks.append(MixUp(config.mixup_alpha, config.cutmix_alpha, config.seed))
    if config.ema:
        callbacks.append(WeightAverage(config.ema))
    if config.early_stopping:
        callbacks.append(EarlyStopping(config.early_stopping))
    return Callbacks([*callbacks, *extra])


# --- model.whiten -------------------------------------------------------------------------------

WHITENING_IMAGES = 512  # training images whose patches estimate the covariance
WHITENING_EPS = 5e-4  # added to each eigenvalue (airbench's): the faintest directions are not blown up


class PatchWhitening(Callback):
    """airbench's patch-whitening first convolution: its filters are the eigenvectors of the
    covariance of the training images' patches (of its kernel size, normalised as the network
    sees them), largest first, each divided by ``sqrt(eigenvalue + eps)``, then the same negated
    (a ReLU keeps either sign); channels beyond those keep their initialisation. A resumed run
    loads the checkpoint's weights over these; ``model.whiten: frozen`` keeps them (``build_model``).
    Under ``train.distributed`` rank 0's filters are given to every process."""

    order = -1  # before train.ema copies the weights

    def on_train_start(self, step: TrainStep, train: Loader) -> None:
        whiten_first_convolution(step.network, train)


@torch.no_grad()
def whiten_first_convolution(network: nn.Module, train: Loader) -> None:
    """``model.whiten``'s initialisation of ``network`` from ``train``'s patches (``PatchWhitening``;
    the learning-rate range test starts from it too)."""
    conv = first_convolution(network)
    filters = whitening_filters(patch_covariance(train, conv.kernel_size), conv.out_channels)
    conv.weight[:len(filters)] = filters.view(-1, *conv.weight.shape[1:]).to(conv.weight)
    if dist.is_initialized():
        weight = conv.weight.contiguous()
        dist.broadcast(weight, src=0)
        conv.weight.copy_(weight)


def patch_covariance(train: Loader, kernel_size: tuple[int, int]) -> torch.Tensor:
    """The float64 covariance ``[D, D]`` of the ``kernel_size`` patches (``D`` = channels x
    kernel area, in the convolution's weight order) of up to ``WHITENING_IMAGES`` training
    images, evenly spaced over the subset (its first window when streamed), normalised."""
    images, _, _ = next(iter(train.images.chunks(None)))
    pick = torch.linspace(0, len(images) - 1, min(len(images), WHITENING_IMAGES)).long()
    mean, std = torch.tensor(train.mean, device=train.device), torch.tensor(train.std, device=train.device)
    second, first, count = 0.0, 0.0, 0
    for batch in images[pick.to(images.device)].split(64):  # bounded memory for large images
        patches = F.unfold(normalize(batch.to(train.device), mean, std), kernel_size)  # [N, D, positions]
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
        second, first, count = second + patches.T @ patches, first + patches.sum(0), count + len(patches)
    centre = first / count
    return second / count - torch.outer(centre, centre)


def whitening_filters(covariance: torch.Tensor, channels: int) -> torch.Tensor:
    """Up to ``channels`` filters ``[channels, D]`` whose responses to patches of ``covariance``
    are uncorrelated with unit variance: its eigenvectors scaled, largest eigenvalue first, then
    their negatives."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    scaled = (eigenvectors / (eigenvalues.clamp(min=0) + WHITENING_EPS).sqrt()).T.flip(0)
    return torch.cat([scaled, -scaled])[:channels].float()


# --- train.ema ----------------------------------------------------------------------------------


class WeightAverage(Callback):
    """An exponential moving average of the weights (and batch-norm statistics), updated after
    every step; validation, ``train.keep`` and the saved model use it. Early on the decay is
    ``(1 + n) / (10 + n)`` when lower (n: updates so far), so a short run is not dominated by
    the initial weights (as TensorFlow's and timm's averages do)."""

    def __init__(self, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.average: nn.Module | None = None

    def on_train_start(self, step: TrainStep, train: Loader) -> None:
        self.average = copy.deepcopy(step.network).eval().requires_grad_(False)

    @torch.no_grad()
    def after_step(self, step: TrainStep) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        raw = step.network.state_dict()
        for name, value in self.average.state_dict().items():
            if value.is_floating_point():
                value.lerp_(raw[name].to(value.dtype), 1 - decay)
            else:
                value.copy_(raw[name])  # counters (num_batches_tracked)

    def eval_network(self, network: nn.Module) -> nn.Module:
        if dist.is_initialized():  # batch-norm statistics differ per process: all take rank 0's
            for value in self.average.state_dict().values():
                dist.broadcast(value, src=0)
        return self.average

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.average.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.updates = state["updates"]
            self.average.load_state_dict(state["weights"])


# --- train.mixup_alpha, train.cutmix_alpha ------------------------------------------------------


@dataclass
class MixedLabels:
    """Targets of mixed images: a share ``weight`` of ``labels`` and the rest of ``others``."""

    labels: torch.Tensor
    others: torch.Tensor
    weight: float

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, part: slice) -> MixedLabels:
        return MixedLabels(self.labels[part], self.others[part], self.weight)

    def probabilities(self, classes: int) -> torch.Tensor:
        """``[N, classes]`` target probabilities (each row sums to 1)."""
        return (self.weight * F.one_hot(self.labels, classes).float()
                + (1 - self.weight) * F.one_hot(self.others, classes).float())


class MixUp(Callback):
    """mixup (images blended with a shuffled copy of the batch) and cutmix (a box of the shuffled
    copy pasted in), with Beta(alpha, alpha) shares; with both, each batch takes one at random.
    Draws come from this callback's own seeded generator, saved in the checkpoint."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, seed: int) -> None:
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.generator = torch.Generator().manual_seed(seed + 1)  # not the loader's draws

    def _uniform(self) -> float:
        return torch.rand((), generator=self.generator).item()

    def _beta(self, alpha: float) -> float:
        """A Beta(alpha, alpha) draw from uniforms (Johnk's method: torch's Beta takes no generator)."""
        while True:
            x, y = self._uniform() ** (1 / alpha), self._uniform() ** (1 / alpha)
            if 0 < x + y <= 1:
                return x / (x + y)

    def on_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, MixedLabels]:
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self._uniform() < 0.5)
        share = self._beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        order = torch.randperm(len(images), generator=self.generator).to(images.device)
        if use_cutmix:
            images, share = self._paste_box(images, order, share)
        else:
            images = share * images + (1 - share) * images[order]
        return images, MixedLabels(targets, targets[order], share)

    def _paste_box(self, images: torch.Tensor, order: torch.Tensor, share: float) -> tuple[torch.Tensor, float]:
        """A box of about ``1 - share`` of the area from the shuffled images; the share kept, exactly."""
        height, width = images.shape[-2:]
        cut = math.sqrt(1 - share)
        box_h, box_w = int(height * cut), int(width * cut)
        centre_y, centre_x = int(self._uniform() * height), int(self._uniform() * width)
        top, bottom = max(centre_y - box_h // 2, 0), min(centre_y + box_h // 2, height)
        left, right = max(centre_x - box_w // 2, 0), min(centre_x + box_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = images[order][..., top:bottom, left:right]
        return images, 1 - (bottom - top) * (right - left) / (height * width)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.generator.set_state(state["generator"])


# --- train.class_balance ------------------------------------------------------------------------


def inverse_frequency(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Loss weights ``N / (K * count)`` per class, K the classes present (as scikit-learn's
    "balanced"): 1 for every class of a balanced set, and 1 on average over the images; a
    class absent from ``labels`` weighs 0."""
    counts = torch.bincount(labels, minlength=classes).float()
    present = int((counts > 0).sum())
    return torch.where(counts > 0, len(labels) / (present * counts.clamp(min=1)), torch.zeros_like(counts))


class BalancedImages:
    """A training set whose epoch order draws every class equally often: each position's chance
    is inverse to its class's count (with replacement, as ``WeightedRandomSampler``), drawn
    within each chunk of images (the whole set in memory; a window when streamed)."""

    def __init__(self, images: Any, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def chunks(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for images, positions, order in self.images.chunks(generator):
            if generator is not None:
                labels = self.labels[positions]
                counts = torch.bincount(labels)
                order = torch.multinomial(1 / counts[labels].float(), len(order), replacement=True,
                                          generator=generator)
            yield images, positions, order


class ClassBalance(Callback):
    """``sampler``: the training loader draws classes evenly; ``loss``: the loss weighs each
    class by its inverse frequency in the training set."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_train_start(self, step: TrainStep, train: Loader) -> None:
        if self.how == "sampler":
            train.images = BalancedImages(train.images, train.labels)
        else:
            step.class_weights = inverse_frequency(train.labels, output_classes(step.network)).to(train.device)


def output_classes(network: nn.Module) -> int:
    """How many classes ``network`` outputs: its last linear layer's outputs."""
    return [m for m in network.modules() if isinstance(m, nn.Linear)][-1].out_features


# --- train.early_stopping -----------------------------------------------------------------------


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a lower validation loss."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.waited = patience, math.inf, 0

    def on_epoch_end(self, row: dict) -> bool:
        if math.isnan(row["val_loss"]):  # no validation images: nothing to judge on
            return False
        if row["val_loss"] < self.best:
            self.best, self.waited = row["val_loss"], 0
        else:
            self.waited += 1
        return self.waited >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.waited = state.get("best", math.inf), state.get("waited", 0)
