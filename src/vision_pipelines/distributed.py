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
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives
from torch import nn
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import RendezvousError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from .console import use_console

if TYPE_CHECKING:  # engine imports this module (sync_batchnorm)
    from .engine import TrainingJob, TrainResult

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


def backend_for(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    return "nccl" if device.type == "cuda" else "gloo"


def sync_batchnorm(network: nn.Module, device: torch.device) -> nn.Module:
    """``network`` with its batch-norm layers normalising over the global batch, across processes:
    ``nn.SyncBatchNorm``, whose fused kernels need a GPU; on the CPU, ``CpuSyncBatchNorm``."""
    if device.type == "cpu":
        return CpuSyncBatchNorm.convert(network)
    return nn.SyncBatchNorm.convert_sync_batchnorm(network)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over every process's slice of the batch on CPUs (gloo), which ``nn.SyncBatchNorm``
    does not support (nor does DistributedDataParallel let it run there).

    In training, the mean and variance are all-reduced sums, through a differentiable all-reduce
    whose backward all-reduces the gradients, as SyncBatchNorm's backward does. The state (weight,
    bias, running statistics) is BatchNorm's, and evaluation uses the running statistics.
    """

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every batch-norm layer replaced by one of these, with its state."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            layer = cls(module.num_features, module.eps, module.momentum, module.affine,
                        module.track_running_stats)
            layer.load_state_dict(module.state_dict())
            return layer.train(module.training)
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        dims, shape = [0, *range(2, input.dim())], [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])])
        total = _all_reduce(local)
        count = total[-1]
        mean = total[:-1] / count
        centred = x - mean.view(shape)  # two passes: stable, unlike E[x^2] - E[x]^2
        var = _all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * count / (count - 1), momentum)  # unbiased, as BatchNorm
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over every process, differentiable: the backward sums the gradients likewise
    (torch.distributed's functional collectives, which torch.distributed.nn.functional defers to)."""
    return functional_collectives.all_reduce(tensor, "sum", dist.group.WORLD).wait()


def _worker(job: TrainingJob, logging_config: dict | None) -> TrainResult | None:
    """One training process, as the elastic launcher starts it (RANK, LOCAL_RANK, ... set)."""
    from .engine import train  # here: engine imports this module

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
