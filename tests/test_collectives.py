"""The in-process collectives: alone, each is the single-process answer; and the engine builds on
them without importing the launcher."""

import subprocess
import sys

import torch
from torch import nn

from vision_pipelines.collectives import CpuSyncBatchNorm, backend_for, rank_and_world, share_buffers, sync_batchnorm


def test_alone_the_collectives_are_the_single_process_answer() -> None:
    network = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    network[1].running_mean.fill_(0.5)
    share_buffers(network)  # no process group: nothing to share, nothing changes
    assert rank_and_world() == (0, 1)
    assert torch.equal(network[1].running_mean, torch.full((4,), 0.5))
    assert backend_for("auto", torch.device("cpu")) == "gloo"
    assert backend_for("auto", torch.device("cuda")) == "nccl"
    assert backend_for("gloo", torch.device("cuda")) == "gloo"
    converted = sync_batchnorm(network, torch.device("cpu"))
    assert isinstance(converted[1], CpuSyncBatchNorm)
    assert torch.equal(converted[1].running_mean, torch.full((4,), 0.5))


def test_the_engine_does_not_import_the_launcher() -> None:
    code = "import sys, vision_pipelines.engine; print('vision_pipelines.distributed' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"
