"""Downloads from Kaggle and torchvision, idempotent and atomic.

A download goes into ``<download_dir>/<name>.partial-XXXX`` and is renamed to its final name
only once complete, with a ``.complete`` marker inside; a second run finds the marker and
downloads nothing. An interrupted download leaves only a ``.partial-`` folder, which is never
read as data and is removed by the next attempt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"


class DownloadError(RuntimeError):
    """A download failed; nothing partial was kept."""


class MissingCredentialsError(DownloadError):
    """No Kaggle credentials were found."""


def atomic_download(target: Path, fill: Callable[[Path], None], what: str) -> Path:
    """Run ``fill(staging_dir)`` once for ``target``; later calls return the finished folder."""
    target = Path(target)
    if (target / COMPLETE_MARKER).is_file():
        log.info("%s already downloaded in %s: not downloading again", what, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f"{target.name}.partial-*"):
        log.warning("removing %s left by an interrupted download", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    started = time.time()
    try:
        fill(staging)
    except MissingCredentialsError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise DownloadError(f"downloading {what} failed ({type(error).__name__}: {error}); "
                            f"nothing was kept, {target} is unchanged") from error
    (staging / COMPLETE_MARKER).write_text(json.dumps({"source": what, "seconds": time.time() - started}))
    if target.exists():  # a folder without the marker: an old, incomplete copy
        shutil.rmtree(target)
    os.replace(staging, target)
    log.info("downloaded %s to %s in %.0f s", what, target, time.time() - started)
    return target


# --- Kaggle ----------------------------------------------------------------------------------

CREDENTIALS_HELP = (
    "No Kaggle credentials found. Provide them in one of these ways:\n"
    "  * conf/local/credentials.yml:  kaggle: {username: <user>, key: <api key>}\n"
    "  * environment variables KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)\n"
    "  * ~/.kaggle/kaggle.json, as written by kaggle.com > Settings > API > Create New Token\n"
    "Or use a copy already on disk: "
    "--params=\"<dataset>.source.kind=local,<dataset>.source.path=/path/to/folder\""
)


def kaggle_credentials_present() -> bool:
    """True when the Kaggle client will find credentials without asking anyone."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def _kaggle_api():
    # Imported late: importing ``kaggle`` authenticates at once and calls exit() on failure.
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api


def download_kaggle(dataset: str, download_dir: Path, api_factory: Callable = _kaggle_api) -> Path:
    """Download and unzip Kaggle dataset ``owner/slug`` into ``download_dir/owner__slug``."""
    target = Path(download_dir) / dataset.replace("/", "__")

    def fill(staging: Path) -> None:
        if not kaggle_credentials_present():
            raise MissingCredentialsError(CREDENTIALS_HELP)
        api_factory().dataset_download_files(dataset, path=str(staging), unzip=True, quiet=False)

    return atomic_download(target, fill, f"Kaggle dataset {dataset}")


# --- torchvision -----------------------------------------------------------------------------


def download_torchvision(dataset: str, download_dir: Path) -> Path:
    """Download a torchvision dataset and write it out in the layout its contest used.

    ``CIFAR10``: ``train/<class>/<n>.png`` and ``test/<class>/<n>.png``.
    ``FashionMNIST``: the "identify the apparels" layout, ``train/train.csv`` (id,label) with
    ``train/train/<id>.png`` and ``test/test.csv`` with ``test/test/<id>.png``.
    """
    import torchvision

    if dataset not in EXPORTERS:
        raise DownloadError(f"source.dataset={dataset!r}: torchvision sources supported are {sorted(EXPORTERS)}")
    target = Path(download_dir) / f"torchvision__{dataset}"
    dataset_class = getattr(torchvision.datasets, dataset)

    def fill(staging: Path) -> None:
        archive = staging / "_archive"
        splits = {train: dataset_class(root=str(archive), train=train, download=True) for train in (True, False)}
        EXPORTERS[dataset](splits[True], splits[False], staging)
        shutil.rmtree(archive, ignore_errors=True)

    return atomic_download(target, fill, f"torchvision {dataset}")


def _export_class_folders(train_set, test_set, out: Path) -> None:
    for subset, data in (("train", train_set), ("test", test_set)):
        for index, (image, label) in enumerate(data):
            folder = out / subset / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index}.png")


def _export_contest_csv(train_set, test_set, out: Path) -> None:
    next_id = 1
    for subset, data, labelled in (("train", train_set, True), ("test", test_set, False)):
        images = out / subset / subset
        images.mkdir(parents=True)
        rows = []
        for image, label in data:
            image.save(images / f"{next_id}.png")
            rows.append(f"{next_id},{label}" if labelled else f"{next_id}")
            next_id += 1
        header = "id,label" if labelled else "id"
        (out / subset / f"{subset}.csv").write_text("\n".join([header, *rows]) + "\n")


EXPORTERS = {"CIFAR10": _export_class_folders, "FashionMNIST": _export_contest_csv}
