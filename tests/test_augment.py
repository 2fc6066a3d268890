"""Batch augmentation and normalisation (src/vision_pipelines/augment.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vision_pipelines.augment import augment, batch_crop, batch_flip_lr, normalize, random_draws


def crops_of_reflect_padded(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every original-size crop of ``image`` reflect-padded by ``padding`` (the torchvision recipe)."""
    padded = F.pad(image[None].float(), (padding,) * 4, mode="reflect")[0].to(image.dtype)
    height, width = image.shape[-2:]
    return [padded[:, y:y + height, x:x + width] for y in range(2 * padding + 1) for x in range(2 * padding + 1)]


@pytest.mark.parametrize("padding", [1, 3])
def test_batch_crop_equals_cropping_a_reflect_padded_image(padding: int) -> None:
    images = torch.randint(0, 256, (40, 3, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    draws = random_draws(40, torch.Generator().manual_seed(2))
    cropped = batch_crop(images, padding, draws[0], draws[1])
    assert cropped.dtype == torch.uint8 and cropped.shape == images.shape
    offsets = []
    for image, crop in zip(images, cropped):
        matches = [i for i, candidate in enumerate(crops_of_reflect_padded(image, padding))
                   if torch.equal(candidate, crop)]
        assert matches, "a crop that no reflect-padded crop equals"
        offsets.append(matches[0])
    assert len(set(offsets)) > (2 * padding + 1) ** 2 // 2  # each image gets its own offset
    assert torch.equal(batch_crop(images, 0, draws[0], draws[1]), images)


def test_flip_mirrors_about_half_the_batch_and_keeps_each_image_whole_or_mirrored() -> None:
    images = torch.randint(0, 256, (64, 1, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flipped = batch_flip_lr(images, random_draws(64, torch.Generator().manual_seed(5))[2])
    assert flipped.dtype == torch.uint8 and flipped.shape == images.shape
    mirrored = [torch.equal(r, o.flip(-1)) for o, r in zip(images, flipped)]
    assert all(m or torch.equal(r, o) for o, r, m in zip(images, flipped, mirrored))
    assert 16 < sum(mirrored) < 48


def test_augment_is_repeatable_with_a_seed() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = lambda seed: random_draws(16, torch.Generator().manual_seed(seed))
    first, again, other = (augment(images, 2, True, draws(seed)) for seed in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(augment(images, 0, False, draws(7)), images)


def test_normalize_matches_the_model_card_formula() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = torch.tensor([0.5, 0.2, 0.0]), torch.tensor([0.5, 0.25, 1.0])
    out = normalize(images, mean, std)
    expected = (images.float() / 255 - mean[None, :, None, None]) / std[None, :, None, None]
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
