"""The image data path, part 1: decode a file into the uint8 array the network is fed.

Decoding runs in a process pool over all cores. A file that cannot be decoded is skipped with
its reason, so one bad file never ends a long run. The pool never outlives its run: workers
ignore Ctrl-C (the main process stops them), and on Linux they die with the main process even
when it is killed outright (SIGKILL, the OOM killer, ``timeout``).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# Transparent pixels are shown on white, as image viewers show them.
BACKGROUND = (255, 255, 255)
BLOCK = 4096  # files handed to the pool at a time: bounds what waits in memory


def decode_image(path: Path, size: int, channels: int) -> tuple[np.ndarray, tuple[int, int], str]:
    """Decode one file into a ``[channels, size, size]`` uint8 array.

    Handles EXIF rotation, grey, RGBA (over white), palette, CMYK, 16-bit, 32-bit integer and
    floating-point images. Returns the array, the original (width, height) and the original PIL
    mode; raises on unreadable files.
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
    """Scale 16/32-bit integer and float grey to 8 bits; PIL's convert() would clip it to white."""
    if image.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{image.mode} image has NaN or infinite pixels")
    low, high = values.min(initial=0), values.max(initial=0)
    if image.mode.startswith("I;16"):
        scale = 255 / 65535
    elif image.mode == "F" and low >= 0 and high <= 1:
        scale = 255.0  # the usual convention for float images
    elif low >= 0 and high <= 255:
        scale = 1.0  # already 8-bit values in a wider type
    elif image.mode == "I" and low >= 0 and high <= 65535:
        scale = 255 / 65535  # 16-bit data stored as 32-bit
    else:  # any other range: stretch what is there over 0..255
        values, scale = values - low, 255 / (high - low) if high > low else 0.0
    return Image.fromarray(np.round(values * scale).clip(0, 255).astype(np.uint8), mode="L")


def _decode_job(job: tuple[str, int, int]) -> tuple[np.ndarray | None, tuple[int, int] | None, str]:
    path, size, channels = job
    try:
        return decode_image(Path(path), size, channels)
    except Exception as error:  # noqa: BLE001 - any unreadable file is skipped, with its reason
        return None, None, f"unreadable image ({type(error).__name__}: {error})"


def _init_worker() -> None:
    """In each decode worker: leave Ctrl-C to the main process, and die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool stops its workers with SIGTERM
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def decode_all(paths: Iterable[Path], size: int, channels: int, workers: int | None = None
               ) -> Iterator[tuple[np.ndarray | None, tuple[int, int] | None, str]]:
    """Decode ``paths`` on all cores; yields ``(array | None, size | None, mode | reason)`` in order."""
    jobs = ((str(p), size, channels) for p in paths)
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        yield from map(_decode_job, jobs)
        return
    # Spawned, not forked: a fork copies the locks other threads (MLflow's, Kedro's) hold at
    # that moment, and a worker waiting on such a lock never returns.
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
    try:
        while block := list(itertools.islice(jobs, BLOCK)):
            yield from pool.imap(_decode_job, block, chunksize=max(1, min(64, len(block) // (4 * workers))))
        pool.close()
    finally:
        pool.terminate()  # on Ctrl-C, SIGTERM or an error: stop the workers now, never wait for them
        pool.join()


def size_summary(decoded: pd.DataFrame) -> dict:
    """Distribution of original image sizes and modes, for the data report."""
    ok = decoded[decoded["reason"].isna()]
    if ok.empty:
        return {}
    sizes = Counter(f"{int(w)}x{int(h)}" for w, h in zip(ok["width"], ok["height"]))
    describe = lambda s: {"min": int(s.min()), "median": float(s.median()), "max": int(s.max())}
    return {
        "width": describe(ok["width"].astype(int)),
        "height": describe(ok["height"].astype(int)),
        "most_common_sizes": dict(sizes.most_common(10)),  # "WxH": images
        "modes": dict(Counter(ok["mode"])),
    }
