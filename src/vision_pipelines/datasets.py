"""Kedro datasets of this project: every artifact is replaced atomically.

kedro-datasets' file datasets write straight into their target, so a kill, a crash or a full
disk during a save leaves half a file, or an empty one where the previous run's was. The
datasets here write aside and rename into place: the target is always the previous file or
the new one, whole. A versioned dataset's new version only becomes visible (and loadable as
the latest) once its file is complete, so a half-finished run is never taken for a finished one.

- ``JSONDataset``, ``CSVDataset``, ``ParquetDataset``, ``MatplotlibDataset``,
  ``SafetensorsDataset``: kedro-datasets' own, saved atomically (a plot loads as its PNG image);
  kedro-viz previews an entry once a run has saved it, and says nothing of the others.
  Versioned, they load this run's version or the latest finished run's (``versions.RunVersioned``).
- ``ModelCardDataset``: the model card, which names its own version when loaded.
- ``ImageFolderDataset``: a link to the folder of raw images.
- ``ImageCacheDataset``: the sharded uint8 image cache (``cache.py``), committed by its index.
- ``FileDataset``: bytes, such as an exported ONNX model.
- ``LocationDataset``: a place the project writes to during a node (the download cache, the
  training checkpoint), resolved under the project root like every catalog path.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset
from kedro_datasets.yaml import YAMLDataset as _YAMLDataset
from kedro_datasets_experimental.safetensors import SafetensorsDataset as _SafetensorsDataset
from PIL import Image

from .atomic import partial_path, write_atomically
from .versions import RunVersioned

if TYPE_CHECKING:  # .cache imports torch: only a run that loads or saves the cache needs it
    from .cache import CacheBuild, ImageCache


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


def _preview_when_saved(preview):
    """kedro-datasets' ``preview``, giving nothing for an entry no run has saved yet. Theirs
    raises then, and ``kedro viz build --include-previews`` logs a "could not be previewed"
    warning for each such entry (95 for a project never run). kedro-viz reads the preview's kind
    from the return annotation, which ``functools.wraps`` keeps."""

    @functools.wraps(preview)
    def preview_if_saved(self, *args, **kwargs):
        return preview(self, *args, **kwargs) if self.exists() else None

    return preview_if_saved


class JSONDataset(RunVersioned, AtomicSave, _JSONDataset):
    """``json.JSONDataset``, saved atomically."""

    preview = _preview_when_saved(_JSONDataset.preview)


class ModelCardDataset(JSONDataset):
    """The model card; loaded, it also names the version it was loaded from (``version``), so
    whatever uses the model can say which one it is."""

    def load(self) -> dict[str, Any]:
        return {**super().load(), "version": self.resolve_load_version()}


class CSVDataset(RunVersioned, AtomicSave, _CSVDataset):
    """``pandas.CSVDataset``, saved atomically. A CSV has no place for metadata, so a table's
    ``attrs["lineage"]`` (which model made a submission, say) is saved beside it, as
    ``<name>.lineage.json`` in the same folder."""

    preview = _preview_when_saved(_CSVDataset.preview)

    def save(self, data) -> None:
        super().save(data)
        if self._protocol == "file" and data.attrs.get("lineage"):
            target = Path(get_filepath_str(self._get_save_path_unchecked(), self._protocol))
            write_atomically(target.with_name(f"{target.stem}.lineage.json"),
                             json.dumps(data.attrs["lineage"], indent=2).encode())

    def _get_save_path_unchecked(self) -> PurePosixPath:
        """Where ``save`` just wrote (Kedro's own refuses a version folder that exists)."""
        version = self.resolve_save_version()
        return self._get_versioned_path(version) if version else self._filepath


class ParquetDataset(RunVersioned, AtomicSave, _ParquetDataset):
    """``pandas.ParquetDataset``, saved atomically; ``DataFrame.attrs`` (lineage) travel with it."""

    preview = _preview_when_saved(_ParquetDataset.preview)


class MatplotlibDataset(RunVersioned, AtomicSave, _MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` (one figure), saved atomically. kedro-datasets' own cannot
    be loaded; this one loads the saved PNG as a PIL image, which a notebook displays."""

    preview = _preview_when_saved(_MatplotlibDataset.preview)

    def load(self) -> Image.Image:
        with self._fs.open(get_filepath_str(self._get_load_path(), self._protocol), "rb") as file:
            image = Image.open(file)
            image.load()
        return image


class SafetensorsDataset(RunVersioned, AtomicSave, _SafetensorsDataset):
    """``safetensors.SafetensorsDataset``, saved atomically: loading never executes code."""


class FileDataset(RunVersioned, AbstractVersionedDataset[bytes, bytes]):
    """A file's bytes (an ONNX model), versioned like the model it comes from."""

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


class ImageCacheDataset(AbstractDataset["CacheBuild", "ImageCache"]):
    """``data/05_model_input/<dataset>/image_cache``: the uint8 image cache (``cache.py``).

    Saving a ``CacheBuild`` decodes its images into shards and commits them; loading gives an
    ``ImageCache``, which reads a subset whole or streams it.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> ImageCache:
        from .cache import ImageCache

        return ImageCache(self._path)

    def save(self, data: CacheBuild) -> None:
        from .cache import write_cache

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


class YAMLDataset(RunVersioned, AtomicSave, _YAMLDataset):
    """``yaml.YAMLDataset``, saved atomically: settings a user passes back (a search's best)."""

    preview = _preview_when_saved(_YAMLDataset.preview)
