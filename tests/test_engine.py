"""The training engine's choice of precision: bf16 autocast only where the device runs it natively."""

from __future__ import annotations

import pytest
import torch

from vision_pipelines import engine
from vision_pipelines.config import ImageConfig, TrainConfig
from vision_pipelines.models import ResNet9


def cpu_with_bf16(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def train_step(mixed_precision: bool) -> engine.TrainStep:
    return engine.TrainStep(ResNet9(3, 4, width=4), TrainConfig(device="cpu", mixed_precision=mixed_precision),
                            ImageConfig(size=16), torch.device("cpu"), total_steps=10)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True),
                                                        (False, False, False)])
def test_bf16_autocast_on_cpus_with_bf16_instructions_only(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool,
                                                           amx: bool, expected: bool) -> None:
    cpu_with_bf16(monkeypatch, avx512_bf16, amx)
    assert engine.has_fast_bf16(torch.device("cpu")) is expected
    assert train_step(mixed_precision=True).amp is expected


def test_mixed_precision_false_trains_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_with_bf16(monkeypatch, avx512_bf16=True)
    step = train_step(mixed_precision=False)
    assert not step.amp
    loss, logits = step.forward_backward(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert logits.dtype == torch.float32 and torch.isfinite(loss)


def test_bf16_step_computes_in_bf16_and_updates_fp32_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_with_bf16(monkeypatch, avx512_bf16=True)
    step = train_step(mixed_precision=True)
    before = [p.detach().clone() for p in step.network.parameters()]
    loss, logits = step.forward_backward(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in step.network.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, step.network.parameters()))
