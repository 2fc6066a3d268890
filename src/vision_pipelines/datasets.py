"""A Kedro dataset for a folder of raw images, so the download stage has a catalog entry.

Saving a folder links ``path`` to it (a symlink: a local copy or a download cache is never
duplicated); loading returns the folder. The link is replaced atomically, so ``path`` always
points at a complete folder or at nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class ImageFolderDataset(AbstractDataset[Path, Path]):
    """``data/01_raw/<dataset>``: a link to the folder holding the dataset's images."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path:
        if not self._path.exists():
            raise DatasetError(f"no image folder at {self._path}: run the download stage first "
                               "(kedro run --pipelines=<dataset> --tags=download)")
        return self._path.resolve()

    def save(self, data: Path) -> None:
        folder = Path(data).resolve()
        if not folder.is_dir():
            raise DatasetError(f"cannot save {folder} as an image folder: it is not a folder")
        if self._path.resolve() == folder:
            return
        if self._path.exists() and not self._path.is_symlink():
            raise DatasetError(f"{self._path} is a real folder, not a link: move it away or point "
                               "source.path at it")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        staging = self._path.with_name(f".{self._path.name}.link")
        staging.unlink(missing_ok=True)
        staging.symlink_to(folder, target_is_directory=True)
        os.replace(staging, self._path)

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
