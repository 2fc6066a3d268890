"""Downloads with fakes: a fake Kaggle client, fake torchvision datasets, a local HTTP server.

Nothing here reaches another host: the one real download goes to a server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torchvision
import yaml
from PIL import Image

from conftest import PROJECT_ROOT, make_class_folders
from vision_pipelines.config import SourceConfig
from vision_pipelines.hooks import KaggleCredentialsHook
from vision_pipelines.sources import DownloadError, MissingCredentialsError, scan
from vision_pipelines.sources.downloads import COMPLETE_MARKER, download_kaggle, download_torchvision


@pytest.fixture
def kaggle_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")


@pytest.fixture
def no_kaggle_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
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
    assert list(tmp_path.iterdir()) == []
    done = download_kaggle("moltean/fruits", tmp_path, api_factory=FakeKaggleApi)
    assert len(list(done.rglob("*.jpg"))) == 4


def test_missing_kaggle_credentials_say_how_to_provide_them(tmp_path: Path, no_kaggle_credentials) -> None:
    with pytest.raises(MissingCredentialsError, match="(?s)credentials.yml.*KAGGLE_USERNAME.*source.kind=local"):
        download_kaggle("moltean/fruits", tmp_path / "downloads", api_factory=FakeKaggleApi)
    assert not any((tmp_path / "downloads").iterdir())


def test_kaggle_run_without_credentials_fails_fast_without_prompting(kedro_project: Path, tmp_path: Path) -> None:
    """The real command, stdin closed: a clear message within seconds, never a prompt."""
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path / "home"),
           "KEDRO_DISABLE_TELEMETRY": "true", "KAGGLE_CONFIG_DIR": str(tmp_path / "home" / ".kaggle")}
    started = time.time()
    done = subprocess.run([str(Path(sys.executable).parent / "kedro"), "run", "--pipelines=fruits"],
                          cwd=kedro_project, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "No Kaggle credentials found" in done.stdout + done.stderr
    assert time.time() - started < 60


def test_credentials_yml_is_exported_for_the_kaggle_client(tmp_path: Path, no_kaggle_credentials,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "credentials.yml").write_text("kaggle: {username: ann, key: k123}\n")
    context = SimpleNamespace(config_loader={"credentials": {}}, project_path=tmp_path)
    KaggleCredentialsHook().after_context_created(context)
    import os

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


class CutStreamHandler(http.server.BaseHTTPRequestHandler):
    """Promises 100 kB, sends 1 kB, then hangs up: a network failure mid-download."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(100_000))
        self.end_headers()
        self.wfile.write(b"\0" * 1000)
        self.wfile.flush()
        self.connection.close()

    def log_message(self, *args) -> None:
        pass


def test_network_failure_mid_download_keeps_nothing_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutStreamHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors",
                            [f"http://127.0.0.1:{server.server_address[1]}/"])
        earlier = tmp_path / "torchvision__CIFAR10"  # an earlier, complete download
        make_class_folders(earlier / "train", ["a", "b"], 1)
        (earlier / COMPLETE_MARKER).write_text("{}")
        before = sorted(p.relative_to(tmp_path) for p in earlier.rglob("*"))
        with pytest.raises(DownloadError, match="(?s)downloading torchvision FashionMNIST failed.*127.0.0.1"):
            download_torchvision("FashionMNIST", tmp_path)
    finally:
        server.shutdown()
    assert [p.name for p in tmp_path.iterdir()] == ["torchvision__CIFAR10"]  # no partial, no final
    assert sorted(p.relative_to(tmp_path) for p in earlier.rglob("*")) == before
