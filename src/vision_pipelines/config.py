"""Typed, validated views of one dataset's parameters (``conf/*/parameters_<dataset>.yml``).

Every setting, its unit and its default live here, in one place. Nodes declare their
parameters with these dataclasses and Kedro builds them (``kedro.validation``); before that,
``hooks.ValidateParametersHook`` parses each dataset's parameters whole with ``parse_dataset``,
so a typo, a wrong type or an impossible value stops the run with the setting's full name
(``fruits.train.epochs must be an integer, got 2.5``) before any node runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SOURCE_KINDS = ("local", "kaggle", "torchvision", "url")
LAYOUTS = ("folders", "csv")
# Smallest input side each architecture accepts: the feature map must survive its poolings.
MODEL_MIN_SIZE = {"resnet9": 8, "airbench": 9, "resnet18": 32, "resnet34": 32}
FLIP_MODES = ("random", "alternating", "none")  # train.flip; true and false are random and none
OWN_NETWORKS = ("resnet9", "airbench")  # built here: no pretrained weights; whitening and logit scale apply
SUBSETS = ("train", "val", "test", "predict")  # a manifest's subsets, besides "skipped"
HELD_OUT_SUBSETS = SUBSETS[1:]  # not trained on: predicted, and submitted from
# A Kedro version: the timestamp of the run that saved it (kedro.io.core.VERSION_FORMAT, to the ms).
VERSION_PATTERN = r"\d{4}-\d\d-\d\dT\d\d\.\d\d\.\d\d\.\d{3}Z"
MODEL_VERSIONS = ("latest", "best", "champion")  # or one version; champion: the MLflow registry alias (serving.py)
# Seeds become numpy and torch generator seeds, which take a signed 64-bit integer.
SEED_LIMIT = 2**63


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range; the message names it."""


class Settings:
    """Base of every settings section: checks each field's type, then the section's own rules.

    Ints stay ints (``2.5`` epochs is refused, not truncated), a float setting accepts an int,
    and a nested section given as a dict (from YAML) is built into its dataclass.
    """

    section = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _checked(getattr(self, f.name), hints[f.name], f"{self.section}.{f.name}")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Rules beyond types (ranges, choices); subclasses raise ``ConfigError``."""

    def __str__(self) -> str:  # what experiment trackers log: the settings, not the class
        return json.dumps(dataclasses.asdict(self), default=str)


def _checked(value: Any, hint: Any, name: str) -> Any:
    """``value`` if it has type ``hint`` (converted where lossless), else a ``ConfigError``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        for hint in candidates[1:]:  # several types (train.max_lr: a rate or "auto"): the first that fits
            try:
                return _checked(value, hint, name)
            except ConfigError:
                pass
        return _checked(value, candidates[0], name)  # none fits: the error names the main type
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return parse(hint, value, name)
        raise ConfigError(f"{name} must be a mapping of settings, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_checked(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 3.0 epochs is 3 epochs
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, hint)
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value


def _check_choice(obj: Settings, name: str, choices: tuple) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{obj.section}.{name} must be one of {list(choices)}, got {value!r}")


def _check_range(obj: Settings, name: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = True) -> None:
    """``low <= value < high`` (or with open/closed ends as given); None leaves an end unbounded."""
    value = getattr(obj, name)
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if high is None and low == 0:
        wanted = "positive" if low_open else ">= 0"
    elif high is None:
        wanted = "a positive integer" if (low, low_open) == (1, False) else f"{'>' if low_open else '>='} {low}"
    else:
        wanted = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ConfigError(f"{obj.section}.{name} must be {wanted}, got {value}")


def _check_seed(obj: Settings) -> None:
    if not 0 <= obj.seed < SEED_LIMIT:
        raise ConfigError(f"{obj.section}.seed must be in [0, 2**63), got {obj.seed}")


@dataclass(frozen=True)
class SourceConfig(Settings):
    """Where the images come from and how their folders map to (file, label, subset)."""

    section = "source"
    kind: str = "local"  # local | kaggle | torchvision | url
    path: str | None = None  # folder on disk (kind=local); relative to where kedro runs
    dataset: str | None = None  # Kaggle "owner/slug", or a torchvision dataset class name
    url: str | None = None  # kind=url: a Kaggle dataset/competition URL, a Google Drive link or an archive URL
    layout: str = "folders"  # folders | csv
    # layout=folders: folder names located anywhere up to 3 levels below the root
    train_dir: str | None = None  # labelled class folders; None: the root holds the class folders
    test_dir: str | None = None  # labelled class folders kept for testing
    predict_dir: str | None = None  # unlabelled images to predict (e.g. Intel's seg_pred)
    # layout=csv: globs relative to the root
    train_csv: str | None = None
    test_csv: str | None = None
    image_dir: str = "{csv_stem}"  # image folder beside each CSV; {csv_stem} = "train"/"test"
    id_column: str = "id"
    label_column: str = "label"
    image_extension: str = ".png"
    class_names: list[str] | None = None  # names of integer labels 0..K-1, in order
    timeout_s: float = 60.0  # a download that receives nothing for this long fails
    min_bytes_per_s: float = 1024.0  # an archive URL receiving less than this, on average over timeout_s, fails
    max_expansion: float = 100.0  # an archive expanding to more than this many times its size is refused

    def validate(self) -> None:
        _check_choice(self, "kind", SOURCE_KINDS)
        _check_choice(self, "layout", LAYOUTS)
        required = {"local": "path", "kaggle": "dataset", "torchvision": "dataset", "url": "url"}[self.kind]
        if not getattr(self, required):
            raise ConfigError(f"source.{required} is required when source.kind={self.kind}")
        if self.layout == "csv" and not self.train_csv:
            raise ConfigError("source.train_csv is required when source.layout=csv")
        _check_range(self, "timeout_s", 0, low_open=True, high=None)
        _check_range(self, "min_bytes_per_s", 0, high=None)
        _check_range(self, "max_expansion", 0, low_open=True, high=None)


@dataclass(frozen=True)
class SplitConfig(Settings):
    """How labelled training images are divided, with ``torch.utils.data.random_split``."""

    section = "split"
    val_fraction: float = 0.2  # share of the training images held out for validation
    test_fraction: float = 0.0  # share held out for testing when the source has no test set
    seed: int = 43  # generator seed: same seed, same split, on every machine
    min_train_per_class: int = 5  # fewer training images than this: flagged in the data report

    def validate(self) -> None:
        _check_range(self, "val_fraction", 0, 1)
        _check_range(self, "test_fraction", 0, 1)
        if not 0 < self.val_fraction + self.test_fraction < 1:
            raise ConfigError("split.val_fraction + split.test_fraction must be in (0, 1), got "
                              f"{self.val_fraction + self.test_fraction}")
        _check_range(self, "min_train_per_class", 1, high=None)
        _check_seed(self)


@dataclass(frozen=True)
class ImageConfig(Settings):
    """The tensor every image becomes: size, channels and normalisation; and its cache."""

    section = "images"
    size: int = 32  # pixels; images are resized (squashed) to size x size once, in the cache
    channels: int = 3  # 3 = RGB, 1 = greyscale
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per channel, in [0, 1]
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    decode_workers: int | None = None  # processes decoding images; None = all cores
    shard_mb: float = 256.0  # the cache is written in shards of about this many megabytes
    # A training set larger than this is streamed from the cache's shards rather than held in
    # memory (GB; None = half the memory available when training starts).
    max_memory_gb: float | None = None

    def validate(self) -> None:
        _check_range(self, "size", 1, high=None)
        _check_choice(self, "channels", (1, 3))
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise ConfigError(f"images.{name} needs one value per channel ({self.channels}), "
                                  f"got {getattr(self, name)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"images.std must be positive, got {self.std}")
        _check_range(self, "decode_workers", 1, high=None)
        _check_range(self, "shard_mb", 0, low_open=True, high=None)
        _check_range(self, "max_memory_gb", 0, low_open=True, high=None)


@dataclass(frozen=True)
class ModelConfig(Settings):
    """Which network to build; everything needed to rebuild it travels in the model card."""

    section = "model"
    name: str = "resnet9"  # resnet9 | airbench (KellerJordan/cifar10-airbench's) | resnet18 | resnet34 (torchvision)
    # resnet9: channels of the first block (doubles three times); airbench: of its first group (the others 4x)
    width: int = 64
    dropout: float = 0.2  # before the classifier
    pretrained: bool = False  # torchvision ImageNet weights (resnet18/34 only)
    # resnet9, airbench: the logits are multiplied by this; 0.125 (the speedruns' ResNet9) lets
    # train.optimizer=sgd train at a large max_lr, 1 keeps the tutorials' network
    logit_scale: float = 1.0
    # resnet9, airbench: the first convolution initialised to whiten the training images' patches (airbench);
    # frozen: and kept so (not trained)
    whiten: bool | str = False

    def validate(self) -> None:
        _check_choice(self, "name", tuple(MODEL_MIN_SIZE))
        _check_choice(self, "whiten", (True, False, "frozen"))
        if self.whiten and self.name not in OWN_NETWORKS:
            raise ConfigError(f"model.whiten={self.whiten} applies to resnet9 and airbench, whose first layer is a "
                              f"plain convolution learned from scratch; set it to false for {self.name}")
        _check_range(self, "width", 1, high=None)
        _check_range(self, "dropout", 0, 1)
        _check_range(self, "logit_scale", 0, low_open=True, high=None)
        if self.logit_scale != 1.0 and self.name not in OWN_NETWORKS:
            raise ConfigError(f"model.logit_scale={self.logit_scale} applies to resnet9 and airbench only; "
                              f"set it to 1 for {self.name}")
        if self.pretrained and self.name in OWN_NETWORKS:
            raise ConfigError("model.pretrained=true needs a torchvision model (resnet18/resnet34)")


@dataclass(frozen=True)
class ComputeConfig(Settings):
    """Where and in which precision every stage that runs the network (train, evaluate, predict,
    export checks) runs."""

    section = "compute"
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    mixed_precision: bool = True  # bf16 autocast where the device runs bf16 natively; else fp32
    channels_last: bool = True  # NHWC memory format: faster convolutions on CUDA and on CPU
    # CPU threads per process: N, or auto (timed at the start and when the load changes; for
    # busy machines); None keeps torch's count, so that CPU runs repeat bit for bit
    threads: int | str | None = None

    def validate(self) -> None:
        _check_choice(self, "device", ("auto", "cpu", "cuda"))
        if self.threads is not None and self.threads != "auto" and not (
                isinstance(self.threads, int) and self.threads >= 1):
            raise ConfigError(f"compute.threads must be auto or a positive number of threads, got {self.threads!r}")


@dataclass(frozen=True)
class DistributedConfig(Settings):
    """Data-parallel training with torch.distributed; one process per device.

    ``nproc_per_node * nnodes`` processes train together, each on its slice of every global
    batch (``train.batch_size`` stays the global batch). Off (1 x 1) by default.
    """

    section = "train.distributed"
    nproc_per_node: int = 1  # processes (devices) on this machine
    nnodes: int = 1  # machines; each runs the same `kedro run ... --tags=train`
    rdzv_endpoint: str | None = None  # host:port every machine reaches; None = this machine, a free port
    rdzv_id: str = "vision-pipelines"  # names the job at the rendezvous
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    sync_batchnorm: bool = False  # batch-norm statistics over the global batch
    timeout_s: int = 300  # a collective or rendezvous that waits longer fails the run

    @property
    def enabled(self) -> bool:
        return self.nproc_per_node * self.nnodes > 1

    def validate(self) -> None:
        _check_range(self, "nproc_per_node", 1, high=None)
        _check_range(self, "nnodes", 1, high=None)
        _check_choice(self, "backend", ("auto", "nccl", "gloo"))
        _check_range(self, "timeout_s", 1, high=None)
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("train.distributed.rdzv_endpoint (host:port) is required when "
                              "train.distributed.nnodes > 1")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """The optimisation recipe. Learning rates are per step; the schedule is one-cycle."""

    section = "train"
    epochs: int = 4
    batch_size: int = 128  # images per optimizer step (the global batch under distributed)
    optimizer: str = "adam"  # adam | sgd (Nesterov, momentum 0.9) | muon (filters orthogonalised, the rest sgd)
    max_lr: float | str = 0.01  # peak of the one-cycle schedule; auto: the lr_find suggestion (docs/tuning.md)
    pct_start: float = 0.25  # share of steps spent warming up to max_lr
    weight_decay: float = 1e-4  # L2, coupled (torch.optim.Adam/SGD weight_decay)
    grad_clip: float | None = 0.1  # max absolute gradient value; None = no clipping
    label_smoothing: float = 0.0
    crop_padding: int = 4  # pixels of reflect padding for the random crop; 0 = no crop
    # horizontal flip: random (or true: a coin per draw) | alternating (each image mirrored every
    # other epoch, from a seeded coin per image: airbench) | none (or false)
    flip: bool | str = True
    keep: str = "last"  # last | best_val_loss: which epoch's weights the run returns
    seed: int = 43  # weights init, batch order and augmentation
    compile: bool = False  # torch.compile the model (pays off on long GPU runs)
    resume: bool = True  # False: ignore an existing checkpoint and start fresh
    deterministic: bool = False  # CUDA: deterministic kernels only (slower); CPU is already
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    ema: float = 0.0  # decay of an average of the weights, validated, kept and saved; 0 = off
    mixup_alpha: float = 0.0  # mixup: Beta(alpha, alpha) blend of shuffled images and targets; 0 = off
    cutmix_alpha: float = 0.0  # cutmix: a box of a shuffled image pasted in; with mixup, one per batch; 0 = off
    class_balance: str = "none"  # none | sampler (classes drawn evenly) | loss (inverse-frequency weights)
    accumulate: int = 1  # each batch in this many parts, gradients summed before the one step (less memory)
    early_stopping: int = 0  # stop after this many epochs without a lower validation loss; 0 = off
    bn_bias_lr_scale: float = 1.0  # batch-norm biases train at this multiple of the lr (airbench: 64), decay / it
    muon_lr: float = 0.014  # optimizer muon: peak step of the convolution filters, relative to their norm

    def validate(self) -> None:
        _check_range(self, "epochs", 1, high=None)
        _check_range(self, "batch_size", 1, high=None)
        if self.max_lr != "auto":
            if isinstance(self.max_lr, str):
                raise ConfigError(f"train.max_lr must be a positive number or auto, got {self.max_lr!r}")
            _check_range(self, "max_lr", 0, low_open=True, high=None)
        _check_range(self, "pct_start", 0, 1, low_open=True)
        _check_range(self, "weight_decay", 0, high=None)
        _check_range(self, "grad_clip", 0, low_open=True, high=None)
        _check_range(self, "label_smoothing", 0, 1)
        _check_range(self, "crop_padding", 0, high=None)
        _check_choice(self, "flip", (True, False, *FLIP_MODES))
        _check_choice(self, "optimizer", ("adam", "sgd", "muon"))
        _check_choice(self, "keep", ("last", "best_val_loss"))
        _check_seed(self)
        _check_range(self, "ema", 0, 1)
        _check_range(self, "mixup_alpha", 0, high=None)
        _check_range(self, "cutmix_alpha", 0, high=None)
        _check_choice(self, "class_balance", ("none", "sampler", "loss"))
        _check_range(self, "accumulate", 1, high=None)
        _check_range(self, "early_stopping", 0, high=None)
        _check_range(self, "bn_bias_lr_scale", 0, low_open=True, high=None)
        _check_range(self, "muon_lr", 0, low_open=True, high=None)
        world = self.distributed.nproc_per_node * self.distributed.nnodes
        if self.batch_size % world:
            raise ConfigError(f"train.batch_size={self.batch_size} must be a multiple of the "
                              f"{world} distributed processes (each trains on an equal slice)")


@dataclass(frozen=True)
class EvaluateConfig(Settings):
    section = "evaluate"
    subset: str = "test"  # labelled subset the report is computed on (test, or val)
    gallery_size: int = 16  # most confident mistakes shown
    top_confused: int = 20  # confused class pairs listed and plotted
    tta_flip: bool = False  # average predictions with the horizontally flipped image
    batch_size: int = 256  # images per forward pass
    tta_crops: bool = False  # also average with the image shifted one pixel each diagonal way (airbench)

    def validate(self) -> None:
        _check_choice(self, "subset", ("val", "test"))
        _check_range(self, "gallery_size", 0, high=None)
        _check_range(self, "top_confused", 0, high=None)
        _check_range(self, "batch_size", 1, high=None)


@dataclass(frozen=True)
class SubmissionConfig(Settings):
    section = "submission"
    subset: str = "test"  # images predicted for submission.csv (test or predict)
    id_from: str = "path"  # path (relative to the subset's folder) | stem (name without extension) | name
    id_column: str = "id"
    label_column: str = "label"
    label_format: str = "name"  # name | index
    template: str | None = None  # glob of a sample submission whose columns and row order to copy

    def validate(self) -> None:
        _check_choice(self, "subset", HELD_OUT_SUBSETS)
        _check_choice(self, "id_from", ("path", "stem", "name"))
        _check_choice(self, "label_format", ("name", "index"))


@dataclass(frozen=True)
class PredictConfig(Settings):
    """``kedro run --pipelines=<dataset>_predict``: classify new images with the trained model."""

    section = "predict"
    input: str | None = None  # a folder of images (searched recursively) or one image
    top_k: int = 3  # most likely classes listed per image
    tta_flip: bool = False  # average with the mirrored image
    batch_size: int = 256
    grid_size: int = 32  # images shown in the predictions grid

    def validate(self) -> None:
        _check_range(self, "top_k", 1, high=None)
        _check_range(self, "batch_size", 1, high=None)
        _check_range(self, "grid_size", 0, high=None)


LR_FIND_RULES = ("valley", "minimum", "steepest")  # lr_finder's suggestion rules


@dataclass(frozen=True)
class LRFindConfig(Settings):
    """``kedro run --pipelines=<dataset>_lr_find`` (and ``train.max_lr: auto``): the learning-rate
    range test, with the dataset's model, optimizer, augmentation and batch size."""

    section = "lr_find"
    start: float = 1e-7  # first learning rate
    end: float = 10.0  # last learning rate; the rate grows exponentially in between
    steps: int = 100  # at most; fewer when a training run (train.epochs) has fewer batches, not under 20
    rule: str = "valley"  # the suggestion train.max_lr=auto uses: valley | minimum | steepest

    def validate(self) -> None:
        _check_range(self, "start", 0, low_open=True, high=None)
        if self.end <= self.start:
            raise ConfigError(f"lr_find.end must be greater than lr_find.start ({self.start:g}), got {self.end:g}")
        _check_range(self, "steps", 10, high=None)
        _check_choice(self, "rule", LR_FIND_RULES)


@dataclass(frozen=True)
class CVConfig(Settings):
    """``kedro run --pipelines=<dataset>_cv``: stratified k-fold cross-validation of the training
    and validation images, and the ensemble of the k models. The number of fold trainings in the
    pipeline is read from conf/base/parameters_<dataset>.yml when the pipelines are registered."""

    section = "cv"
    folds: int = 5
    seed: int = 43  # same seed, same folds

    def validate(self) -> None:
        _check_range(self, "folds", 2, high=None)
        _check_seed(self)


TUNE_OBJECTIVES = ("val_accuracy", "val_loss")


@dataclass(frozen=True)
class TuneConfig(Settings):
    """``kedro run --pipelines=<dataset>_tune``: an Optuna search over ``space``, kept in a SQLite
    study that a rerun continues (docs/tuning.md)."""

    section = "tune"
    # "<section>.<setting>": {low, high, log} (numbers) or {choices: [...]}, e.g.
    # {train.max_lr: {low: 1.0e-3, high: 1.0e-1, log: true}, model.width: {choices: [16, 32]}}
    space: dict = field(default_factory=dict)
    trials: int = 20  # in all: a rerun runs the trials the study still lacks
    timeout_s: float | None = None  # stop starting trials after this long (this run)
    objective: str = "val_accuracy"  # val_accuracy (maximised) | val_loss (minimised), per epoch
    study: str = "search"  # the study's name: a new name starts a new search
    seed: int = 43  # the sampler's

    def validate(self) -> None:
        _check_range(self, "trials", 1, high=None)
        _check_range(self, "timeout_s", 0, low_open=True, high=None)
        _check_choice(self, "objective", TUNE_OBJECTIVES)
        _check_seed(self)
        for name, spec in self.space.items():
            check_search_dimension(name, spec)


def check_search_dimension(name: str, spec: Any) -> None:
    """``tune.space.<name>`` names a number or choice setting and a possible range of it."""
    where = f"tune.space.{name}"
    section, _, setting = str(name).partition(".")
    sections = {k: v for k, v in SECTIONS.items() if k in ("model", "train")}  # the rest needs a new cache
    fields = {f.name: f for f in dataclasses.fields(sections[section])} if section in sections else {}
    if setting not in fields or dataclasses.is_dataclass(typing.get_type_hints(sections[section])[setting]):
        raise ConfigError(f"{where}: no such setting to search (it must be one of {sorted(sections)}'s settings, "
                          "e.g. train.max_lr)")
    if not isinstance(spec, dict) or not ({"choices"} == set(spec) or {"low", "high"} <= set(spec) <= {
            "low", "high", "log", "step"}):
        raise ConfigError(f"{where} must be {{low, high}} (with log or step) or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}.choices must be a non-empty list, got {spec['choices']!r}")
        values = spec["choices"]
    else:
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            raise ConfigError(f"{where}: low ({low!r}) must be a number below high ({high!r})")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: log=true needs low > 0, got {low!r}")
        values = [low, high]
    for value in values:  # every end or choice must be a valid value of the setting itself
        try:
            parse(sections[section], {setting: value})
        except ConfigError as error:
            raise ConfigError(f"{where}: {value!r} is no possible value ({error})") from None


@dataclass(frozen=True)
class DatasetConfig:
    """All settings of one dataset's pipeline, cross-checked."""

    source: SourceConfig
    split: SplitConfig
    images: ImageConfig
    model: ModelConfig
    compute: ComputeConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    submission: SubmissionConfig
    predict: PredictConfig
    # the model <dataset>_predict, <dataset>_export and the notebook use: latest | best | <version>
    model_version: str = "latest"
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model_version, str) or not (
                self.model_version in MODEL_VERSIONS or re.fullmatch(VERSION_PATTERN, self.model_version)):
            raise ConfigError(f"model_version must be latest, best or a version such as 2026-11-23T10.19.01.357Z "
                              f"(the name of a folder in data/06_models/<dataset>/model_card.json/), or champion "
                              f"(the MLflow registry's alias), "
                              f"got {self.model_version!r}")
        min_size = MODEL_MIN_SIZE[self.model.name]
        if self.images.size < min_size:
            raise ConfigError(f"images.size={self.images.size} is too small for model.name="
                              f"{self.model.name}: it needs at least {min_size} pixels")


SECTIONS: dict[str, type[Settings]] = {name: hint for name, hint in typing.get_type_hints(DatasetConfig).items()
                                       if isinstance(hint, type) and issubclass(hint, Settings)}


def parse(cls: type, params: dict[str, Any] | None, section: str | None = None):
    """Build ``cls`` from a parameter dict, rejecting unknown keys by name."""
    section = section or cls.section
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{section} must be a mapping of settings, got {params!r}")
    params = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]} is not a known setting (known: {sorted(known)})")
    return cls(**params)


def parse_dataset(params: dict[str, Any], name: str = "dataset") -> DatasetConfig:
    """Validate every section of one dataset's parameters; errors name ``<name>.<section>.<key>``."""
    if not isinstance(params, dict):
        raise ConfigError(f"{name} must be a mapping of settings sections, got {params!r}")
    unknown = sorted(set(params) - set(SECTIONS) - {"model_version"})
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not a known section (known: {sorted(SECTIONS)}, "
                          "and the setting model_version)")
    try:
        return DatasetConfig(**{key: parse(cls, params.get(key)) for key, cls in SECTIONS.items()},
                             model_version=params.get("model_version", "latest"))
    except ConfigError as error:
        raise ConfigError(f"{name}.{error}") from None  # errors read "fruits.train.epochs ..."
