"""Downloads with fakes: a fake Kaggle client, fake torchvision datasets, local HTTP servers.

Nothing here reaches another host: real downloads go to servers on 127.0.0.1 (one that serves
archives, one that cuts every download short, one that never answers).
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import json
import logging
import os
import shutil
import socket
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import requests
import torchvision
import yaml
from PIL import Image
from requests.adapters import HTTPAdapter

import vision_pipelines.sources.downloads as downloads_module
from conftest import (
    PROJECT_ROOT,
    download_entries,
    fast_params,
    make_class_folders,
    make_project,
    run_kedro,
    wait_until,
)
from vision_pipelines.config import SourceConfig
from vision_pipelines.hooks import KaggleCredentialsHook
from vision_pipelines.sources import DownloadError, MissingCredentialsError, fetch, scan
from vision_pipelines.sources.downloads import (
    COMPLETE_MARKER,
    atomic_download,
    download_kaggle,
    download_torchvision,
    download_url,
    kaggle_credentials_present,
    redact_url,
)


@pytest.fixture
def kaggle_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")


@pytest.fixture
def no_kaggle_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        # setenv first, so monkeypatch also removes what the code under test sets (delenv of an
        # unset variable records nothing, and the hook's credentials would leak into later tests)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))


class FakeKaggleApi:
    """Writes a Fruits-360-like tree where the real client would unzip the archive."""

    def __init__(self, fail_after_classes: int | None = None) -> None:
        self.calls = []
        self.fail_after_classes = fail_after_classes

    def dataset_download_files(self, dataset: str, path: str, unzip: bool, quiet: bool) -> None:
        self.calls.append(dataset)
        for index, name in enumerate(["Apple", "Kiwi"]):
            if self.fail_after_classes is not None and index >= self.fail_after_classes:
                raise ConnectionResetError("connection reset by peer")
            make_class_folders(Path(path) / "fruits-360" / "Training", [name], 2)

    def competition_download_files(self, competition: str, path: str, quiet: bool) -> None:
        """As the real client does: ``<path>/<competition>.zip``, not extracted."""
        self.calls.append(f"competition {competition}")
        with zipfile.ZipFile(Path(path) / f"{competition}.zip", "w") as archive:
            archive.writestr("train.csv", "id,label\n1,0\n")
            archive.writestr("train/1.png", b"png")


def test_kaggle_download_is_idempotent(tmp_path: Path, kaggle_credentials) -> None:
    api = FakeKaggleApi()
    first = download_kaggle("moltean/fruits", tmp_path, api_factory=lambda: api)
    assert first == tmp_path / "moltean__fruits" and (first / COMPLETE_MARKER).is_file()
    assert len(list(first.rglob("*.jpg"))) == 4
    second = download_kaggle("moltean/fruits", tmp_path, api_factory=lambda: api)
    assert second == first and api.calls == ["moltean/fruits"]  # not downloaded again


def test_interrupted_kaggle_download_is_never_taken_for_complete(tmp_path: Path, kaggle_credentials) -> None:
    (tmp_path / "moltean__fruits.partial-old").mkdir()  # left by a killed run
    with pytest.raises(DownloadError, match="connection reset.*nothing was kept"):
        download_kaggle("moltean/fruits", tmp_path, api_factory=lambda: FakeKaggleApi(fail_after_classes=1))
    assert download_entries(tmp_path) == []
    done = download_kaggle("moltean/fruits", tmp_path, api_factory=FakeKaggleApi)
    assert len(list(done.rglob("*.jpg"))) == 4


def test_missing_kaggle_credentials_say_how_to_provide_them(tmp_path: Path, no_kaggle_credentials) -> None:
    with pytest.raises(MissingCredentialsError, match="(?s)credentials.yml.*KAGGLE_USERNAME.*source.kind=local"):
        download_kaggle("moltean/fruits", tmp_path / "downloads", api_factory=FakeKaggleApi)
    assert download_entries(tmp_path / "downloads") == []


def test_credentials_yml_is_exported_for_the_kaggle_client(tmp_path: Path, no_kaggle_credentials,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "credentials.yml").write_text("kaggle: {username: ann, key: k123}\n")
    context = SimpleNamespace(config_loader={"credentials": {}}, project_path=tmp_path)
    KaggleCredentialsHook().after_context_created(context)
    assert (os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"]) == ("ann", "k123")


class FakeTorchvisionDataset:
    """Stands in for torchvision.datasets.CIFAR10 / FashionMNIST: a few PIL images."""

    classes = ["zero", "one", "two"]
    mode = "RGB"

    def __init__(self, root: str, train: bool, download: bool) -> None:
        assert download
        count = 6 if train else 3
        self.items = [(Image.new(self.mode, (8, 8), 40 * i), i % 3) for i in range(count)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def _config(dataset: str, path: Path) -> SourceConfig:
    params = yaml.safe_load((PROJECT_ROOT / f"conf/base/parameters_{dataset}.yml").read_text())[dataset]
    return SourceConfig(**{**params["source"], "kind": "local", "path": str(path)})


def test_torchvision_cifar10_written_as_class_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeTorchvisionDataset)
    root = download_torchvision("CIFAR10", tmp_path)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))[:2] == [
        "test/one/1.png", "test/two/2.png"]
    found = scan(root, _config("cifar10", root))  # the layout conf/base/parameters_cifar10.yml expects
    assert found.class_names == ["one", "two", "zero"]
    assert found.images["origin"].value_counts().to_dict() == {"train": 6, "test": 3}
    assert not (root / "_archive").exists()


def test_torchvision_fashion_mnist_written_in_contest_layout(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    grey = type("FakeFashion", (FakeTorchvisionDataset,), {"mode": "L"})
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", grey)
    root = download_torchvision("FashionMNIST", tmp_path)
    assert (root / "train" / "train.csv").read_text().splitlines()[:3] == ["id,label", "1,0", "2,1"]
    assert (root / "test" / "test.csv").read_text().splitlines() == ["id", "7", "8", "9"]
    found = scan(root, _config("apparel", root))
    assert len(found.images) == 9 and found.class_names[0] == "T-shirt/top"


def test_network_failure_mid_download_keeps_nothing_partial(tmp_path: Path, cut_stream_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [cut_stream_url])
    earlier = tmp_path / "torchvision__CIFAR10"  # an earlier, complete download
    make_class_folders(earlier / "train", ["a", "b"], 1)
    (earlier / COMPLETE_MARKER).write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in earlier.rglob("*"))
    with pytest.raises(DownloadError, match="(?s)downloading torchvision FashionMNIST failed.*127.0.0.1"):
        download_torchvision("FashionMNIST", tmp_path)
    assert download_entries(tmp_path) == ["torchvision__CIFAR10"]  # no partial, no final
    assert sorted(p.relative_to(tmp_path) for p in earlier.rglob("*")) == before


# --- Kaggle: what the client is asked, and what a killed run leaves behind --------------------


def test_kaggle_client_unzips_into_a_partial_folder_beside_the_target(tmp_path: Path, kaggle_credentials) -> None:
    seen = {}

    class RecordingApi(FakeKaggleApi):
        def dataset_download_files(self, dataset: str, path: str, unzip: bool, quiet: bool) -> None:
            seen.update(dataset=dataset, path=Path(path), unzip=unzip, exists=Path(path).is_dir())
            super().dataset_download_files(dataset, path=path, unzip=unzip, quiet=quiet)

    done = download_kaggle("puneet6060/intel-image-classification", tmp_path / "downloads",
                           api_factory=RecordingApi)
    assert done == tmp_path / "downloads" / "puneet6060__intel-image-classification"
    assert seen["dataset"] == "puneet6060/intel-image-classification" and seen["unzip"] is True
    # staged in the same folder (an atomic rename), under a name never read as data
    assert seen["exists"] and seen["path"].parent == tmp_path / "downloads"
    assert seen["path"].name.startswith("puneet6060__intel-image-classification.partial-")
    assert download_entries(tmp_path / "downloads") == [done.name]


def test_leftover_partial_folder_is_removed_and_never_used(tmp_path: Path, kaggle_credentials) -> None:
    leftover = tmp_path / "moltean__fruits.partial-x1y2"  # a killed run got as far as its marker
    make_class_folders(leftover / "fruits-360" / "Training", ["Stale"], 3)
    (leftover / COMPLETE_MARKER).write_text("{}")
    api = FakeKaggleApi()

    done = download_kaggle("moltean/fruits", tmp_path, api_factory=lambda: api)

    assert api.calls == ["moltean/fruits"]  # the leftover was not taken for a finished download
    assert not leftover.exists()
    assert sorted(p.parent.name for p in done.rglob("*.jpg")) == ["Apple", "Apple", "Kiwi", "Kiwi"]
    assert download_entries(tmp_path) == ["moltean__fruits"]


def test_final_folder_without_marker_is_downloaded_again(tmp_path: Path, kaggle_credentials) -> None:
    old = tmp_path / "moltean__fruits"  # e.g. unzipped by hand, half-way
    make_class_folders(old / "fruits-360" / "Training", ["Stale"], 1)
    api = FakeKaggleApi()
    done = download_kaggle("moltean/fruits", tmp_path, api_factory=lambda: api)
    assert done == old and api.calls == ["moltean/fruits"]
    assert not (done / "fruits-360" / "Training" / "Stale").exists()
    assert (done / COMPLETE_MARKER).is_file()


def test_missing_credentials_never_build_the_client(tmp_path: Path, no_kaggle_credentials) -> None:
    built = []
    with pytest.raises(MissingCredentialsError) as error:
        download_kaggle("moltean/fruits", tmp_path, api_factory=lambda: built.append(1))
    assert built == []
    message = str(error.value)
    for hint in ("conf/local/credentials.yml", "KAGGLE_USERNAME and KAGGLE_KEY", "kaggle.json",
                 "source.kind=local"):
        assert hint in message
    assert not (tmp_path / "moltean__fruits").exists()


@pytest.mark.parametrize("provide", ["username_and_key", "api_token", "kaggle_json", "access_token"])
def test_each_documented_credential_source_counts(tmp_path: Path, no_kaggle_credentials,
                                                  monkeypatch: pytest.MonkeyPatch, provide: str) -> None:
    assert not kaggle_credentials_present()
    config_dir = Path(os.environ["KAGGLE_CONFIG_DIR"])
    if provide == "username_and_key":
        monkeypatch.setenv("KAGGLE_USERNAME", "ann")
        monkeypatch.setenv("KAGGLE_KEY", "k")
    elif provide == "api_token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "t")
    else:
        config_dir.mkdir(parents=True)
        (config_dir / ("kaggle.json" if provide == "kaggle_json" else "access_token")).write_text("{}")
    assert kaggle_credentials_present()


def test_username_without_key_is_not_enough(no_kaggle_credentials, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "ann")
    assert not kaggle_credentials_present()


def test_fetch_kaggle_source_uses_the_real_client_factory(tmp_path: Path, kaggle_credentials,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``fetch`` with kind=kaggle, the default client factory, and a fake ``kaggle`` package."""
    api = FakeKaggleApi()
    api.authenticated = False

    def authenticate() -> None:
        api.authenticated = True

    api.authenticate = authenticate
    fake = SimpleNamespace(KaggleApi=lambda: api)
    for name, module in (("kaggle", SimpleNamespace()), ("kaggle.api", SimpleNamespace()),
                         ("kaggle.api.kaggle_api_extended", fake)):
        monkeypatch.setitem(sys.modules, name, module)
    source = SourceConfig(kind="kaggle", dataset="moltean/fruits", train_dir="Training")
    root = fetch(source, tmp_path / "dl")
    assert root == tmp_path / "dl" / "moltean__fruits" and api.authenticated
    assert scan(root, source).class_names == ["Apple", "Kiwi"]


def test_kaggle_credentials_hook_keeps_variables_already_set(tmp_path: Path, kaggle_credentials) -> None:
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "credentials.yml").write_text("kaggle: {username: ann, key: k123}\n")
    KaggleCredentialsHook().after_context_created(
        SimpleNamespace(config_loader={"credentials": {}}, project_path=tmp_path))
    assert (os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"]) == ("someone", "secret")


def test_kaggle_credentials_hook_reads_the_config_loader(tmp_path: Path, no_kaggle_credentials) -> None:
    loader = {"credentials": {"kaggle": {"username": "bob", "key": 12345}}}
    KaggleCredentialsHook().after_context_created(SimpleNamespace(config_loader=loader, project_path=tmp_path))
    assert (os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"]) == ("bob", "12345")
    assert kaggle_credentials_present()


def test_kaggle_credentials_hook_without_credentials_sets_nothing(tmp_path: Path, no_kaggle_credentials) -> None:
    class NoCredentials(dict):
        def __getitem__(self, key):
            raise KeyError(key)  # as the config loader does when no credentials file exists

    KaggleCredentialsHook().after_context_created(SimpleNamespace(config_loader=NoCredentials(),
                                                                  project_path=tmp_path))
    assert "KAGGLE_USERNAME" not in os.environ and "KAGGLE_KEY" not in os.environ


# --- torchvision: the exported layouts in detail ------------------------------------------------


def test_cifar10_export_lists_every_image_in_its_class_folder(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    class Recording(FakeTorchvisionDataset):
        def __init__(self, root: str, train: bool, download: bool) -> None:
            built.append(train)
            super().__init__(root, train, download)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Recording)
    root = download_torchvision("CIFAR10", tmp_path)
    assert root == tmp_path / "torchvision__CIFAR10" and (root / COMPLETE_MARKER).is_file()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "test/one/1.png", "test/two/2.png", "test/zero/0.png",
        "train/one/1.png", "train/one/4.png", "train/two/2.png", "train/two/5.png",
        "train/zero/0.png", "train/zero/3.png"]
    with Image.open(root / "train" / "two" / "5.png") as image:
        assert image.mode == "RGB" and image.size == (8, 8) and image.getpixel((0, 0)) == (200, 0, 0)
    found = scan(root, _config("cifar10", root))
    assert by_file(found)["test/two/2.png"] == ("two", "test")
    assert download_torchvision("CIFAR10", tmp_path) == root and built == [True, False]  # once only


def test_fashion_mnist_export_matches_the_contest_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grey = type("FakeFashion", (FakeTorchvisionDataset,), {"mode": "L"})
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", grey)
    root = download_torchvision("FashionMNIST", tmp_path)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        COMPLETE_MARKER, "test/test.csv", "test/test/7.png", "test/test/8.png", "test/test/9.png",
        "train/train.csv", *[f"train/train/{i}.png" for i in range(1, 7)]]
    assert (root / "train" / "train.csv").read_text().splitlines() == [
        "id,label", "1,0", "2,1", "3,2", "4,0", "5,1", "6,2"]
    with Image.open(root / "train" / "train" / "3.png") as image:
        assert image.mode == "L" and image.getpixel((0, 0)) == 80

    config = _config("apparel", root)
    found = scan(root, config)
    files = by_file(found)
    assert files["train/train/2.png"] == (config.class_names[1], "train")  # label 1 = "Trouser"
    assert files["test/test/9.png"] == (None, "predict")
    assert found.images["origin"].value_counts().to_dict() == {"train": 6, "predict": 3}
    assert found.skipped.empty


def test_unsupported_torchvision_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"source\.dataset='MNIST'.*\['CIFAR10', 'FashionMNIST'\]"):
        download_torchvision("MNIST", tmp_path)
    assert download_entries(tmp_path) == []


def by_file(found) -> dict[str, tuple]:
    """file -> (label, origin); a missing label reads None."""
    return {f: (None if pd.isna(label) else label, origin) for f, label, origin in
            zip(found.images["file"], found.images["label"], found.images["origin"])}


# --- source.kind: url ---------------------------------------------------------------------------


class ArchiveServer:
    """Serves the files of a folder on 127.0.0.1 and counts the requests it answers."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)


@pytest.fixture
def archives(tmp_path: Path, no_proxy) -> Iterator[ArchiveServer]:
    """``fruits.zip`` and ``fruits.tar.gz``: fruits-360/Training and Test class folders."""
    tree = tmp_path / "tree"
    make_class_folders(tree / "fruits-360" / "Training", ["Apple", "Banana", "Kiwi"], 10)
    make_class_folders(tree / "fruits-360" / "Test", ["Apple", "Banana", "Kiwi"], 3, start_seed=500)
    served = tmp_path / "served"
    served.mkdir()
    shutil.make_archive(str(served / "fruits"), "zip", tree)
    shutil.make_archive(str(served / "fruits"), "gztar", tree)
    (served / "notes.txt").write_text("not an archive")
    server = ArchiveServer(served)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.mark.parametrize("name", ["fruits.zip", "fruits.tar.gz"])
def test_archive_url_is_downloaded_once_extracted_and_scanned(tmp_path: Path, archives: ArchiveServer,
                                                              name: str) -> None:
    source = SourceConfig(kind="url", url=archives.url + name, train_dir="Training", test_dir="Test")

    root = fetch(source, tmp_path / "downloads")

    assert root.parent == tmp_path / "downloads" and root.name.startswith("url__fruits-")
    assert (root / COMPLETE_MARKER).is_file() and not list(root.glob("fruits.*"))  # archive removed
    found = scan(root, source)
    assert found.class_names == ["Apple", "Banana", "Kiwi"]
    assert found.images["origin"].value_counts().to_dict() == {"train": 30, "test": 9}
    assert fetch(source, tmp_path / "downloads") == root
    assert archives.requests == [f"/{name}"]  # one request: the second fetch downloaded nothing
    assert download_entries(tmp_path / "downloads") == [root.name]


def test_url_source_trains_end_to_end_and_a_second_run_downloads_nothing(tmp_path: Path,
                                                                         archives: ArchiveServer) -> None:
    project = make_project(tmp_path / "project")
    params = fast_params("fruits", **{"source.kind": "url", "source.url": archives.url + "fruits.zip"})

    run_kedro(project, "fruits", params)
    run_kedro(project, "fruits", params, tags=["download", "split"])

    assert archives.requests == ["/fruits.zip"]
    (download,) = download_entries(project / "data" / "01_raw" / "downloads")
    assert (project / "data" / "01_raw" / "fruits").resolve() == project / "data" / "01_raw" / "downloads" / download
    manifest = pd.read_parquet(project / "data" / "02_intermediate" / "fruits" / "manifest.parquet")
    assert manifest["subset"].value_counts().to_dict() == {"train": 24, "test": 9, "val": 6}
    metrics = list((project / "data" / "08_reporting" / "fruits" / "metrics.json").glob("*/metrics.json"))
    assert len(metrics) == 1 and json.loads(metrics[0].read_text())["images"] == 9


def test_a_folder_left_without_marker_is_downloaded_again(tmp_path: Path, archives: ArchiveServer) -> None:
    """opendatasets takes any non-empty folder for a finished download; here only the marker counts."""
    url = archives.url + "fruits.zip"
    stale = tmp_path / downloads_module._url_folder(url)
    make_class_folders(stale / "half", ["Apple"], 1)
    root = download_url(url, tmp_path)
    assert root == stale and not (root / "half").exists() and (root / "fruits-360" / "Training").is_dir()
    assert archives.requests == ["/fruits.zip"]


def test_a_download_that_is_no_archive_keeps_nothing(tmp_path: Path, archives: ArchiveServer) -> None:
    with pytest.raises(DownloadError, match="no zip or tar archive.*nothing was kept"):
        download_url(archives.url + "notes.txt", tmp_path / "downloads")
    assert download_entries(tmp_path / "downloads") == []


def test_a_tar_member_leading_outside_is_refused(tmp_path: Path, no_proxy) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "evil.tar", "w") as archive:
        data = b"owned"
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    server = ArchiveServer(served)
    try:
        with pytest.raises(DownloadError, match="evil.tar failed"):
            download_url(server.url + "evil.tar", tmp_path / "a" / "downloads")
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert download_entries(tmp_path / "a" / "downloads") == []


def test_a_cut_download_is_an_error_not_an_archive(tmp_path: Path, cut_stream_url: str) -> None:
    with pytest.raises(DownloadError, match="closed after 1,000 of 100,000 bytes.*nothing was kept"):
        download_url(cut_stream_url + "data.zip", tmp_path)
    assert download_entries(tmp_path) == []


def test_url_download_logs_its_start_progress_and_end(tmp_path: Path, archives: ArchiveServer,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "PROGRESS_EVERY_S", 0.0)  # a progress line per chunk
    monkeypatch.setattr(downloads_module, "CHUNK_BYTES", 4096)
    caplog.set_level(logging.INFO, logger="vision_pipelines")
    url = archives.url + "fruits.zip"
    download_url(url, tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"downloading {url} into {tmp_path}") for line in lines)
    progress = [line for line in lines if line.startswith("downloading fruits.zip: ")]
    assert len(progress) > 1 and " B (" in progress[-1] and "B/s" in progress[-1]
    assert any(line.startswith(f"downloaded {url} to ") for line in lines)


@pytest.mark.parametrize("url, target, calls", [
    ("https://www.kaggle.com/datasets/moltean/fruits", "moltean__fruits", ["moltean/fruits"]),
    ("kaggle.com/moltean/fruits?select=Training", "moltean__fruits", ["moltean/fruits"]),
    ("https://www.kaggle.com/competitions/digit-recognizer/data", "kaggle_competition__digit-recognizer",
     ["competition digit-recognizer"]),
    ("https://www.kaggle.com/c/digit-recognizer", "kaggle_competition__digit-recognizer",
     ["competition digit-recognizer"]),
])
def test_kaggle_urls_use_the_client_and_never_prompt(tmp_path: Path, kaggle_credentials,
                                                     monkeypatch: pytest.MonkeyPatch, url: str, target: str,
                                                     calls: list[str]) -> None:
    """opendatasets prompts for credentials when ./kaggle.json is missing, even with KAGGLE_KEY set."""
    import click

    monkeypatch.setattr(click, "prompt", lambda *a, **k: pytest.fail("asked for credentials on the console"))
    monkeypatch.chdir(tmp_path)  # no ./kaggle.json here
    api = FakeKaggleApi()

    root = download_url(url, tmp_path / "downloads", api_factory=lambda: api)

    assert root == tmp_path / "downloads" / target and api.calls == calls
    if target.startswith("kaggle_competition"):  # extracted, archive removed
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
            COMPLETE_MARKER, "train.csv", "train/1.png"]


def test_kaggle_url_without_credentials_fails_fast_with_the_help(tmp_path: Path, no_kaggle_credentials,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    monkeypatch.setattr(click, "prompt", lambda *a, **k: pytest.fail("asked for credentials on the console"))
    monkeypatch.chdir(tmp_path)
    source = SourceConfig(kind="url", url="https://www.kaggle.com/competitions/titanic")
    with pytest.raises(MissingCredentialsError, match="(?s)credentials.yml.*KAGGLE_USERNAME.*source.kind=local"):
        fetch(source, tmp_path / "downloads")
    assert download_entries(tmp_path / "downloads") == []


def test_google_drive_link_is_downloaded_by_file_id_and_extracted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from opendatasets.utils import googledrive

    asked = []

    def fake_drive(file_id: str, root: str) -> str:  # opendatasets' download, without Google
        asked.append(file_id)
        shutil.make_archive(str(Path(root) / file_id), "zip", make_class_folders(tmp_path / "tree", ["a", "b"], 1))
        return str(Path(root) / f"{file_id}.zip")

    monkeypatch.setattr(googledrive, "download_file_from_google_drive", fake_drive)
    root = download_url("https://drive.google.com/file/d/1AbC-d_9/view?usp=sharing", tmp_path / "downloads")
    assert root.name == "gdrive__1AbC-d_9" and asked == ["1AbC-d_9"]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == ["a/0.jpg", "b/0.jpg"]


@pytest.mark.parametrize("url, message", [
    ("not a url", "is not a Kaggle, Google Drive, http"),
    ("https://www.kaggle.com/moltean", "not a Kaggle dataset or competition URL"),
    ("https://drive.google.com/drive/folders", "a Google Drive link must name a file"),
])
def test_urls_that_name_no_download_are_refused(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(DownloadError, match=message):
        download_url(url, tmp_path / "downloads")
    assert not (tmp_path / "downloads").exists()


# --- timeouts: a server that never answers ------------------------------------------------------

PATIENCE_S = 20  # the silent server hangs up after this: code without a timeout fails, never hangs


@pytest.fixture
def silent_url(no_proxy) -> Iterator[str]:
    """A server on 127.0.0.1 that accepts connections and sends nothing."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[tuple[socket.socket, float]] = []
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            try:
                held.append((server.accept()[0], time.monotonic()))
            except OSError:
                pass
            for connection, since in held:
                if time.monotonic() - since > PATIENCE_S:
                    connection.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    thread.join()
    for connection, _ in held:
        connection.close()
    server.close()


@pytest.fixture
def earlier_download(tmp_path: Path) -> Iterator[Path]:
    """A complete download already in the folder: a failed one must leave it exactly as it was."""
    earlier = tmp_path / "downloads" / "torchvision__CIFAR10"
    make_class_folders(earlier / "train", ["a", "b"], 1)
    (earlier / COMPLETE_MARKER).write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in earlier.rglob("*")}
    yield tmp_path / "downloads"
    assert {p: p.stat().st_mtime_ns for p in earlier.rglob("*")} == before
    assert download_entries(tmp_path / "downloads") == ["torchvision__CIFAR10"]  # no partial


def test_url_download_from_a_silent_server_fails_after_the_timeout(silent_url: str, earlier_download: Path) -> None:
    source = SourceConfig(kind="url", url=silent_url + "data.zip", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"downloading {silent_url}data.zip failed \(nothing received for "
                                            r"0.5 s \(source.timeout_s\)\); nothing was kept"):
        fetch(source, earlier_download)
    assert time.monotonic() - started < 5


def test_torchvision_download_from_a_silent_mirror_fails_after_the_timeout(
        silent_url: str, earlier_download: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [silent_url])
    source = SourceConfig(kind="torchvision", dataset="FashionMNIST", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"torchvision FashionMNIST failed \(nothing received for 0.5 s"):
        fetch(source, earlier_download)
    assert time.monotonic() - started < 5


def test_kaggle_client_requests_get_the_timeout_too(silent_url: str, earlier_download: Path,
                                                    kaggle_credentials) -> None:
    """Kaggle's client (and Google Drive's download) use requests, which ignores the socket default."""

    class RequestsApi(FakeKaggleApi):
        def dataset_download_files(self, dataset: str, path: str, unzip: bool, quiet: bool) -> None:
            requests.get(silent_url + "archive.zip")  # as the real client does: no timeout of its own

    send, default = HTTPAdapter.send, socket.getdefaulttimeout()
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"Kaggle dataset moltean/fruits failed \(nothing received for 0.5 s"):
        download_kaggle("moltean/fruits", earlier_download, api_factory=RequestsApi, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert (HTTPAdapter.send, socket.getdefaulttimeout()) == (send, default)  # restored afterwards


# --- two downloads of one target --------------------------------------------------------------


def test_a_second_download_of_the_same_target_waits_for_the_first_and_uses_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two datasets with one source: the second neither removes the first's download in progress
    (as left by an interrupted one) nor downloads again."""
    caplog.set_level(logging.INFO, logger="vision_pipelines")
    target, release, calls, results, errors = tmp_path / "moltean__fruits", threading.Event(), [], [], []

    def fill(staging: Path) -> None:
        calls.append(staging)
        if len(calls) == 1:
            release.wait(10)  # the first download is still going when the second starts
        make_class_folders(staging / "Training", ["Apple"], 1)

    def download() -> None:
        try:
            results.append(atomic_download(target, fill, "Kaggle dataset moltean/fruits"))
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    first, second = threading.Thread(target=download), threading.Thread(target=download)
    first.start()
    wait_until(lambda: calls, 10, "the first download to start")
    second.start()
    wait_until(lambda: "waiting for another download" in caplog.text, 5, "the second download to wait")
    release.set()
    first.join(30)
    second.join(30)

    assert errors == [] and len(calls) == 1 and results == [target, target]
    assert f"waiting for another download of Kaggle dataset moltean/fruits into {target} to finish" in caplog.text
    assert (target / COMPLETE_MARKER).is_file() and download_entries(tmp_path) == [target.name]


# --- a server that trickles ---------------------------------------------------------------------


@pytest.fixture
def dripping_url(no_proxy) -> Iterator[str]:
    """A server on 127.0.0.1 that promises 1 MB and sends one byte every 0.3 s, for 20 s at most."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            started = time.monotonic()
            while not stop.wait(0.3) and time.monotonic() - started < PATIENCE_S:
                try:
                    connection.sendall(b"\0")
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                threading.Thread(target=drip, args=(server.accept()[0],), daemon=True).start()
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    server.close()


def test_a_trickling_download_fails_after_the_timeout_showing_progress_meanwhile(
        dripping_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "PROGRESS_EVERY_S", 0.5)
    caplog.set_level(logging.INFO, logger="vision_pipelines")
    source = SourceConfig(kind="url", url=dripping_url + "data.zip", timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"data.zip failed \(DownloadError: .*: \d+ bytes in the last 1.5 s, slower "
                                            r"than source.min_bytes_per_s=1024 .*nothing was kept"):
        fetch(source, tmp_path / "downloads")
    assert time.monotonic() - started < 10
    assert "downloading data.zip: " in caplog.text  # progress while the bytes came in
    assert download_entries(tmp_path / "downloads") == []


# --- archives that expand too far ---------------------------------------------------------------


@pytest.fixture
def zip_bomb(tmp_path: Path, no_proxy) -> Iterator[ArchiveServer]:
    """``bomb.zip``: 5 MB of zeros, about 5 kB compressed."""
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Training/Apple/zeros.png", bytes(5_000_000))
    server = ArchiveServer(served)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_an_archive_expanding_too_far_is_refused_before_extraction(tmp_path: Path, zip_bomb: ArchiveServer) -> None:
    source = SourceConfig(kind="url", url=zip_bomb.url + "bomb.zip")
    with pytest.raises(DownloadError, match=r"bomb.zip \([\d,]+ bytes\) would expand to 5,000,000 bytes, [\d,]+ times "
                                            r"its size, more than source.max_expansion=100"):
        fetch(source, tmp_path / "downloads")
    assert download_entries(tmp_path / "downloads") == []
    trusted = dataclasses.replace(source, max_expansion=10_000)  # the setting the error names lets it through
    assert (fetch(trusted, tmp_path / "downloads") / "Training" / "Apple" / "zeros.png").stat().st_size == 5_000_000


def test_an_archive_larger_than_the_free_disk_is_refused(tmp_path: Path, zip_bomb: ArchiveServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    free = shutil.disk_usage(tmp_path)._replace(free=1_000_000)
    monkeypatch.setattr(downloads_module.shutil, "disk_usage", lambda path: free)
    source = SourceConfig(kind="url", url=zip_bomb.url + "bomb.zip", max_expansion=10_000)
    with pytest.raises(DownloadError, match=r"bomb.zip would expand to 5,000,000 bytes, more than the 1,000,000 "
                                            r"bytes free"):
        fetch(source, tmp_path / "downloads")


# --- secrets in URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "shown"), [
    ("http://user:s3cret@host:8080/a/data.zip", "http://***@host:8080/a/data.zip"),
    ("https://bucket.s3.amazonaws.com/d.zip?X-Amz-Credential=AKIA1&X-Amz-Signature=abc123#frag",
     "https://bucket.s3.amazonaws.com/d.zip?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("kedro run --params=fruits.source.url=ftp://me:pw@h/x.tar,fruits.train.epochs=2",
     "kedro run --params=fruits.source.url=ftp://***@h/x.tar,fruits.train.epochs=2"),
    ("https://www.kaggle.com/datasets/moltean/fruits", "https://www.kaggle.com/datasets/moltean/fruits"),
])
def test_urls_are_shown_without_password_or_signature(text: str, shown: str) -> None:
    assert redact_url(text) == shown
