"""Shared fixtures: tiny made-up image datasets and a throw-away copy of the Kedro project.

Tests never write into the real project's data/ folder: ``kedro_project`` copies conf/ and
pyproject.toml into a temporary folder and runs Kedro there. The helpers the benchmark scripts
use too (the project copy, the newest version of an output, the image makers, the samples'
folder) live in benchmarks/common.py and are imported here under the tests' names.
"""

from __future__ import annotations

import http.server
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vision_pipelines.config import ComputeConfig, ImageConfig, ModelConfig, SourceConfig, SplitConfig

# What the tests share with the benchmark scripts lives once, in benchmarks/common.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
# Imported under the names the tests use; several are only re-exported from here.
from common import KEDRO, SAMPLES, make_class_folders, make_image  # noqa: F401
from common import PROJECT as PROJECT_ROOT  # noqa: F401
from common import latest_version as latest  # noqa: F401
from common import project_copy as make_project

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist starts one worker per core: one torch thread each (and in the Kedro processes
    # they start), or the workers' OpenMP thread teams wait on each other's cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until it returns something true, and return that; after ``timeout``
    seconds fail, naming ``what`` was awaited. Tests wait this way, never a fixed time: on a busy
    machine anything can take longer, and a fixed wait is either too short or wasted."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)
    return result


def make_contest_csv_layout(root: Path, classes: int = 3, train_per_class: int = 8, test: int = 6,
                            size=(28, 28)) -> Path:
    """The "identify the apparels" layout: train_x/train.csv + train_x/train/<id>.png, test, sample."""
    train_rows, image_id = [], 1
    for label in range(classes):
        for _ in range(train_per_class):
            make_image(root / "train_AB" / "train" / f"{image_id}.png", label, size, "L", seed=image_id)
            train_rows.append(f"{image_id},{label}")
            image_id += 1
    (root / "train_AB" / "train.csv").write_text("id,label\n" + "\n".join(train_rows) + "\n")
    test_ids = []
    for n in range(test):
        make_image(root / "test_CD" / "test" / f"{image_id}.png", n % classes, size, "L", seed=image_id)
        test_ids.append(image_id)
        image_id += 1
    (root / "test_CD" / "test.csv").write_text("id\n" + "\n".join(map(str, test_ids)) + "\n")
    # the contest's sample submission lists the test ids in its own order
    (root / "sample_submission_EF.csv").write_text(
        "id,label\n" + "\n".join(f"{i},0" for i in reversed(test_ids)) + "\n")
    return root


@pytest.fixture(autouse=True)
def no_mlflow_run_left_open() -> Iterator[None]:
    """Kedro runs share one process in tests: a run that fails leaves kedro-mlflow's MLflow run
    active, which the next session would take over. End it after each test."""
    yield
    mlflow = sys.modules.get("mlflow")
    while mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def fruits_like(tmp_path: Path) -> Path:
    """Fruits-360's layout nested as the Kaggle archive nests it: fruits-360/Training, Test."""
    root = tmp_path / "fruits_download"
    classes = ["Apple Red 1", "Banana", "Kiwi"]
    make_class_folders(root / "fruits-360" / "Training", classes, 12)
    make_class_folders(root / "fruits-360" / "Test", classes, 4, start_seed=500)
    return root


# Settings the node tests share: class folders Training/<class>, Test/<class>, tiny images and net.
FOLDERS_SOURCE = SourceConfig(kind="local", path="unused", train_dir="Training", test_dir="Test")
SPLIT = SplitConfig(val_fraction=0.2, seed=43)
IMAGES = ImageConfig(size=16)
MODEL = ModelConfig(name="resnet9", width=8)
CPU = ComputeConfig(device="cpu")


def make_folders_dataset(root: Path, classes=("apple", "kiwi", "lime"), train: int = 10, test: int = 2,
                         size=(24, 24)) -> Path:
    """``Training/<class>`` x ``train`` and ``Test/<class>`` x ``test`` made-up images."""
    make_class_folders(root / "Training", list(classes), train, size=size)
    make_class_folders(root / "Test", list(classes), test, size=size, start_seed=500)
    return root


def build_cache(raw: Path, images: ImageConfig = IMAGES, split: SplitConfig = SPLIT):
    """The ``CacheBuild`` of a ``make_folders_dataset`` folder, as the pipeline's nodes make it."""
    from vision_pipelines.pipelines.image_classification import nodes

    manifest, classes = nodes.build_manifest(raw, FOLDERS_SOURCE, split)
    return nodes.build_image_cache(raw, manifest, classes, images)


def write_cache(build, folder: Path):
    """Save a ``CacheBuild`` as the catalog does and load it back: an ``ImageCache``."""
    from vision_pipelines.datasets import ImageCacheDataset

    dataset = ImageCacheDataset(path=str(folder))
    dataset.save(build)
    return dataset.load()


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away copy of the project as the working directory."""
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    return project


def run_kedro(project: Path, pipeline: str, params: dict | None = None, env: str = "cpu",
              tags: list[str] | None = None, load_versions: dict[str, str] | None = None) -> None:
    """``kedro run --pipelines=<pipeline> --env=<env> --params=... [--tags ...] [--load-versions ...]``
    inside ``project``, in this process."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.runner import SequentialRunner

    nested: dict = {}
    for dotted, value in (params or {}).items():  # "fruits.train.epochs" -> nested dicts, as the CLI does
        *parents, leaf = dotted.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=nested) as session:
        session.run(pipeline_names=[pipeline], tags=tags, load_versions=load_versions, runner=SequentialRunner())


def fast_params(dataset: str, **sections) -> dict:
    """Runtime parameters for a quick run of ``dataset``: tiny images and net, few epochs."""
    params = {
        f"{dataset}.images.size": 16,
        f"{dataset}.model.width": 8,
        f"{dataset}.train.epochs": 3,
        f"{dataset}.train.batch_size": 16,
    }
    for key, value in sections.items():
        params[f"{dataset}.{key.replace('__', '.')}"] = value
    return params


def download_entries(folder: Path) -> list[str]:
    """The names in a downloads folder, sorted, without the ``<download>.lock`` files that stay
    beside the downloads (removing a lock file others may be waiting on would void the lock)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix != ".lock")


def sample_dir(name: str) -> Path:
    """A real sample from ../shared/datasets, or skip the test."""
    folder = SAMPLES / name
    if not folder.is_dir():
        pytest.skip(f"real sample {folder} not present (set DATASETS_DIR)")
    return folder


class CutStreamHandler(http.server.BaseHTTPRequestHandler):
    """Promises 100 kB, sends 1 kB, then hangs up: a network failure mid-download."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\0" * 1000)
        self.wfile.flush()
        self.connection.close()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def cut_stream_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A server on 127.0.0.1 that cuts every download short (no proxy in between)."""
    for proxy in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutStreamHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


# --- notebook and kedro-viz ---


def finished_fruits_run(root: Path, **settings) -> Path:
    """A throw-away project under ``root`` where a quick fruits run (three made-up classes, 12
    training and 4 test images each, in ``root/images``) has finished with ``settings``."""
    images = make_folders_dataset(root / "images", ("Apple", "Banana", "Kiwi"), train=12, test=4)
    project = make_project(root / "project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        run_kedro(project, "fruits", fast_params("fruits", **{"source.kind": "local", "source.path": str(images)},
                                                 **settings))
    return project


@pytest.fixture(scope="session")
def fruits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished quick fruits run, shared by the tests that only read a run's artifacts: do not
    change its data/."""
    return finished_fruits_run(tmp_path_factory.mktemp("fruits_run"))


# --- prediction and export ---

FP32_CPU = {"compute.device": "cpu", "compute.mixed_precision": False}  # exactly repeatable predictions


@pytest.fixture(scope="session")
def fruits_fp32_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished quick fruits run in fp32 on the CPU. The prediction and export tests add their
    own outputs to its data/; a test that changes the training's artifacts copies it first."""
    return finished_fruits_run(tmp_path_factory.mktemp("fruits_fp32_run"), **FP32_CPU)


# --- experiment tracking ---


@pytest.fixture(scope="session", autouse=True)
def session_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every Kedro run of the session logs to one MLflow store (``MLFLOW_TRACKING_URI``, which
    conf/base/mlflow.yml honours), its files beside it: creating a store's tables costs about a
    second per project, and the default store is found from the working directory, which for
    many tests is the real project. ``tests/test_tracking.py`` checks the default store itself."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture
def project_log(caplog: pytest.LogCaptureFixture):
    """This project's log lines (``vision_pipelines`` and below), whatever the logging configuration
    Kedro installs (its first import would remove a handler attached before)."""
    import kedro.framework.project  # noqa: F401

    logger = logging.getLogger("vision_pipelines")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="vision_pipelines")
    yield caplog
    logger.removeHandler(caplog.handler)
