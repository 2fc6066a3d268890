"""train.optimizer (src/vision_pipelines/optimizers.py): which parameters Muon orthogonalises, that
its steps are orthogonal and of the configured size relative to the filters, and that it trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vision_pipelines.config import ModelConfig, TrainConfig
from vision_pipelines.models import build_model
from vision_pipelines.optimizers import build_optimizer, muon_filters, orthogonalize

MUON = TrainConfig(optimizer="muon", max_lr=0.05, bn_bias_lr_scale=64.0, weight_decay=5e-4, muon_lr=0.01)


@pytest.mark.parametrize("shape", [(32, 288), (288, 32)])
def test_orthogonalize_evens_out_the_singular_values_and_keeps_the_directions(shape: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], 32, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(shape[1], 32, generator=generator))
    matrix = u @ torch.diag(torch.logspace(-1, 0, 32)) @ v.T  # singular values 0.1 to 1
    orthogonal = orthogonalize(matrix)
    singular = torch.linalg.svdvals(orthogonal)
    assert singular.min() > 0.6 and singular.max() < 1.3  # from a spread of 10x
    assert F.cosine_similarity(orthogonal.flatten(), (u @ v.T).flatten(), dim=0) > 0.95


def test_muon_orthogonalises_the_hidden_filters_and_leaves_the_rest_to_sgd() -> None:
    network = build_model(ModelConfig(name="airbench", width=8), 3, 10)
    optimizer = build_optimizer(network, MUON)
    others, biases, filters = optimizer.param_groups
    first, *hidden = [m.weight for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [id(p) for p in filters["params"]] == [id(w) for w in hidden] == [id(w) for w in muon_filters(network)]
    assert filters["orthogonal"] and filters["lr"] == 0.01 and not others["orthogonal"] and not biases["orthogonal"]
    assert any(p is first for p in others["params"]) and biases["lr"] == pytest.approx(0.05 * 64)


def test_a_muon_step_moves_each_filter_bank_by_the_learning_rate_relative_to_its_norm() -> None:
    torch.manual_seed(0)
    network = build_model(ModelConfig(name="airbench", width=8), 3, 10)
    optimizer = build_optimizer(network, MUON)
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    F.cross_entropy(network(images), labels).backward()
    before = {id(w): w.detach().clone() for w in muon_filters(network)}
    optimizer.step()
    for weight in muon_filters(network):
        old = before[id(weight)]
        normalised = old * (len(old) ** 0.5 / old.norm())  # Muon keeps the filters at norm sqrt(out)
        assert ((weight.detach() - normalised).norm() / normalised.norm()).item() == pytest.approx(0.01, rel=0.35)


def test_muon_trains_a_network_to_fit_a_batch() -> None:
    torch.manual_seed(0)
    network = build_model(ModelConfig(name="airbench", width=8), 3, 4)
    config = TrainConfig(optimizer="muon", max_lr=0.05, bn_bias_lr_scale=64.0, muon_lr=0.05)
    optimizer = build_optimizer(network, config)
    images, labels = torch.randn(32, 3, 16, 16), torch.arange(32) % 4
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(network(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
