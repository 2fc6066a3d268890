"""Data-parallel training across processes, GPUs and machines, with torch.distributed.

The train node calls ``launch(job)`` when ``train.distributed`` asks for more than one process.
It starts ``nproc_per_node`` processes on this machine with PyTorch's elastic launcher, the API
behind ``torchrun`` (``torch.distributed.launcher.elastic_launch``); they meet the processes
that other machines start for the same job at the rendezvous ``rdzv_endpoint``. Every process
runs ``engine.train`` (NCCL between GPUs, gloo between CPUs):

- each takes its slice of every global batch of the same seeded epoch order, so
  ``train.batch_size`` is the global batch and the one-cycle schedule counts global steps;
- DistributedDataParallel averages gradients; batch-norm statistics are per process unless
  ``sync_batchnorm``; after each epoch every process gets rank 0's, so all hold one model;
- rank 0 alone reads and writes the checkpoint, and hands its content to the others on resume;
- each machine's train node returns its first process's result, which is every process's
  (the weights are identical, the history is over all processes).

A process that fails ends the whole job within seconds, and a collective that waits longer than
``timeout_s`` fails: the node raises ``DistributedTrainingError``, and nothing saved is touched.
"""

from __future__ import annotations

import logging
import logging.config
import os
import signal
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from .engine import TrainingJob, TrainResult, train

log = logging.getLogger(__name__)


class DistributedTrainingError(RuntimeError):
    """A training process failed or timed out; the whole job was stopped."""


def launch(job: TrainingJob, logging_config: dict | None = None) -> TrainResult:
    """Train ``job`` in ``train.distributed``'s processes; returns this machine's result."""
    settings = job.train.distributed
    endpoint = settings.rdzv_endpoint or f"127.0.0.1:{_free_port()}"
    config = LaunchConfig(
        min_nodes=settings.nnodes, max_nodes=settings.nnodes, nproc_per_node=settings.nproc_per_node,
        run_id=settings.rdzv_id, rdzv_backend="c10d", rdzv_endpoint=endpoint,
        rdzv_configs={"timeout": settings.timeout_s, "join_timeout": settings.timeout_s},
        max_restarts=0, monitor_interval=0.5, start_method="spawn", shutdown_timeout=10)
    log.info("distributed training: %d process(es) here, %d machine(s), rendezvous at %s",
             settings.nproc_per_node, settings.nnodes, endpoint)
    try:
        results = elastic_launch(config, _worker)(job, logging_config)
    except ChildFailedError as error:
        failures = "; ".join(f"rank {rank}: {_describe(failure)}" for rank, failure in sorted(error.failures.items()))
        raise DistributedTrainingError(f"distributed training failed ({failures}); every process was "
                                       "stopped, and the saved checkpoint and outputs are unchanged") from None
    return next(result for _, result in sorted(results.items()) if result is not None)


def backend_for(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    return "nccl" if device.type == "cuda" else "gloo"


def _worker(job: TrainingJob, logging_config: dict | None) -> TrainResult | None:
    """One training process, as the elastic launcher starts it (RANK, LOCAL_RANK, ... set)."""
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    if logging_config:
        logging.config.dictConfig(logging_config)
    if rank != 0:  # one voice: the others only warn
        logging.getLogger("vision_pipelines").setLevel(logging.WARNING)
    use_cuda = job.compute.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:  # processes on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    backend = backend_for(job.train.distributed.backend, torch.device("cuda" if use_cuda else "cpu"))
    dist.init_process_group(backend, timeout=timedelta(seconds=job.train.distributed.timeout_s))
    try:
        result = train(job)
    finally:
        dist.destroy_process_group()
    return result if local_rank == 0 else None


def _describe(failure) -> str:
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    message = failure.message if isinstance(failure.message, str) else str(failure.message)
    return f"exit code {code}" + (f", {message.strip().splitlines()[-1]}" if message and message.strip() else "")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
