"""Training options as callbacks (src/vision_pipelines/recipe.py) and the engine's seam for them:
the average of the weights is what a run validates and returns, mixed images and targets, the
balanced sampler and loss weights, gradient accumulation, early stopping, the patch-whitening first
convolution; each resumes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision_pipelines import engine, recipe
from vision_pipelines.config import ComputeConfig, ConfigError, ModelConfig, TrainConfig
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.models import ResNet9, build_model

IMAGES = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(16) % 4
CPU = ComputeConfig(device="cpu", mixed_precision=False)
TINY = ModelConfig(width=4)


def loader(images: torch.Tensor = IMAGES, labels: torch.Tensor = LABELS, batch_size: int = 8) -> Loader:
    return Loader.create(MemoryImages(images), labels, [0.5] * 3, [0.5] * 3, batch_size, CPU)


def fit(config: TrainConfig, checkpoint: Path | None = None, model: ModelConfig = TINY) -> engine.TrainResult:
    engine.seed_everything(0)
    saver = engine.CheckpointSaver(checkpoint, "same settings") if checkpoint else None
    whitening = [recipe.PatchWhitening()] if model.whiten else []  # as engine.train adds it
    return engine.fit(build_model(model, 3, 4), loader(), loader(IMAGES[:8], LABELS[:8]), config, saver,
                      callbacks=whitening)


def test_the_weight_average_is_validated_returned_and_resumed(tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=8, ema=0.9)
    result = fit(config, tmp_path / "checkpoint.pt")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    average, raw = saved["callbacks"]["WeightAverage"]["weights"], saved["model"]
    assert all(torch.equal(result.weights[k], average[k]) for k in raw)
    assert not all(torch.equal(average[k], raw[k]) for k in raw if raw[k].is_floating_point())
    finished = fit(config, tmp_path / "checkpoint.pt")  # a rerun returns the saved average, not the raw weights
    assert len(finished.history) == 2 and all(torch.equal(finished.weights[k], average[k]) for k in raw)


def test_mixup_blends_each_image_with_another_of_the_batch_and_their_targets() -> None:
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 4, 4)  # image i is all i: its partner shows
    mixed, targets = recipe.MixUp(1.0, 0.0, seed=0).on_batch(images, torch.arange(8))
    share = targets.weight
    partners = ((mixed[:, 0, 0, 0] - share * torch.arange(8.0)) / (1 - share)).round().long()
    assert sorted(partners.tolist()) == list(range(8)) and torch.equal(partners, targets.others)
    probabilities = targets.probabilities(8)
    assert torch.allclose(probabilities.sum(1), torch.ones(8))
    assert torch.allclose(probabilities[torch.arange(8), torch.arange(8)],
                          torch.where(partners == torch.arange(8), 1.0, share))


def test_cutmix_pastes_a_box_and_the_target_share_is_its_area() -> None:
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16)
    mixed, targets = recipe.MixUp(0.0, 1.0, seed=3).on_batch(images, torch.arange(8))
    own = (mixed == images).float().mean((1, 2, 3))
    moved = targets.others != torch.arange(8)
    assert torch.allclose(own[moved], torch.full((int(moved.sum()),), targets.weight))
    assert torch.allclose(targets.probabilities(8).sum(1), torch.ones(8))


def test_the_balanced_sampler_draws_classes_evenly_from_a_skewed_set() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    images = torch.zeros(100, 3, 8, 8, dtype=torch.uint8)
    train = loader(images, labels, batch_size=20)
    train.generator = torch.Generator().manual_seed(0)
    recipe.ClassBalance("sampler").on_train_start(None, train)
    drawn = torch.cat([batch_labels for _ in range(10) for _, batch_labels in train])
    assert len(drawn) == 1000 and 0.45 < (drawn == 1).float().mean() < 0.55


def test_loss_weights_are_the_inverse_class_frequency() -> None:
    weights = recipe.inverse_frequency(torch.tensor([0, 0, 0, 1]), classes=3)
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2, 0.0]))


def test_accumulating_k_parts_is_one_step_on_the_whole_batch() -> None:
    batch = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 4
    weights = []
    for parts in (1, 4):
        torch.manual_seed(0)
        linear = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
        step = engine.TrainStep(linear, TrainConfig(batch_size=16, optimizer="sgd", grad_clip=None, accumulate=parts),
                                loader(batch_size=16), total_steps=10)
        loss, logits = step(*batch)
        weights.append((linear[1].weight.detach().clone(), loss, logits))
    (one, loss_one, logits_one), (four, loss_four, logits_four) = weights
    assert torch.allclose(one, four, atol=1e-6) and torch.allclose(loss_one, loss_four, atol=1e-6)
    assert torch.allclose(logits_one, logits_four, atol=1e-6)


def test_early_stopping_stops_after_patience_epochs_without_improvement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stopping = recipe.EarlyStopping(patience=2)
    assert [stopping.on_epoch_end({"val_loss": v}) for v in (1.0, 0.9, 0.95, 0.92)] == [False, False, False, True]
    monkeypatch.setattr(engine, "evaluate", lambda network, loader, tta=False: (1.0, 0.5))  # never improves
    config = TrainConfig(epochs=6, batch_size=8, early_stopping=2)
    result = fit(config, tmp_path / "checkpoint.pt")
    assert list(result.history["epoch"]) == [1, 2, 3]  # epoch 1 sets the best; 2 and 3 do not beat it
    assert len(fit(config, tmp_path / "checkpoint.pt").history) == 3  # a rerun stays stopped


def test_an_interrupted_run_with_every_option_resumes_to_the_same_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(epochs=2, batch_size=8, ema=0.8, mixup_alpha=0.4, cutmix_alpha=1.0,
                         class_balance="sampler", accumulate=2, early_stopping=3, optimizer="muon")
    whitened = ModelConfig(width=4, whiten=True)
    straight = fit(config, model=whitened).weights
    check = engine.stop_if_diverged

    def interrupt_in_epoch_2(row, *args, **kwargs):
        if row["epoch"] == 2:
            raise KeyboardInterrupt
        return check(row, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "stop_if_diverged", interrupt_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            fit(config, tmp_path / "checkpoint.pt", whitened)
    resumed = fit(config, tmp_path / "checkpoint.pt", whitened).weights
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("setting, value", [("ema", 1.0), ("mixup_alpha", -1), ("class_balance", "weights"),
                                            ("accumulate", 0), ("early_stopping", -1),
                                            ("bn_bias_lr_scale", 0), ("flip", "sometimes"), ("muon_lr", 0),
                                            ("optimizer", "lamb")])
def test_recipe_options_are_validated(setting: str, value) -> None:
    with pytest.raises(ConfigError, match=f"train.{setting}"):
        TrainConfig(**{setting: value})


class TopLeftPixel(nn.Module):
    """A "network" whose logits are each channel's top-left pixel: it shows which views it saw."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :, 0, 0]


def test_multi_crop_tta_weighs_the_image_half_and_each_one_pixel_shift_a_quarter() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    test = loader(images, torch.zeros(4, dtype=torch.long), batch_size=4)
    x = next(iter(test))[0]
    assert torch.equal(engine.shift(x, 1)[..., 1:, 1:], x[..., :-1, :-1])  # moved down-right by one
    assert torch.equal(engine.shift(x, -1)[..., :-1, :-1], x[..., 1:, 1:])
    # Both shifts put pixel (1, 1) top-left: reflected into the gap, or moved there.
    expected = x[:, :, 0, 0] / 2 + x[:, :, 1, 1] / 2
    torch.testing.assert_close(engine.predict(TopLeftPixel(), test, tta_crops=True), expected)
    torch.testing.assert_close(engine.predict(TopLeftPixel(), test), x[:, :, 0, 0])


def responses(weight: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The covariance of a convolution's responses over every position of ``images``."""
    out = F.conv2d(images, weight).transpose(0, 1).flatten(1)  # [channels, images x positions]
    return torch.cov(out)


def test_patch_whitening_makes_the_first_convolutions_responses_uncorrelated_with_unit_variance() -> None:
    generator = torch.Generator().manual_seed(4)
    smooth = F.interpolate(torch.rand(64, 1, 3, 3, generator=generator), size=8, mode="bilinear")  # neighbours alike
    noisy = (smooth * 160 + torch.rand(64, 1, 8, 8, generator=generator) * 80).to(torch.uint8)
    network = ResNet9(1, 4, width=16)  # 16 filters of 3x3 over 1 channel: 9 whitening, 7 negated
    train = Loader.create(MemoryImages(noisy), torch.zeros(64, dtype=torch.long), [0.5], [0.25], 8, CPU)
    normalised = (noisy.float() / 255 - 0.5) / 0.25
    conv = network.features[0][0]
    assert not torch.allclose(responses(conv.weight.detach(), normalised)[:9, :9], torch.eye(9), atol=0.5)
    recipe.PatchWhitening().on_train_start(SimpleNamespace(network=network), train)
    torch.testing.assert_close(responses(conv.weight.detach(), normalised)[:9, :9], torch.eye(9), atol=0.02, rtol=0)
    assert torch.equal(conv.weight[9:], -conv.weight[:7])


def test_frozen_whitening_is_the_trained_averaged_and_saved_first_convolution(tmp_path: Path) -> None:
    """Frozen through training, and set before train.ema copies the weights (else the average
    would blend in the random initialisation)."""
    config = TrainConfig(epochs=1, batch_size=8, ema=0.9)
    result = fit(config, tmp_path / "checkpoint.pt", ModelConfig(width=8, whiten="frozen"))
    filters = recipe.whitening_filters(recipe.patch_covariance(loader(), (3, 3)), 8)
    torch.testing.assert_close(result.weights["features.0.0.weight"].flatten(1), filters)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]["features.0.0.weight"]
    torch.testing.assert_close(saved.flatten(1), filters)
    with pytest.raises(ConfigError, match="model.whiten=True applies to resnet9"):
        ModelConfig(name="resnet18", whiten=True)
