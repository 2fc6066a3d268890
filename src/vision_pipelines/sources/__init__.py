"""Source adapters: where a dataset's images come from, and how its layout maps to labels.

Everything specific to a dataset's origin lives here; the pipeline only calls ``fetch`` and
``scan``, and prediction lists a folder's images with ``list_images`` by the same rules. A new
dataset in an existing layout needs configuration only.
"""

from __future__ import annotations

from pathlib import Path

from ..config import SourceConfig
from .downloads import DownloadError, MissingCredentialsError, download_kaggle, download_torchvision, download_url
from .layouts import IMAGE_EXTENSIONS, LayoutError, Scan, list_images, scan

__all__ = ["fetch", "scan", "list_images", "Scan", "DownloadError", "MissingCredentialsError", "LayoutError",
           "IMAGE_EXTENSIONS"]


def fetch(source: SourceConfig, downloads: Path) -> Path:
    """Make the dataset's folder available on disk and return it; downloads are kept in
    ``downloads``, happen at most once, and fail after ``source.timeout_s`` without data."""
    if source.kind == "local":
        folder = Path(source.path).expanduser()
        if not folder.is_dir():
            raise LayoutError(f"source.path={source.path}: no such folder")
        return folder.resolve()
    downloads = Path(downloads)
    if source.kind == "kaggle":
        return download_kaggle(source.dataset, downloads, timeout_s=source.timeout_s)
    if source.kind == "url":
        return download_url(source.url, downloads, timeout_s=source.timeout_s,
                            min_bytes_per_s=source.min_bytes_per_s, max_expansion=source.max_expansion)
    return download_torchvision(source.dataset, downloads, timeout_s=source.timeout_s)
