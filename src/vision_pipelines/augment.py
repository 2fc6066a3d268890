"""The image data path, part 3: augmentation and normalisation of whole batches on the device.

Each helper takes a ``[N, C, H, W]`` batch and returns one of the same shape. Randomness comes
from ``draws``: uniform numbers drawn on the CPU from an explicit ``torch.Generator`` (so a
seeded run is repeatable, resumable, and the same on CPU and CUDA), one column per image of the
*global* batch; a distributed process augments its slice with its slice of the draws, so its
images are augmented exactly as one process training the whole batch would augment them.
"""

from __future__ import annotations

import torch

DRAWS_PER_IMAGE = 3  # crop row offset, crop column offset, flip


def random_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """``[DRAWS_PER_IMAGE, n]`` uniform numbers in [0, 1) for a batch of ``n`` images."""
    return torch.rand(DRAWS_PER_IMAGE, n, generator=generator)


def batch_flip_lr(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose draw is below 0.5: a random half of the batch."""
    flip = draws.to(images.device, non_blocking=True) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def flip_mode(flip: bool | str) -> str:
    """``train.flip`` as one of ``config.FLIP_MODES``: true is ``random``, false ``none``."""
    if isinstance(flip, bool):
        return "random" if flip else "none"
    return flip


def alternating_flips(positions: torch.Tensor, epoch: int, coins: torch.Tensor) -> torch.Tensor:
    """Flip draws (below 0.5: mirror) for airbench's alternating flip: the image at each of
    ``positions`` is mirrored in the epochs whose parity differs from its own coin (``coins``:
    one 0 or 1 per image, seeded), so over any two consecutive epochs it is seen once each way."""
    return ((coins[positions] + epoch) % 2).float()


def flip_coins(n: int, seed: int) -> torch.Tensor:
    """One seeded coin (0 or 1) per image of the training set, the same in every epoch and process."""
    return torch.randint(2, (n,), generator=torch.Generator().manual_seed(seed))


def batch_crop(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Random crop of the original size from the image reflect-padded by ``padding`` pixels.

    One ``torch.gather`` over the flattened pixels of the whole batch, in the batch's own dtype
    (uint8 stays uint8): every image gets its own offset in ``[-padding, padding]``, and indices
    that fall outside the image are reflected back in, which is what cropping a reflect-padded
    image does. (Indexing with four broadcast index tensors gives the same result 3x slower on CPU.)
    """
    if padding == 0:
        return images
    n, channels, height, width = images.shape
    device = images.device
    dy = (dy.to(device, non_blocking=True) * (2 * padding + 1)).long() - padding
    dx = (dx.to(device, non_blocking=True) * (2 * padding + 1)).long() - padding
    rows = _reflect(torch.arange(height, device=device)[None, :] + dy[:, None], height)  # [N, H]
    cols = _reflect(torch.arange(width, device=device)[None, :] + dx[:, None], width)  # [N, W]
    pixels = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, height * width)  # source pixel of each
    flat = images.reshape(n, channels, height * width)
    return flat.gather(2, pixels.expand(n, channels, height * width)).view(n, channels, height, width)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in ``[-size+1, 2*size-2]`` into ``[0, size)`` as reflect padding does."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(images: torch.Tensor, padding: int, flip: bool | str, draws: torch.Tensor) -> torch.Tensor:
    """The training augmentation: random crop then flip (``train.flip``), from ``random_draws``
    (whose flip row ``alternating_flips`` replaces under ``alternating``)."""
    images = batch_crop(images, padding, draws[0], draws[1])
    return batch_flip_lr(images, draws[2]) if flip_mode(flip) != "none" else images


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> ``(x/255 - mean) / std`` in ``dtype``; mean/std are per channel in [0, 1]."""
    scale = 1.0 / (255.0 * std)
    return (images.to(dtype) * scale.to(dtype)[None, :, None, None]
            - (mean / std).to(dtype)[None, :, None, None])
