"""Settings (src/vision_pipelines/config.py): every shipped configuration validates; a typo, a
wrong type or an impossible value is refused with the setting's full name; Kedro builds the typed
settings the nodes declare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader

from conftest import PROJECT_ROOT
from vision_pipelines.config import ConfigError, DistributedConfig, ImageConfig, TrainConfig, parse, parse_dataset

DATASETS = ["apparel", "cifar10", "fruits", "garbage", "intel"]
PARAMETER_FILES = sorted((PROJECT_ROOT / "conf" / "base").glob("parameters_*.yml"))


def load_parameters(env: str) -> dict:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=env, base_env="base", default_run_env=env,
                               merge_strategy={"parameters": "soft"})
    return loader["parameters"]


@pytest.mark.parametrize("env", ["base", "cpu", "cifar10_fast"])
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
    ("train.epochs", 0, "fruits.train.epochs must be a positive integer, got 0"),
    ("train.epochs", 2.5, "fruits.train.epochs must be an integer, got 2.5"),
    ("train.epochs", "abc", "fruits.train.epochs must be an integer, got 'abc'"),
    ("train.flip", "yes", r"fruits.train.flip must be one of .* 'alternating', 'none'\], got 'yes'"),
    ("train.max_lr", True, "fruits.train.max_lr must be a number, got True"),
    ("images.size", 4, "too small for model.name=resnet9"),
    ("images.mean", 0.5, "fruits.images.mean must be a list, got 0.5"),
    ("images.decode_workers", 0, "fruits.images.decode_workers must be a positive integer, got 0"),
    ("split.val_fraction", 1.5, r"fruits.split.val_fraction must be in \[0, 1\)"),
    ("split.seed", 2**63, r"fruits.split.seed must be in \[0, 2\*\*63\), got 9223372036854775808"),
    ("train.seed", -1, r"fruits.train.seed must be in \[0, 2\*\*63\), got -1"),
    ("train.epoch", 3, "fruits.train.epoch is not a known setting"),
    ("train.distributed", {"nprocs": 2}, "fruits.train.distributed.nprocs is not a known setting"),
    ("train.batch_size", 7, "fruits.train.batch_size=7 must be a multiple of the 2 distributed processes"),
])
def test_invalid_settings_are_named(setting: str, value, message: str) -> None:
    parameters = load_parameters("base")["fruits"]
    section, key = setting.split(".")
    parameters[section][key] = value
    if key == "batch_size":
        parameters["train"]["distributed"] = {"nproc_per_node": 2}
    with pytest.raises(ConfigError, match=message):
        parse_dataset(parameters, "fruits")


def test_types_are_checked_without_losing_information() -> None:
    assert parse(TrainConfig, {"epochs": 3.0, "max_lr": 1}).epochs == 3  # 3.0 epochs is 3 epochs
    assert isinstance(parse(TrainConfig, {"max_lr": 1}).max_lr, float)
    train = parse(TrainConfig, {"distributed": {"nproc_per_node": 2}})
    assert train.distributed == DistributedConfig(nproc_per_node=2) and train.distributed.enabled
    assert ImageConfig(decode_workers=None).decode_workers is None
    with pytest.raises(ConfigError, match="train.distributed.rdzv_endpoint .* is required when"):
        parse(TrainConfig, {"distributed": {"nnodes": 2}})


def test_a_settings_section_reads_as_its_values_where_it_is_logged() -> None:
    """Experiment trackers and logs print a section as its settings, not as a class."""
    assert json.loads(str(TrainConfig(epochs=7)))["epochs"] == 7


def test_the_known_datasets_are_exactly_the_parameter_files() -> None:
    assert [p.stem.removeprefix("parameters_") for p in PARAMETER_FILES] == DATASETS


@pytest.mark.parametrize("path", PARAMETER_FILES, ids=lambda p: p.stem)
def test_each_parameter_file_defines_its_own_dataset_and_validates(path: Path) -> None:
    name = path.stem.removeprefix("parameters_")
    content = yaml.safe_load(path.read_text())
    assert list(content) == [name]  # parameters_<name>.yml holds <name> and nothing else
    config = parse_dataset(content[name], name)
    merged = load_parameters("cpu")[name]
    assert parse_dataset(merged, name).images.size <= config.images.size  # cpu never costs more


def test_cpu_environment_names_only_known_datasets_and_settings() -> None:
    cpu = yaml.safe_load((PROJECT_ROOT / "conf" / "cpu" / "parameters.yml").read_text())
    assert set(cpu) <= set(DATASETS)
    for name, sections in cpu.items():
        for section, settings in sections.items():
            base = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / f"parameters_{name}.yml").read_text())[name]
            parse_dataset({**base, section: {**base.get(section, {}), **settings}}, name)


def test_cpu_intel_recipe_trains_from_scratch() -> None:
    """The base Intel recipe fine-tunes ImageNet weights; the offline CPU recipe must not need them."""
    config = parse_dataset(load_parameters("cpu")["intel"], "intel")
    assert config.model.name == "resnet9" and not config.model.pretrained


def test_kedro_builds_the_typed_settings_the_nodes_declare(kedro_project: Path) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(kedro_project)
    with KedroSession.create(project_path=kedro_project, env="cpu") as session:
        params = session.load_context().params
    assert isinstance(params["fruits"]["train"], TrainConfig) and params["fruits"]["train"].batch_size == 32
    assert isinstance(params["garbage"]["images"], ImageConfig)
