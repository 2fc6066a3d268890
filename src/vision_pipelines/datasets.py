"""Kedro datasets of this project: every artifact is replaced atomically.

kedro-datasets' file datasets write straight into their target, so a kill, a crash or a full
disk during a save leaves half a file, or an empty one where the previous run's was. The
datasets here write aside and rename into place: the target is always the previous file or
the new one, whole. A versioned dataset's new version only becomes visible (and loadable as
the latest) once its file is complete, so a half-finished run is never taken for a finished one.

- ``JSONDataset``, ``CSVDataset``, ``ParquetDataset``, ``MatplotlibDataset``,
  ``SafetensorsDataset``: kedro-datasets' own, saved atomically (a plot loads as its PNG image).
- ``ImageFolderDataset``: a link to the folder of raw images.
- ``ImageCacheDataset``: the sharded uint8 image cache (``cache.py``), committed by its index.
- ``FileDataset``: bytes, such as an exported ONNX or TorchScript model.
- ``LocationDataset``: a place the project writes to during a node (the download cache, the
  training checkpoint), resolved under the project root like every catalog path.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset
from kedro_datasets_experimental.safetensors import SafetensorsDataset as _SafetensorsDataset
from PIL import Image

from .atomic import partial_path, write_atomically
from .cache import CacheBuild, ImageCache, write_cache


class AtomicSave:
    """Mixin for kedro-datasets' file datasets: save to a partial file, sync it, rename it over
    the target. Their own ``save`` writes to ``self._get_save_path()``, so it is pointed at the
    partial file while it runs."""

    _partial: PurePosixPath | None = None

    def _get_save_path(self) -> PurePosixPath:
        return self._partial or super()._get_save_path()

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            return _unwrapped(super().save)(self, data)
        target = Path(get_filepath_str(super()._get_save_path(), self._protocol))
        partial = partial_path(target)
        self._partial = PurePosixPath(partial.as_posix())
        try:
            _unwrapped(super().save)(self, data)
            with open(partial, "rb+") as file:
                os.fsync(file.fileno())
            os.replace(partial, target)
        finally:
            self._partial = None
            partial.unlink(missing_ok=True)


def _unwrapped(save):
    """A kedro-datasets ``save`` without Kedro's wrapper (which the subclass's own save gets)."""
    return getattr(save, "__wrapped__", save)


class JSONDataset(AtomicSave, _JSONDataset):
    """``json.JSONDataset``, saved atomically."""


class CSVDataset(AtomicSave, _CSVDataset):
    """``pandas.CSVDataset``, saved atomically."""


class ParquetDataset(AtomicSave, _ParquetDataset):
    """``pandas.ParquetDataset``, saved atomically; ``DataFrame.attrs`` (lineage) travel with it."""


class MatplotlibDataset(AtomicSave, _MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` (one figure), saved atomically. kedro-datasets' own cannot
    be loaded; this one loads the saved PNG as a PIL image, which a notebook displays."""

    def load(self) -> Image.Image:
        with self._fs.open(get_filepath_str(self._get_load_path(), self._protocol), "rb") as file:
            image = Image.open(file)
            image.load()
        return image


class SafetensorsDataset(AtomicSave, _SafetensorsDataset):
    """``safetensors.SafetensorsDataset``, saved atomically: loading never executes code."""


class FileDataset(AbstractVersionedDataset[bytes, bytes]):
    """A file's bytes (an ONNX or TorchScript model), versioned like the model it comes from."""

    def __init__(self, *, filepath: str, version: Version | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(PurePosixPath(filepath), version)
        self.metadata = metadata

    def load(self) -> bytes:
        return Path(self._get_load_path()).read_bytes()

    def save(self, data: bytes) -> None:
        write_atomically(Path(self._get_save_path()), data)

    def _exists(self) -> bool:
        return Path(self._get_load_path()).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}


class ImageFolderDataset(AbstractDataset[Path, Path]):
    """``data/01_raw/<dataset>``: a link to the folder holding the dataset's images.

    Saving a folder links ``path`` to it (a symlink: a local copy or a download cache is never
    duplicated); loading returns the folder. The link is replaced atomically, so ``path`` always
    points at a complete folder or at nothing. ``pipeline`` (``fruits``) is the pipeline whose
    download stage makes the folder, named in the error when there is none.
    """

    def __init__(self, *, path: str, pipeline: str = "<dataset>", metadata: dict[str, Any] | None = None) -> None:
        self._path, self._pipeline = Path(path), pipeline
        self.metadata = metadata

    def load(self) -> Path:
        if not self._path.exists():
            raise DatasetError(f"no image folder at {self._path}: run the download stage first "
                               f"(kedro run --pipelines={self._pipeline} --tags=download)")
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


class ImageCacheDataset(AbstractDataset[CacheBuild, ImageCache]):
    """``data/05_model_input/<dataset>/image_cache``: the uint8 image cache (``cache.py``).

    Saving a ``CacheBuild`` decodes its images into shards and commits them; loading gives an
    ``ImageCache``, which reads a subset whole or streams it.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> ImageCache:
        return ImageCache(self._path)

    def save(self, data: CacheBuild) -> None:
        write_cache(self._path, data)

    def _exists(self) -> bool:
        return (self._path / "index.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class LocationDataset(AbstractDataset[Path, Path]):
    """A file or folder the project writes to while a node runs; loading gives its absolute path.

    Catalog paths are resolved under the project root, so ``kedro run`` from any folder (a
    notebook's, say) writes in the same place, and each dataset's namespace gives it its own.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path:
        return self._path.absolute()

    def save(self, data: Path) -> None:
        raise DatasetError(f"{self._path} is written by the node that uses it, not saved")

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


def dataset_path(dataset: AbstractDataset) -> str | None:
    """Where a catalog dataset's file or folder is (kedro-datasets keep it in ``_filepath``, the
    datasets here in ``_path``), unversioned; None for one without (a memory dataset)."""
    path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", None)
    return None if path is None else str(path)


def saved_path(catalog, name: str) -> Path:
    """The file catalog entry ``name`` was just saved to: for a versioned entry, this run's
    version (even when --load-versions pins another one for loading)."""
    dataset = catalog.get(name)
    if isinstance(dataset, AbstractVersionedDataset) and dataset._version:
        return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
    return Path(dataset_path(dataset))
