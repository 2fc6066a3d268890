"""Typed, validated views of one dataset's parameters (``conf/*/parameters_<dataset>.yml``).

Every setting, its unit and its default live here, in one place. Nodes receive the raw dicts
Kedro gives them and turn them into these dataclasses, so a typo or an impossible value fails
with the setting's full name before any work starts (see ``hooks.ValidateParametersHook``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

SOURCE_KINDS = ("local", "kaggle", "torchvision")
LAYOUTS = ("folders", "csv")
# Smallest input side each architecture accepts: the feature map must survive its poolings.
MODEL_MIN_SIZE = {"resnet9": 8, "resnet18": 32, "resnet34": 32}
SUBSETS = ("train", "val", "test", "predict")


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True)
class SourceConfig:
    """Where the images come from and how their folders map to (file, label, subset)."""

    kind: str = "local"  # local | kaggle | torchvision
    path: str | None = None  # folder on disk (kind=local)
    dataset: str | None = None  # Kaggle "owner/slug", or a torchvision dataset class name
    download_dir: str = "data/01_raw/downloads"  # where kaggle/torchvision downloads are kept
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

    def __post_init__(self) -> None:
        _check_choice(self, "kind", SOURCE_KINDS)
        _check_choice(self, "layout", LAYOUTS)
        if self.kind == "local" and not self.path:
            raise ConfigError("source.path is required when source.kind=local")
        if self.kind in ("kaggle", "torchvision") and not self.dataset:
            raise ConfigError(f"source.dataset is required when source.kind={self.kind}")
        if self.layout == "csv" and not self.train_csv:
            raise ConfigError("source.train_csv is required when source.layout=csv")


@dataclass(frozen=True)
class SplitConfig:
    """How labelled training images are divided, with ``torch.utils.data.random_split``."""

    val_fraction: float = 0.2  # share of the training images held out for validation
    test_fraction: float = 0.0  # share held out for testing when the source has no test set
    seed: int = 43  # generator seed: same seed, same split, on every machine

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"split.{name} must be in [0, 1), got {value}")
        if not 0 < self.val_fraction + self.test_fraction < 1:
            raise ConfigError(
                "split.val_fraction + split.test_fraction must be in (0, 1), got "
                f"{self.val_fraction + self.test_fraction}"
            )


@dataclass(frozen=True)
class ImageConfig:
    """The tensor every image becomes: size, channels and normalisation."""

    size: int = 32  # pixels; images are resized (squashed) to size x size once, in the cache
    channels: int = 3  # 3 = RGB, 1 = greyscale
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per channel, in [0, 1]
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    decode_workers: int | None = None  # processes decoding images; None = all cores

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"images.size must be positive, got {self.size}")
        _check_choice(self, "channels", (1, 3), prefix="images")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise ConfigError(
                    f"images.{name} needs one value per channel ({self.channels}), "
                    f"got {getattr(self, name)}"
                )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"images.std must be positive, got {self.std}")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build; everything needed to rebuild it travels in the model card."""

    name: str = "resnet9"  # resnet9 | resnet18 | resnet34 (torchvision)
    width: int = 64  # resnet9: channels of the first block (doubles three times)
    dropout: float = 0.2  # before the classifier
    pretrained: bool = False  # torchvision ImageNet weights (resnet18/34 only)

    def __post_init__(self) -> None:
        _check_choice(self, "name", tuple(MODEL_MIN_SIZE), prefix="model")
        if self.width < 1:
            raise ConfigError(f"model.width must be positive, got {self.width}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pretrained and self.name == "resnet9":
            raise ConfigError("model.pretrained=true needs a torchvision model (resnet18/resnet34)")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe. Learning rates are per step; the schedule is one-cycle."""

    epochs: int = 4
    batch_size: int = 128  # images per step
    optimizer: str = "adam"  # adam | sgd (Nesterov, momentum 0.9)
    max_lr: float = 0.01  # peak of the one-cycle schedule
    pct_start: float = 0.25  # share of steps spent warming up to max_lr
    weight_decay: float = 1e-4  # L2, coupled (torch.optim.Adam/SGD weight_decay)
    grad_clip: float | None = 0.1  # max absolute gradient value; None = no clipping
    label_smoothing: float = 0.0
    crop_padding: int = 4  # pixels of reflect padding for the random crop; 0 = no crop
    flip: bool = True  # random horizontal flip
    keep: str = "last"  # last | best_val_loss: which epoch's weights the run returns
    seed: int = 43  # weights init, batch order and augmentation
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    mixed_precision: bool = True  # bf16 autocast where the device runs bf16 natively (engine.has_fast_bf16); else fp32
    channels_last: bool = True  # NHWC memory format: faster convolutions on CUDA and on CPU
    compile: bool = False  # torch.compile the model (pays off on long GPU runs)
    checkpoint_path: str | None = None  # per-epoch checkpoint; a rerun resumes from it
    resume: bool = True  # False: ignore an existing checkpoint and start fresh
    deterministic: bool = False  # CUDA: deterministic kernels only (slower); CPU is already

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be a positive integer, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be positive, got {self.batch_size}")
        if self.max_lr <= 0:
            raise ConfigError(f"train.max_lr must be positive, got {self.max_lr}")
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"train.pct_start must be in (0, 1), got {self.pct_start}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be positive or null, got {self.grad_clip}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.crop_padding < 0:
            raise ConfigError(f"train.crop_padding must be >= 0, got {self.crop_padding}")
        _check_choice(self, "optimizer", ("adam", "sgd"), prefix="train")
        _check_choice(self, "keep", ("last", "best_val_loss"), prefix="train")
        _check_choice(self, "device", ("auto", "cpu", "cuda"), prefix="train")


@dataclass(frozen=True)
class EvaluateConfig:
    subset: str = "test"  # labelled subset the report is computed on (test, or val)
    gallery_size: int = 16  # most confident mistakes shown
    top_confused: int = 20  # confused class pairs listed and plotted
    tta_flip: bool = False  # average predictions with the horizontally flipped image

    def __post_init__(self) -> None:
        _check_choice(self, "subset", ("val", "test"), prefix="evaluate")


@dataclass(frozen=True)
class SubmissionConfig:
    subset: str = "test"  # images predicted for submission.csv (test or predict)
    id_from: str = "path"  # path (relative file path) | stem (file name without extension) | name
    id_column: str = "id"
    label_column: str = "label"
    label_format: str = "name"  # name | index
    template: str | None = None  # glob of a sample submission whose columns and row order to copy

    def __post_init__(self) -> None:
        _check_choice(self, "subset", ("val", "test", "predict"), prefix="submission")
        _check_choice(self, "id_from", ("path", "stem", "name"), prefix="submission")
        _check_choice(self, "label_format", ("name", "index"), prefix="submission")


@dataclass(frozen=True)
class DatasetConfig:
    """All settings of one dataset's pipeline, cross-checked."""

    source: SourceConfig
    split: SplitConfig
    images: ImageConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    submission: SubmissionConfig

    def __post_init__(self) -> None:
        min_size = MODEL_MIN_SIZE[self.model.name]
        if self.images.size < min_size:
            raise ConfigError(
                f"images.size={self.images.size} is too small for model.name={self.model.name}: "
                f"it needs at least {min_size} pixels"
            )


T = TypeVar("T")
_SECTION_CLASSES = {
    "source": SourceConfig,
    "split": SplitConfig,
    "images": ImageConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "submission": SubmissionConfig,
}


def parse(cls: type[T], params: dict[str, Any] | None, section: str) -> T:
    """Build ``cls`` from a parameter dict, rejecting unknown keys by name."""
    params = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]} is not a known setting (known: {sorted(known)})")
    try:
        return cls(**params)
    except TypeError as error:  # e.g. a list where a number belongs
        raise ConfigError(f"{section}: {error}") from None


def parse_dataset(params: dict[str, Any], name: str = "dataset") -> DatasetConfig:
    """Validate every section of one dataset's parameters; errors name ``<name>.<section>.<key>``."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(_SECTION_CLASSES))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not a known section (known: {sorted(_SECTION_CLASSES)})")
    try:
        sections = {key: parse(cls, params.get(key), key) for key, cls in _SECTION_CLASSES.items()}
        return DatasetConfig(**sections)
    except ConfigError as error:
        raise ConfigError(f"{name}.{error}") from None  # errors read "fruits.train.epochs ..."


def _check_choice(obj: Any, name: str, choices: tuple, prefix: str | None = None) -> None:
    value = getattr(obj, name)
    if value not in choices:
        section = prefix or type(obj).__name__.removesuffix("Config").lower()
        raise ConfigError(f"{section}.{name} must be one of {list(choices)}, got {value!r}")
