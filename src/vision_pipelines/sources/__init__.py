"""Source adapters: where a dataset's images come from, and how its layout maps to labels.

Everything specific to a dataset's origin lives here; the pipeline only calls ``fetch`` and
``scan``. A new dataset in an existing layout needs configuration only.
"""

from __future__ import annotations

from pathlib import Path

from ..config import SourceConfig
from .downloads import DownloadError, MissingCredentialsError, download_kaggle, download_torchvision
from .layouts import IMAGE_EXTENSIONS, LayoutError, Scan, scan

__all__ = ["fetch", "scan", "Scan", "DownloadError", "MissingCredentialsError", "LayoutError",
           "IMAGE_EXTENSIONS"]


def fetch(source: SourceConfig, downloads: Path) -> Path:
    """Make the dataset's folder available on disk and return it; downloads are kept in
    ``downloads`` and happen at most once."""
    if source.kind == "local":
        folder = Path(source.path).expanduser()
        if not folder.is_dir():
            raise LayoutError(f"source.path={source.path}: no such folder")
        return folder.resolve()
    if source.kind == "kaggle":
        return download_kaggle(source.dataset, Path(downloads))
    return download_torchvision(source.dataset, Path(downloads))
