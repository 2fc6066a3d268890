"""Data-parallel training (train.distributed) on CPU with gloo: 2 processes learn what 1 process
learns with the same global batch, write their outputs once, stop quickly and cleanly when a
worker dies, resume, and train across two "machines" (two kedro runs on 127.0.0.1).

Every run is tiny (16 px images, width 8): the runs shared by several tests are module fixtures.
Dropout is off and precision fp32, so that 1 and 2 processes can be compared step for step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from conftest import KEDRO, latest, make_folders_dataset, make_project, run_kedro, wait_until
from vision_pipelines.collectives import sync_batchnorm

SIGINT_BEFORE, SIGTERM_BEFORE = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
EPOCHS = 8
MODELS = Path("data/06_models/fruits")
REPORTS = Path("data/08_reporting/fruits")
CHECKPOINT = MODELS / "checkpoint.pt"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 60 training images (144 train / 36 val: 9 global batches of 16), 15 test."""
    root = tmp_path_factory.mktemp("distributed_data")
    return make_folders_dataset(root, ("a", "b", "c"), train=60, test=5, size=(16, 16))


def params(dataset: Path, **distributed) -> dict:
    settings = {"source.kind": "local", "source.path": str(dataset), "images.size": 16, "model.width": 8,
                "model.dropout": 0.0, "compute.mixed_precision": False, "train.epochs": EPOCHS,
                "train.batch_size": 16, **{f"train.distributed.{k}": v for k, v in distributed.items()}}
    return {f"fruits.{key}": value for key, value in settings.items()}


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def trained(tmp_path_factory: pytest.TempPathFactory, dataset: Path, name: str, **distributed) -> Path:
    """A project copy in which ``kedro run --pipelines=fruits`` ran with these settings."""
    project = make_project(tmp_path_factory.mktemp(name) / "project")
    with working_directory(project):
        run_kedro(project, "fruits", params(dataset, **distributed))
    return project


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    return trained(tmp_path_factory, dataset, "one_process")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    return trained(tmp_path_factory, dataset, "two_processes", nproc_per_node=2)


def history(project: Path) -> pd.DataFrame:
    return pd.read_csv(latest(project / REPORTS / "training_history.csv")).drop(columns="seconds")


def card(project: Path) -> dict:
    return json.loads(latest(project / MODELS / "model_card.json").read_text())


def weights(project: Path) -> dict[str, torch.Tensor]:
    return load_file(latest(project / MODELS / "model.safetensors"))


def versions(project: Path) -> dict[str, list[str]]:
    """Each versioned output (a folder of timestamped versions of one file) and its versions."""
    found = {}
    for folder in (project / "data").rglob("*"):
        stamps = [v.name for v in folder.iterdir() if (v / folder.name).is_file()] if folder.is_dir() else []
        if stamps:
            found[str(folder.relative_to(project))] = sorted(stamps)
    return found


# --- what 2 processes learn -------------------------------------------------------------------


def test_two_processes_learn_what_one_learns_with_the_same_global_batch(one_process: Path,
                                                                        two_processes: Path) -> None:
    one, two = history(one_process), history(two_processes)
    assert card(one_process)["training"]["processes"] == 1 and card(two_processes)["training"]["processes"] == 2
    # The one-cycle schedule counts global steps: the same learning rate at every step.
    steps = [pd.read_csv(latest(p / REPORTS / "training_steps.csv")) for p in (one_process, two_processes)]
    assert len(steps[0]) == len(steps[1]) == EPOCHS * 9
    pd.testing.assert_series_equal(steps[0]["lr"], steps[1]["lr"])
    # Both see the same images with the same augmentation at every step; only batch-norm
    # statistics differ (over 8 images per process instead of 16). On this easy data both
    # learn it (chance is 1/3), and end within 0.1 of each other: a process training on the
    # wrong labels or not sharing gradients would be far off.
    assert one["val_accuracy"].iloc[-1] >= 0.9 and two["val_accuracy"].iloc[-1] >= 0.9
    assert abs(one["val_accuracy"].iloc[-1] - two["val_accuracy"].iloc[-1]) <= 0.1
    metrics = [json.loads(latest(p / REPORTS / "metrics.json").read_text()) for p in (one_process, two_processes)]
    assert abs(metrics[0]["accuracy"] - metrics[1]["accuracy"]) <= 0.15  # 15 test images: 2 may differ


def test_sync_batchnorm_trains_as_one_process_does(tmp_path_factory: pytest.TempPathFactory, dataset: Path,
                                                   one_process: Path) -> None:
    """With batch-norm statistics over the global batch, a 2-process step is the 1-process step:
    same images, augmentations, statistics and averaged gradients. Only the order of floating
    point sums differs (all-reduce, per-process reductions), so the losses agree to ~1e-6 at
    first, and stay close as those last-bit differences grow over the steps: how close depends on
    the kernels oneDNN picks for the thread count (measured over the first epoch: 1e-7 of the loss
    with 2 threads, 3e-4 for the train and 2e-3 for the validation loss with 1). Without
    synchronised statistics (8 images per statistic, not 16) they differ by 10 % or more."""
    synced = trained(tmp_path_factory, dataset, "sync_batchnorm", nproc_per_node=2, sync_batchnorm=True)
    one, two = history(one_process), history(synced)
    # (The history's train loss and accuracy are over both processes' halves, all-reduced: one
    # process's half alone would be far from the 1-process figures.)
    assert two["train_loss"].iloc[0] == pytest.approx(one["train_loss"].iloc[0], rel=1e-2)
    assert two["train_accuracy"].iloc[0] == one["train_accuracy"].iloc[0]
    assert two["val_loss"].iloc[0] == pytest.approx(one["val_loss"].iloc[0], rel=1e-2)
    assert card(synced)["training"]["config"]["distributed"]["sync_batchnorm"] is True


def run_in_processes(function, *args, processes: int = 2) -> None:
    """``function(rank, world, port, *args)`` in ``processes`` spawned processes."""
    mp.spawn(function, args=(processes, free_port(), *args), nprocs=processes)


def _sync_batchnorm_step(rank: int, world: int, port: int, images: torch.Tensor, upstream: torch.Tensor,
                         out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    layer = sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))
    part = slice(rank * len(images) // world, (rank + 1) * len(images) // world)
    mine = images[part].clone().requires_grad_()
    output = layer(mine)
    (output * upstream[part]).sum().backward()
    torch.save({"output": output.detach(), "input_grad": mine.grad, "weight_grad": layer[0].weight.grad,
                "state": layer[0].state_dict()}, out / f"{rank}.pt")
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_is_batchnorm_over_the_whole_batch(tmp_path: Path) -> None:
    """nn.SyncBatchNorm needs a GPU; on CPUs the CPU layer gives what one BatchNorm2d gives on
    the whole batch: outputs, gradients (DDP then averages the weights' over processes), and
    running statistics. Unequal slices (5 and 6 images) are weighted by their size."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(11, 3, 4, 4, generator=generator) * 3 + 2
    upstream = torch.randn(11, 3, 4, 4, generator=generator)
    run_in_processes(_sync_batchnorm_step, images, upstream, tmp_path)
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]

    reference, whole = nn.BatchNorm2d(3), images.clone().requires_grad_()
    output = reference(whole)
    (output * upstream).sum().backward()
    torch.testing.assert_close(torch.cat([p["output"] for p in parts]), output.detach())
    torch.testing.assert_close(torch.cat([p["input_grad"] for p in parts]), whole.grad)
    torch.testing.assert_close(sum(p["weight_grad"] for p in parts), reference.weight.grad)
    for part in parts:
        assert part["state"].keys() == reference.state_dict().keys()  # loads into BatchNorm2d
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(part["state"][key], value)


# --- outputs, failures, resume -------------------------------------------------------------------


def test_two_processes_write_every_output_once(two_processes: Path) -> None:
    found = versions(two_processes)
    for output in ("model.safetensors", "model_card.json", "training_history.csv", "training_steps.csv",
                   "metrics.json", "submission.csv"):
        assert any(name.endswith(output) for name in found), output
    assert all(len(stamps) == 1 for stamps in found.values()), found
    assert card(two_processes)["training"]["processes"] == 2
    assert torch.load(two_processes / CHECKPOINT, weights_only=True)["state"]["epoch"] == EPOCHS
    assert not [p for p in (two_processes / "data").rglob("*partial*")]


def test_the_launcher_leaves_the_signal_handlers_as_it_found_them(two_processes: Path) -> None:
    """The elastic launcher catches SIGINT/SIGTERM while it runs; afterwards Ctrl-C and SIGTERM
    must do again what they did before (the 2-process run above ran in this process)."""
    assert signal.getsignal(signal.SIGINT) is SIGINT_BEFORE and signal.getsignal(signal.SIGTERM) is SIGTERM_BEFORE


def kedro_run(project: Path, overrides: dict, log_name: str = "run.log", tags: list[str] | None = None,
              **environment) -> subprocess.Popen:
    """``kedro run --pipelines=fruits --env=cpu --params=...`` in ``project``, in the background."""
    command = [KEDRO, "run", "--pipelines=fruits", "--env=cpu",
               "--params=" + ",".join(f"{k}={v}" for k, v in overrides.items())]
    if tags:
        command.append("--tags=" + ",".join(tags))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "300", **environment}
    with open(project / log_name, "w") as log:
        return subprocess.Popen(command, cwd=project, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)


def finished(process: subprocess.Popen, project: Path, log_name: str = "run.log") -> str:
    process.wait(timeout=300)
    log = (project / log_name).read_text()
    assert process.returncode == 0, log[-5000:]
    return log


def training_processes(pid: int) -> list[int]:
    """The training processes the kedro run ``pid`` spawned, in rank order (started in order)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            children.append(int(stat.parent.name))
    return sorted(children)


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["state"]["epoch"]
    except Exception:  # noqa: BLE001 - not written yet
        return 0


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def saved_files(project: Path) -> dict[str, bytes]:
    """Every version of every versioned output, and its content."""
    return {f"{name}/{stamp}": (project / name / stamp / Path(name).name).read_bytes()
            for name, stamps in versions(project).items() for stamp in stamps}


def test_a_killed_worker_fails_the_run_quickly_and_the_rerun_resumes(tmp_path: Path, dataset: Path,
                                                                    two_processes: Path) -> None:
    """Kill rank 1 (SIGKILL) after an epoch: the run fails within seconds naming it, every
    process is gone, the earlier run's outputs are untouched and the checkpoint holds the last
    completed epoch; the same command then resumes and ends with the uninterrupted run's
    weights, bit for bit (gloo sums 2 processes' gradients in the same order every time)."""
    project = tmp_path / "project"
    shutil.copytree(two_processes, project, symlinks=True)  # an earlier run's outputs and its cache
    (project / CHECKPOINT).unlink()
    before = saved_files(project)
    overrides = params(dataset, nproc_per_node=2)

    process = kedro_run(project, overrides, tags=["train"])
    wait_until(lambda: checkpoint_epoch(project / CHECKPOINT) >= 1 or process.poll() is not None, 240,
               "the first epoch's checkpoint")
    workers = training_processes(process.pid)
    assert len(workers) == 2 and process.poll() is None, (project / "run.log").read_text()[-3000:]
    os.kill(workers[1], signal.SIGKILL)
    killed = time.time()
    process.wait(timeout=120)
    stopped_after = time.time() - killed
    log = (project / "run.log").read_text()
    assert process.returncode != 0
    assert stopped_after < 60, f"took {stopped_after:.0f} s to stop"
    assert "DistributedTrainingError" in log and "rank 1: killed by SIGKILL" in " ".join(log.split())
    assert not [pid for pid in workers if alive(pid)]

    assert saved_files(project) == before
    killed_at = checkpoint_epoch(project / CHECKPOINT)
    assert 1 <= killed_at < EPOCHS

    log = finished(kedro_run(project, overrides, tags=["train"]), project)
    assert f"resuming from {project / CHECKPOINT} after epoch {killed_at} of {EPOCHS}" in " ".join(log.split())
    resumed, reference = weights(project), weights(two_processes)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)
    pd.testing.assert_frame_equal(history(project), history(two_processes))


# --- several machines ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine_params(dataset: Path, **settings) -> dict:
    """Settings of a 2-machine job: 1 process each, meeting at a free port of 127.0.0.1."""
    return params(dataset, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", **{"timeout_s": 120, **settings})


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> list[Path]:
    """Two project copies ("machines", each with its own data/) that ran the whole pipeline with
    nnodes=2 at the same rendezvous. One torch thread each: they share this machine's cores."""
    projects = [make_project(tmp_path_factory.mktemp(f"machine{n}") / "project") for n in range(2)]
    overrides = machine_params(dataset)
    runs = [kedro_run(project, overrides, OMP_NUM_THREADS="1") for project in projects]
    for run, project in zip(runs, projects):
        finished(run, project)
    return projects


def test_two_kedro_runs_on_two_machines_train_as_one_job(two_machines: list[Path], two_processes: Path) -> None:
    """They train one 2-process job: each machine saves the same model in its own data/, and
    rank 0's machine alone keeps the checkpoint."""
    assert [card(p)["training"]["processes"] for p in two_machines] == [2, 2]
    models = [latest(p / MODELS / "model.safetensors").read_bytes() for p in two_machines]
    assert models[0] == models[1]
    assert sorted((p / CHECKPOINT).exists() for p in two_machines) == [False, True]
    pd.testing.assert_frame_equal(history(two_machines[0]), history(two_machines[1]))
    # The same job as 2 processes on one machine: the same slices, steps and figures, to the
    # last bits, which the convolutions' thread count can change.
    torch.testing.assert_close(torch.tensor(history(two_machines[0]).to_numpy()),
                               torch.tensor(history(two_processes).to_numpy()), rtol=1e-3, atol=1e-4)


def test_machines_with_other_data_or_settings_refuse_to_train_together(two_machines: list[Path],
                                                                        dataset: Path) -> None:
    """Every machine runs its own train stage (``--tags=train``, on the cache it built); with
    other settings on one of them, both stop before training, saying so."""
    overrides = machine_params(dataset)
    runs = [kedro_run(project, {**overrides, "fruits.train.seed": seed}, "mismatch.log", ["train"],
                      OMP_NUM_THREADS="1") for project, seed in zip(two_machines, (1, 2))]
    for run, project in zip(runs, two_machines):
        run.wait(timeout=300)
        log = " ".join((project / "mismatch.log").read_text().split())
        assert run.returncode != 0 and "other training data or settings than rank 0" in log, log[-3000:]
        assert len(versions(project)[str(MODELS / "model.safetensors")]) == 1  # nothing saved


def test_a_machine_alone_at_the_rendezvous_fails_after_the_timeout(two_machines: list[Path],
                                                                   dataset: Path) -> None:
    started = time.time()
    run = kedro_run(two_machines[0], machine_params(dataset, timeout_s=5), "alone.log", ["train"])
    run.wait(timeout=300)
    log = " ".join((two_machines[0] / "alone.log").read_text().split())
    assert run.returncode != 0 and "did not all meet at the rendezvous" in log, log[-3000:]
    assert time.time() - started < 60


def test_training_processes_end_with_a_killed_kedro_run(tmp_path: Path, dataset: Path,
                                                      two_processes: Path) -> None:
    """A kedro run killed outright (SIGKILL: no chance to stop its processes) leaves no training
    process behind to go on writing checkpoints beside a rerun."""
    project = tmp_path / "project"
    shutil.copytree(two_processes, project, symlinks=True)
    (project / CHECKPOINT).unlink()
    process = kedro_run(project, params(dataset, nproc_per_node=2), tags=["train"])
    wait_until(lambda: len(training_processes(process.pid)) >= 2 or process.poll() is not None, 240,
               "two training processes")
    workers = training_processes(process.pid)
    assert len(workers) == 2, (project / "run.log").read_text()[-3000:]
    process.kill()
    process.wait()
    wait_until(lambda: not [pid for pid in workers if alive(pid)], 30, "the training processes to end")
