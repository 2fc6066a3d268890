"""The export pipeline: ``kedro run --pipelines=fruits_export`` on a model trained once
(``fruits_fp32_run``); the ONNX file is loaded as a user loads it and checked against PyTorch.

Tolerance: the exported graph computes what the PyTorch model computes, in fp32, but with other
kernels (oneDNN in PyTorch, MLAS in onnxruntime) that add in another order, so logits differ by
rounding: about 1e-7 relative per operation, ~1e-6 after a dozen layers. ``LOGIT_TOLERANCE`` is
1e-4 of the logits' scale, a hundred times that, and still a thousand times below the gaps
between classes that would change a prediction; the top-1 class must be the same on every image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from conftest import FP32_CPU, latest, run_kedro, sample_dir
from vision_pipelines import engine, loader
from vision_pipelines.cache import ImageCache
from vision_pipelines.config import ComputeConfig
from vision_pipelines.loader import Loader
from vision_pipelines.model_card import load_model

MODELS = Path("data/06_models/fruits")


def logit_tolerance(reference: torch.Tensor) -> float:
    return 1e-4 * max(1.0, reference.abs().max().item())


@pytest.fixture(scope="module")
def exported(fruits_fp32_run: Path) -> dict:
    """Export once; the PyTorch model's logits on the cached test images, for comparison."""
    project = fruits_fp32_run
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        run_kedro(project, "fruits_export", {f"fruits.{key}": value for key, value in FP32_CPU.items()})
    card_json = json.loads(latest(project / MODELS / "model_card.json").read_text())
    card, network = load_model(card_json, load_file(latest(project / MODELS / "model.safetensors")))
    images = ImageCache(project / "data/05_model_input/fruits/image_cache").images("test")
    fp32 = Loader.unlabelled(images, card.mean, card.std, 256, ComputeConfig(device="cpu", mixed_precision=False))
    return {"project": project, "card": card, "card_json": card_json, "images": images,
            "reference": engine.predict(network, fp32)}


def test_onnx_predicts_what_pytorch_predicts_in_onnxruntime(exported: dict) -> None:
    path = latest(exported["project"] / MODELS / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    card = exported["card"]
    assert (model_input.name, model_input.type) == ("images", "tensor(uint8)")
    assert model_input.shape == ["batch", card.channels, card.size, card.size]  # dynamic batch
    assert (model_output.name, model_output.shape) == ("logits", ["batch", len(card.class_names)])
    # the card travels with the file, naming the version of the model it was exported from
    assert json.loads(session.get_modelmeta().custom_metadata_map["model_card"]) == {
        **exported["card_json"], "version": latest(exported["project"] / MODELS / "model_card.json").parent.name}

    images = exported["images"].numpy()
    logits = torch.from_numpy(session.run(["logits"], {"images": images})[0])
    one = session.run(["logits"], {"images": images[:1]})[0]

    reference = exported["reference"]
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    assert (logits - reference).abs().max() <= logit_tolerance(reference)
    assert np.allclose(one, logits[:1].numpy(), atol=logit_tolerance(reference))


def test_export_report_gives_the_agreement_measured_on_cached_images(exported: dict) -> None:
    report = json.loads(latest(exported["project"] / "data/08_reporting/fruits/export_report.json").read_text())
    card, reference = exported["card"], exported["reference"]
    assert report["checked_on"] == {"subset": "test", "images": len(exported["images"])}
    assert report["reference"]["device"] == "cpu" and report["reference"]["precision"] == "fp32"
    assert report["input"]["dtype"] == "uint8"
    assert report["input"]["shape"] == ["batch", card.channels, card.size, card.size]
    assert report["output"]["class_names"] == card.class_names
    figures = report["onnx"]
    assert figures["runtime"].startswith("onnxruntime") and "dynamo=True" in figures["exporter"]
    assert figures["top1_agreement"] == 1.0 and figures["top1_disagreements"] == 0
    assert 0 <= figures["max_abs_logit_diff"] <= logit_tolerance(reference)
    assert figures["max_abs_logit"] == pytest.approx(reference.abs().max().item(), rel=1e-6)
    assert figures["bytes"] == latest(exported["project"] / MODELS / "model.onnx").stat().st_size
    # TorchScript is gone (deprecated upstream, and a traced model took any input)
    assert "torchscript" not in report and not (exported["project"] / MODELS / "model.torchscript.pt").exists()


def test_export_check_compares_in_fp32_when_the_run_computes_in_bf16(exported: dict,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """On a CPU with native bf16 (simulated here) training and evaluation run in bf16 autocast,
    whose logits are about 0.07 off fp32's; the file computes in fp32, and so must the PyTorch
    model it is checked against, or the check warns of differences the export did not make."""
    monkeypatch.setattr(loader, "has_fast_bf16", lambda device: True)
    project, reference = exported["project"], exported["reference"]
    bf16_run = {"fruits.compute.device": "cpu", "fruits.compute.mixed_precision": True}
    export_log = logging.getLogger("vision_pipelines.pipelines.export.nodes")
    monkeypatch.setattr(export_log, "handlers", [caplog.handler])  # the project's logging does not propagate
    monkeypatch.chdir(project)
    run_kedro(project, "fruits_export", bf16_run)

    report = json.loads(latest(project / "data/08_reporting/fruits/export_report.json").read_text())
    assert report["reference"] == {**report["reference"], "device": "cpu", "precision": "fp32"}
    assert report["onnx"]["top1_agreement"] == 1.0
    assert report["onnx"]["max_abs_logit_diff"] <= logit_tolerance(reference)
    assert "onnx: top-1 class as PyTorch's (fp32 on cpu) for 12 of 12 test images" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def upscaled(images: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(images.float(), scale_factor=4).byte()


@pytest.mark.parametrize("wrong, expected", [
    (upscaled, "index: 2 Got: 64 Expected: 16"),
    (lambda images: images[:, :, ::2, ::2], "index: 2 Got: 8 Expected: 16"),
    (lambda images: images.float() / 255, r"Actual: \(tensor\(float\)\) , expected: \(tensor\(uint8\)\)"),
    (lambda images: images[:, :1], "index: 1 Got: 1 Expected: 3"),
], ids=["64px", "8px", "float 0-1", "grey"])
def test_onnx_refuses_images_outside_its_input_contract(exported: dict, wrong, expected: str) -> None:
    """A larger or smaller image, float pixels in [0, 1] or one channel would give plausible
    logits of nothing: the file refuses them, naming the dimension or type it expects."""
    session = onnxruntime.InferenceSession(str(latest(exported["project"] / MODELS / "model.onnx")),
                                           providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=expected):
        session.run(["logits"], {"images": wrong(exported["images"][:2]).contiguous().numpy()})


def test_export_refuses_without_a_trained_model(kedro_project: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"fruits\.\w+ has not been made yet .* run the training pipeline"):
        run_kedro(kedro_project, "fruits_export")


@pytest.mark.integration
def test_exports_agree_with_pytorch_on_the_real_fruits_sample(kedro_project: Path) -> None:
    """Real photos (the Fruits-360 sample, CPU profile): every test image gets the same class."""
    params = {"fruits.source.kind": "local", "fruits.source.path": str(sample_dir("fruits360")),
              **{f"fruits.{key}": value for key, value in FP32_CPU.items()}}
    run_kedro(kedro_project, "fruits", params)
    run_kedro(kedro_project, "fruits_export", params)

    report = json.loads(latest(kedro_project / "data/08_reporting/fruits/export_report.json").read_text())
    assert report["checked_on"] == {"subset": "test", "images": 120}
    assert report["onnx"]["top1_agreement"] == 1.0
    assert report["onnx"]["max_abs_logit_diff"] <= 1e-4 * max(1.0, report["onnx"]["max_abs_logit"])


@pytest.mark.parametrize("name, channels", [("resnet9", 3), ("airbench", 3), ("resnet18", 1)])
def test_each_architecture_exports_with_its_normalisation_inside(name: str, channels: int) -> None:
    """A torchvision ResNet and grey input too: the file takes uint8 images of any batch size."""
    from vision_pipelines.config import ImageConfig, ModelConfig
    from vision_pipelines.model_card import make_card
    from vision_pipelines.models import build_model
    from vision_pipelines.pipelines.export.nodes import export_onnx

    torch.manual_seed(0)
    model, images = ModelConfig(name=name, width=8), ImageConfig(size=32, channels=channels, mean=[0.4] * channels,
                                                                  std=[0.2] * channels)
    network = build_model(model, channels, 4).eval()
    with torch.no_grad():  # batch-norm statistics as after training, not the identity
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2)
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    card = make_card(model, images, ["a", "b", "c", "d"], weights, {}, {}, {})
    pixels = torch.randint(0, 256, (5, channels, 32, 32), dtype=torch.uint8)
    fp32 = Loader.unlabelled(pixels, images.mean, images.std, 2, ComputeConfig(device="cpu", mixed_precision=False))
    reference = engine.predict(network, fp32)

    session = onnxruntime.InferenceSession(export_onnx(weights, card), providers=["CPUExecutionProvider"])
    for batch in (pixels[:1], pixels):
        expected = reference[:len(batch)]
        onnx_logits = torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])
        assert (onnx_logits - expected).abs().max() <= logit_tolerance(expected)
