"""Configuration validates, every dataset gets a pipeline, every artifact resolves to a file."""

from __future__ import annotations

import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset

from conftest import PROJECT_ROOT
from vision_pipelines.augment import batch_flip_lr
from vision_pipelines.config import ConfigError, ModelConfig, parse_dataset
from vision_pipelines.models import build_model, model_from_card
from vision_pipelines.pipeline_registry import dataset_names, register_pipelines
from vision_pipelines.pipelines.image_classification import create_template
from vision_pipelines.pipelines.image_classification.pipeline import STAGES

DATASETS = ["apparel", "cifar10", "fruits", "garbage", "intel"]


def load_parameters(env: str) -> dict:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=env, base_env="base", default_run_env=env,
                               merge_strategy={"parameters": "soft"})
    return loader["parameters"]


@pytest.mark.parametrize("env", ["base", "cpu"])
def test_every_dataset_configuration_validates(env: str) -> None:
    parameters = load_parameters(env)
    for name in DATASETS:
        parse_dataset(parameters[name], name)


def test_cpu_environment_overrides_single_settings() -> None:
    base, cpu = load_parameters("base")["fruits"], load_parameters("cpu")["fruits"]
    assert cpu["images"]["size"] < base["images"]["size"]
    assert cpu["train"]["max_lr"] == base["train"]["max_lr"]  # merged from base, not dropped


@pytest.mark.parametrize("setting, value, message", [
    ("model.name", "vgg", "fruits.model.name must be one of"),
    ("train.epochs", 0, "fruits.train.epochs must be a positive integer"),
    ("images.size", 4, "too small for model.name=resnet9"),
    ("split.val_fraction", 1.5, "fruits.split.val_fraction must be in"),
    ("train.epoch", 3, "fruits.train.epoch is not a known setting"),
])
def test_invalid_settings_are_named(setting: str, value, message: str) -> None:
    parameters = load_parameters("base")["fruits"]
    section, key = setting.split(".")
    parameters[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_dataset(parameters, "fruits")


def test_registry_has_a_pipeline_per_dataset_and_a_safe_default() -> None:
    assert dataset_names(PROJECT_ROOT / "conf" / "base") == DATASETS
    pipelines = register_pipelines()
    assert set(pipelines) == {*DATASETS, "__default__"}
    assert {n.name for n in pipelines["__default__"].nodes} == {n.name for n in pipelines["fruits"].nodes}
    assert "fruits.manifest" in pipelines["fruits"].all_outputs()
    assert "params:fruits.train" in pipelines["fruits"].inputs()


def test_every_node_is_named_and_tagged_with_one_stage() -> None:
    for node in create_template().nodes:
        assert node.name == node.func.__name__
        assert len(node.tags & set(STAGES)) == 1, node.name


def test_every_artifact_resolves_to_a_file_through_the_catalog_factories() -> None:
    catalog_config = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")["catalog"]
    catalog = DataCatalog.from_config(catalog_config)
    for name in register_pipelines()["garbage"].all_outputs():
        dataset = catalog.get(name)
        assert not isinstance(dataset, MemoryDataset), name
        assert "garbage" in str(dataset._describe()), name


def test_models_build_for_grey_and_colour_and_rebuild_from_a_card() -> None:
    for channels in (1, 3):
        network = build_model(ModelConfig(width=4), channels, 5).eval()
        assert network(torch.zeros(2, channels, 20, 20)).shape == (2, 5)
    resnet = build_model(ModelConfig(name="resnet18", width=4), 1, 3).eval()
    assert resnet(torch.zeros(1, 1, 32, 32)).shape == (1, 3)
    card = {"model": {"name": "resnet9", "width": 4, "dropout": 0.1}, "class_names": ["a", "b"],
            "input": {"channels": 3}}
    original = model_from_card(card)
    rebuilt = model_from_card(card, original.state_dict())
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(original(x), rebuilt(x))


def test_flip_mirrors_about_half_the_batch() -> None:
    images = torch.arange(64 * 2 * 3, dtype=torch.uint8).reshape(64, 1, 2, 3)
    flipped = batch_flip_lr(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert torch.equal(flipped[~mirrored], images[~mirrored]) and 16 < mirrored.sum() < 48
