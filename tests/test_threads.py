"""The thread policy (src/vision_pipelines/threads.py): ``compute.threads: auto`` picks the
fastest thread count and picks again when the load changes; a fixed count is set as given.
Simulated steps and an injected clock: no real timing."""

from __future__ import annotations

import pytest
import torch

from vision_pipelines import engine
from vision_pipelines.config import ComputeConfig, ConfigError, TrainConfig
from vision_pipelines.loader import Loader, MemoryImages
from vision_pipelines.models import ResNet9
from vision_pipelines.threads import ThreadPolicy


class SimulatedCpu:
    """A clock and a thread setter for a step whose duration depends on the thread count and
    on whether another process competes for the cores: idle, 2 threads are fastest; loaded,
    the 2-thread team waits for a core it does not get, and 1 thread is fastest."""

    SECONDS = {False: {2: 0.05, 1: 0.09}, True: {2: 0.40, 1: 0.10}}  # loaded -> threads -> s per step

    def __init__(self, seconds: dict | None = None) -> None:
        self.seconds = seconds or self.SECONDS
        self.now, self.threads, self.loaded, self.set_calls = 0.0, 2, False, []

    def clock(self) -> float:
        return self.now

    def set_threads(self, count: int) -> None:
        self.threads = count
        self.set_calls.append(count)

    def step(self) -> None:
        self.now += self.seconds[self.loaded][self.threads]


def test_auto_moves_to_the_fastest_count_when_the_load_changes() -> None:
    cpu = SimulatedCpu()
    policy = ThreadPolicy("auto", cores=2, set_threads=cpu.set_threads, clock=cpu.clock, window=5,
                          recheck_every=30)
    assert policy.calibrate(cpu.step) == 2  # idle: all cores
    cpu.loaded = True  # another process starts
    for _ in range(40):
        policy.timed(cpu.step)
    assert policy.threads == 1 and cpu.threads == 1
    assert policy.trials == 2
    cpu.loaded = False  # no slower on 1 thread: the periodic re-check finds 2 faster again
    for _ in range(40):
        policy.timed(cpu.step)
    assert cpu.threads == 2 and policy.trials == 3


def test_auto_without_calibration_times_the_first_steps_and_keeps_the_fastest() -> None:
    cpu = SimulatedCpu({True: {4: 0.8, 2: 0.4, 1: 0.1}})
    cpu.loaded = True
    policy = ThreadPolicy("auto", cores=4, set_threads=cpu.set_threads, clock=cpu.clock)
    for _ in range(20):
        policy.timed(cpu.step)
    assert policy.candidates == [4, 2, 1] and cpu.threads == 1 and policy.trials == 1
    assert policy.describe() == "1 thread (auto)"


def test_a_fixed_count_is_set_and_the_previous_one_restored() -> None:
    cpu = SimulatedCpu()
    with ThreadPolicy(1, set_threads=cpu.set_threads, clock=cpu.clock) as policy:
        cpu.loaded = True
        for _ in range(40):
            policy.timed(cpu.step)
    assert cpu.set_calls == [1, torch.get_num_threads()]
    assert ThreadPolicy.for_device("auto", torch.device("cuda")).auto is False


@pytest.mark.parametrize("value", ["fast", 0, -2, True, 1.5])
def test_threads_setting_is_auto_or_a_positive_count(value) -> None:
    with pytest.raises(ConfigError, match="compute.threads must be"):
        ComputeConfig(threads=value)
    assert ComputeConfig(threads="auto").threads == "auto" and ComputeConfig(threads=2).threads == 2


def test_the_start_time_trial_leaves_the_run_unchanged() -> None:
    """The start-time trial runs on a copy of the network and of the random state: the trained
    weights are those of a run without it (on one thread count)."""
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 2
    compute = ComputeConfig(device="cpu", mixed_precision=False, threads="auto")
    config = TrainConfig(epochs=1, batch_size=8)

    def run(threads: ThreadPolicy) -> dict:
        engine.seed_everything(0)
        network = ResNet9(3, 2, width=4)
        train = Loader.create(MemoryImages(images), labels, [0.5] * 3, [0.5] * 3, 8, compute)
        val = Loader.create(MemoryImages(images[:8]), labels[:8], [0.5] * 3, [0.5] * 3, 8, compute)
        with threads:
            threads.calibrate(engine.probe_step(network, train, config))
            return engine.fit(network, train, val, config, threads=threads).weights

    one_count = ThreadPolicy("auto", cores=1)  # a single candidate: same count, same sums
    timed = run(one_count)
    plain = run(ThreadPolicy(1))
    assert one_count.trials == 1
    assert all(torch.equal(timed[k], plain[k]) for k in plain)
