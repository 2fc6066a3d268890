"""The networks (src/vision_pipelines/models.py): every one trains with deterministic CUDA
kernels, and torchvision's pretrained weights fail clearly when they cannot be had offline."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from vision_pipelines.config import MODEL_MIN_SIZE, ConfigError, ImageConfig, ModelConfig
from vision_pipelines.model_card import load_model, make_card
from vision_pipelines.models import GlobalMaxPool, PretrainedWeightsMissing, build_model

# Backward kernels that torch.use_deterministic_algorithms(True) refuses on CUDA (its documentation
# lists them): a model using one could not train with train.deterministic=true on a GPU.
NO_DETERMINISTIC_CUDA_BACKWARD = {
    "AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0", "AdaptiveMaxPool2DBackward0",
    "AdaptiveMaxPool3DBackward0", "AvgPool3DBackward0", "MaxPool3DWithIndicesBackward0",
    "FractionalMaxPool2DBackward0", "ReflectionPad2DBackward0", "ReplicationPad2DBackward0",
    "UpsampleBilinear2DBackward0", "UpsampleNearest2DBackward0",
}


def backward_kernels(output: torch.Tensor) -> set[str]:
    """Names of every autograd node ``output.backward()`` would run."""
    seen, todo = set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("name", ["resnet9", "airbench", "resnet18"])
def test_every_model_can_train_with_deterministic_cuda_kernels(name: str) -> None:
    network = build_model(ModelConfig(name=name, width=4), 3, 5)
    kernels = backward_kernels(network(torch.rand(2, 3, 32, 32)).sum())
    assert "ConvolutionBackward0" in kernels  # the walk saw the whole network
    assert not kernels & NO_DETERMINISTIC_CUDA_BACKWARD


def test_global_max_pool_gives_what_adaptive_max_pooling_gave() -> None:
    """Models saved before the change behave the same: only the backward kernel differs."""
    features = torch.randn(4, 8, 5, 3)
    assert torch.equal(GlobalMaxPool()(features), torch.nn.AdaptiveMaxPool2d(1)(features))


def test_airbench_compiled_with_bf16_autocast_gets_finite_gradients() -> None:
    """``train.compile`` on a bf16 machine: global max pooling as ``amax`` after airbench's last
    GELU gave NaN gradients from the first step (torch 2.14's compiled backward)."""
    network = build_model(ModelConfig(name="airbench", width=4), 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # emulated where bf16 is not native: slow, but tiny
        loss = torch.compile(network)(torch.randn(4, 3, 32, 32)).float().logsumexp(1).mean()  # 3x3 maps pooled
    loss.backward()
    gradients = [p.grad for p in network.parameters() if p.requires_grad]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)


def test_missing_pretrained_weights_name_the_cache_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))

    def offline(url, *args, **kwargs):  # what urllib raises with no network
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsMissing, match="empty_torch_home.*model.pretrained=false"):
        build_model(ModelConfig(name="resnet34", pretrained=True), 3, 6)


# --- model.logit_scale (cifar10's cpu recipe) ---


def test_logit_scale_multiplies_the_logits_of_the_same_weights() -> None:
    plain = build_model(ModelConfig(width=4), 3, 5).eval()
    scaled = build_model(ModelConfig(width=4, logit_scale=0.125), 3, 5).eval()
    scaled.load_state_dict(plain.state_dict())  # the scale is a constant, not a weight
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(scaled(x), plain(x) * 0.125)


@pytest.mark.parametrize("name", ["resnet9", "airbench"])
def test_a_card_rebuilds_a_network_with_its_logit_scale(name: str) -> None:
    config = ModelConfig(name=name, width=4, logit_scale=0.125)
    weights = build_model(config, 3, 2).state_dict()
    card = make_card(config, ImageConfig(size=16), ["a", "b"], weights, {}, training={}, metrics={})
    _, network = load_model(card, weights)
    x = torch.rand(2, 3, 16, 16)
    original = build_model(config, 3, 2)
    original.load_state_dict(weights)
    assert torch.equal(network(x), original.eval()(x))


@pytest.mark.parametrize(("settings", "message"), [
    ({"logit_scale": 0}, "model.logit_scale must be positive"),
    ({"name": "resnet18", "logit_scale": 0.125}, "model.logit_scale=0.125 applies to resnet9 and airbench only"),
])
def test_a_logit_scale_that_cannot_be_used_is_refused(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**settings)


# --- model.name: airbench (cifar10's cpu recipe) ---


def test_airbench_trains_batch_norm_biases_not_scales_and_its_groups_start_by_passing_their_input_on() -> None:
    network = build_model(ModelConfig(name="airbench", width=8), 3, 5)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(not n.weight.requires_grad and n.bias.requires_grad for n in norms)
    convolutions = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    for conv in convolutions:  # 24 -> 8, 8 -> 8, 8 -> 32, 32 -> 32, 32 -> 32, 32 -> 32
        x = torch.rand(1, conv.in_channels, 5, 5)
        kept = min(conv.in_channels, conv.out_channels)
        torch.testing.assert_close(conv(x)[:, :kept], x[:, :kept])
    assert network(torch.rand(2, 3, MODEL_MIN_SIZE["airbench"], 9)).shape == (2, 5)  # the smallest input it takes
