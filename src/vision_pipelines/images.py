"""The image data path, part 1: decode every image once into a uint8 tensor cache.

No epoch decodes a JPEG again: training reads ``[N, C, H, W]`` uint8 tensors. Decoding runs in
a process pool over all cores. A file that cannot be decoded is skipped with its reason, so one
bad file never ends a long run.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# Transparent pixels are shown on white, as image viewers show them.
BACKGROUND = (255, 255, 255)


def decode_image(path: Path, size: int, channels: int) -> tuple[np.ndarray, tuple[int, int], str]:
    """Decode one file into a ``[channels, size, size]`` uint8 array.

    Handles EXIF rotation, grey, RGBA (over white), palette, CMYK and 16-bit images. Returns the
    array, the original (width, height) and the original PIL mode; raises on unreadable files.
    """
    with Image.open(path) as image:
        image.load()  # raises on truncated data instead of filling it with grey
        original_size, mode = image.size, image.mode
        image = ImageOps.exif_transpose(image)
        image = _to_8bit(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, BACKGROUND)
            image.paste(rgba, mask=rgba.getchannel("A"))
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array), original_size, mode


def _to_8bit(image: Image.Image) -> Image.Image:
    """PIL's convert() clips 16/32-bit grey to 255 (white); scale it to 8 bits instead."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.int64)
        peak = 65535 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255
        return Image.fromarray((values * 255 // peak).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray((values.clip(0, 1) * 255).astype(np.uint8), mode="L")
    return image


def _decode_job(job: tuple[str, int, int]) -> tuple[np.ndarray | None, tuple[int, int] | None, str]:
    path, size, channels = job
    try:
        array, original_size, mode = decode_image(Path(path), size, channels)
        return array, original_size, mode
    except Exception as error:  # noqa: BLE001 - any unreadable file is skipped, with its reason
        return None, None, f"unreadable image ({type(error).__name__}: {error})"


def decode_all(paths: list[Path], size: int, channels: int, workers: int | None = None):
    """Decode ``paths`` on all cores; yields ``(array | None, size | None, mode | reason)`` in order."""
    workers = workers or os.cpu_count() or 1
    jobs = [(str(p), size, channels) for p in paths]
    if workers == 1 or len(jobs) < 64:
        yield from map(_decode_job, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_decode_job, jobs, chunksize=64)


def build_cache(root: Path, manifest: pd.DataFrame, class_names: list[str], size: int,
                channels: int, workers: int | None = None) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Decode every manifest row into per-subset tensors.

    Returns ``{"<subset>.images": uint8 [N,C,H,W], "<subset>.labels": int64 [N] (-1 when
    unlabelled), "<subset>.rows": int64 [N] (manifest row)}`` and one row per decoded or
    skipped file (file, width, height, mode, reason).
    """
    class_index = {name: i for i, name in enumerate(class_names)}
    decoded = decode_all([root / f for f in manifest["file"]], size, channels, workers)
    images: dict[str, list] = {}
    outcomes = []
    for row, (array, original_size, detail) in zip(manifest.itertuples(index=True), decoded):
        if array is None:
            log.warning("skipping %s: %s", row.file, detail)
            outcomes.append({"file": row.file, "width": None, "height": None, "mode": None, "reason": detail})
            continue
        outcomes.append({"file": row.file, "width": original_size[0], "height": original_size[1],
                         "mode": detail, "reason": None})
        label = class_index.get(row.label, -1) if isinstance(row.label, str) else -1
        images.setdefault(row.subset, []).append((array, label, row.Index))
    cache = {}
    for subset, items in images.items():
        cache[f"{subset}.images"] = torch.from_numpy(np.stack([a for a, _, _ in items]))
        cache[f"{subset}.labels"] = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
        cache[f"{subset}.rows"] = torch.tensor([r for _, _, r in items], dtype=torch.int64)
    skipped = sum(o["reason"] is not None for o in outcomes)
    if skipped:
        log.warning("skipped %d of %d images that could not be decoded (listed in the data report)",
                    skipped, len(outcomes))
    return cache, pd.DataFrame(outcomes, columns=["file", "width", "height", "mode", "reason"])


def subset_tensors(cache: dict[str, torch.Tensor], subset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, manifest rows) of one subset; empty tensors when the subset is absent."""
    if f"{subset}.images" not in cache:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0, dtype=torch.uint8), empty, empty
    return cache[f"{subset}.images"], cache[f"{subset}.labels"], cache[f"{subset}.rows"]


def size_summary(outcomes: pd.DataFrame) -> dict:
    """Distribution of original image sizes and modes, for the data report."""
    ok = outcomes[outcomes["reason"].isna()]
    if ok.empty:
        return {}
    sizes = Counter(f"{int(w)}x{int(h)}" for w, h in zip(ok["width"], ok["height"]))
    describe = lambda s: {"min": int(s.min()), "median": float(s.median()), "max": int(s.max())}  # noqa: E731
    return {
        "width": describe(ok["width"].astype(int)),
        "height": describe(ok["height"].astype(int)),
        "most_common_sizes": dict(sizes.most_common(10)),  # "WxH": images
        "modes": dict(Counter(ok["mode"])),
    }
