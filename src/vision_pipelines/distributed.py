"""Data-parallel training across processes, GPUs and machines, with torch.distributed.

The train node calls ``launch(job)`` when ``train.distributed`` asks for more than one process.
It starts ``nproc_per_node`` processes on this machine with PyTorch's elastic launcher, the API
behind ``torchrun`` (``torch.distributed.launcher.elastic_launch``); they meet the processes
that other machines start for the same job at the rendezvous ``rdzv_endpoint``. Every process
runs ``engine.train`` (NCCL between GPUs, gloo between CPUs):

- each takes its slice of every global batch of the same seeded epoch order, with the
  augmentation drawn for the whole global batch, so ``train.batch_size`` is the global batch
  and the one-cycle schedule counts global steps;
- DistributedDataParallel averages gradients; batch-norm statistics are per process unless
  ``sync_batchnorm``; after each epoch every process gets rank 0's, so all hold one model;
- rank 0 alone reads and writes the checkpoint, and hands its content to the others on resume
  (on several machines, rank 0 runs on the machine whose host name sorts first, as torch's
  rendezvous orders them: a rerun on the same machines finds the checkpoint there);
- each machine's train node returns its first process's result, which is every process's
  (the weights are identical, the history is over all processes): every machine saves the
  same outputs to its own data/.

A process that fails, or a lost parent, ends the whole job within seconds, and a collective or
rendezvous that waits longer than ``timeout_s`` fails: the node raises
``DistributedTrainingError``. Outputs saved before are untouched, and the checkpoint keeps the
last completed epoch, from which the same command resumes.
"""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import RendezvousError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from .collectives import backend_for
from .console import use_console
from .engine import TrainingJob, TrainResult, train

log = logging.getLogger(__name__)

# The signals the elastic launcher catches while it runs (to stop its processes cleanly).
LAUNCHER_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


class DistributedTrainingError(RuntimeError):
    """A training process failed, or the machines did not meet; the whole job was stopped."""


def launch(job: TrainingJob, logging_config: dict | None = None) -> TrainResult:
    """Train ``job`` in ``train.distributed``'s processes; returns this machine's result."""
    settings = job.train.distributed
    _check_devices(job)
    # One machine: the rendezvous is this process's, on a port the system picks (torchrun --standalone).
    endpoint = settings.rdzv_endpoint or "127.0.0.1:0"
    config = LaunchConfig(
        min_nodes=settings.nnodes, max_nodes=settings.nnodes, nproc_per_node=settings.nproc_per_node,
        run_id=settings.rdzv_id, rdzv_backend="c10d", rdzv_endpoint=endpoint,
        rdzv_configs={"join_timeout": settings.timeout_s}, signals_to_handle=",".join(LAUNCHER_SIGNALS),
        max_restarts=0, monitor_interval=0.5, start_method="spawn")
    log.info("distributed training: %d process(es) on this machine, %d machine(s)%s", settings.nproc_per_node,
             settings.nnodes, f", rendezvous at {endpoint} ({settings.rdzv_id})" if settings.nnodes > 1 else "")
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in LAUNCHER_SIGNALS
                if hasattr(signal, name)}
    try:
        results = elastic_launch(config, _worker)(job, logging_config)
    except ChildFailedError as error:
        failures = "; ".join(f"rank {rank}: {_describe(failure)}" for rank, failure in sorted(error.failures.items()))
        raise DistributedTrainingError(
            f"distributed training failed ({failures}); every process was stopped. Outputs saved before "
            "are unchanged and the checkpoint keeps the last completed epoch: the same command resumes "
            "from it") from None
    except RendezvousError as error:
        raise DistributedTrainingError(
            f"the {settings.nnodes} machines did not all meet at the rendezvous {endpoint} (rdzv_id "
            f"{settings.rdzv_id!r}) within train.distributed.timeout_s={settings.timeout_s} s"
            f"{f' ({error})' if str(error) else ''}: start the same `kedro run ... --tags=train` on every "
            "machine, with the same rdzv_endpoint and rdzv_id") from None
    except SignalException as error:  # the launcher stopped its processes; stop as Ctrl-C does
        raise KeyboardInterrupt(f"stopped by {error.sigval.name}") from None
    finally:  # the launcher's signal handlers would outlive it
        if threading.current_thread() is threading.main_thread():
            for name, handler in handlers.items():
                signal.signal(getattr(signal, name), handler)
    return next(result for _, result in sorted(results.items()) if result is not None)


def _worker(job: TrainingJob, logging_config: dict | None) -> TrainResult | None:
    """One training process, as the elastic launcher starts it (RANK, LOCAL_RANK, ... set)."""
    _exit_with_parent()
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    if logging_config:
        logging.config.dictConfig(logging_config)
        use_console()
    if rank != 0:  # one voice: the others only warn
        logging.getLogger("vision_pipelines").setLevel(logging.WARNING)
    use_cuda = job.compute.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:  # processes on one machine share its cores
        torch.set_num_threads(max(1, _cpu_count() // local_world))
    backend = backend_for(job.train.distributed.backend, torch.device("cuda" if use_cuda else "cpu"))
    dist.init_process_group(backend, timeout=timedelta(seconds=job.train.distributed.timeout_s))
    try:
        _check_same_job(job)
        result = train(job)
    finally:
        dist.destroy_process_group()
    return result if local_rank == 0 else None


def _check_same_job(job: TrainingJob) -> None:
    """Every process, on every machine, must train on the same data with the same settings."""
    fingerprints: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(fingerprints, job.fingerprint)
    if len(set(fingerprints)) > 1:
        differing = [rank for rank, value in enumerate(fingerprints) if value != fingerprints[0]]
        raise DistributedTrainingError(
            f"rank(s) {differing} have other training data or settings than rank 0: every machine must "
            "build the same image cache (same raw images, split and image settings) and run with the "
            "same parameters")


def _check_devices(job: TrainingJob) -> None:
    wanted = job.train.distributed.nproc_per_node
    if job.compute.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < wanted:
        raise DistributedTrainingError(
            f"train.distributed.nproc_per_node={wanted} but this machine has {torch.cuda.device_count()} "
            "CUDA device(s): one process per device")


def _exit_with_parent() -> None:
    """End this process when the one that started it dies (even by SIGKILL), rather than train
    on as an orphan that writes checkpoints beside a rerun."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        print(f"training process {os.getpid()}: the launching process ended, stopping", file=sys.stderr)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _describe(failure) -> str:
    """One line on how a process failed: its error, or the signal that killed it."""
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    message = failure.message
    if isinstance(message, dict):  # the error file the launcher's @record wrote
        message = message.get("message", "")
    lines = str(message or "").strip().splitlines()
    return f"exit code {code}" + (f", {lines[-1]}" if lines and lines[-1] != "<N/A>" else "")
