"""Configuration validates, every dataset gets a pipeline, every artifact resolves to a file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset

from conftest import PROJECT_ROOT, make_class_folders
from vision_pipelines.augment import augment, batch_crop, batch_flip_lr, normalize
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


# --- every configuration file, as found on disk -------------------------------------------------

PARAMETER_FILES = sorted((PROJECT_ROOT / "conf" / "base").glob("parameters_*.yml"))


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


# --- registry and nodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", DATASETS)
def test_namespaced_nodes_read_their_own_parameters_and_write_their_own_artifacts(dataset: str) -> None:
    pipeline = register_pipelines()[dataset]
    template = create_template()
    assert len(pipeline.nodes) == len(template.nodes)
    for node in pipeline.nodes:
        assert node.name.startswith(f"{dataset}.") and node.namespace == dataset
        assert dataset in node.tags and len(node.tags & set(STAGES)) == 1, node.name
        for name in node.inputs:
            assert name.startswith((f"{dataset}.", f"params:{dataset}.")), (node.name, name)
        assert all(name.startswith(f"{dataset}.") for name in node.outputs), node.name
    assert pipeline.inputs() == {f"params:{dataset}.{s}" for s in
                                 ("source", "split", "images", "model", "train", "evaluate", "submission")}


def test_each_stage_tag_selects_its_nodes() -> None:
    template = create_template()
    by_stage = {stage: {n.name for n in template.only_nodes_with_tags(stage).nodes} for stage in STAGES}
    assert by_stage["download"] == {"download_images"}
    assert by_stage["split"] == {"build_manifest"}
    assert by_stage["cache"] == {"build_image_cache"}
    assert by_stage["train"] == {"train_model"}
    assert by_stage["submit"] == {"make_submission"}
    assert {"predict", "evaluate_predictions", "plot_confusion_matrix"} <= by_stage["evaluate"]
    assert set().union(*by_stage.values()) == {n.name for n in template.nodes}


# --- catalog: every artifact a file, each dataset in its own folder -------------------------------


def project_catalog() -> DataCatalog:
    config = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")["catalog"]
    return DataCatalog.from_config(config)


def artifact_path(dataset) -> str:
    described = dataset._describe()
    return str(described.get("filepath") or described.get("path"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_template_output_has_its_own_file_under_the_dataset_folder(dataset: str) -> None:
    catalog = project_catalog()
    outputs = sorted(register_pipelines()[dataset].all_outputs())
    assert len(outputs) == len(create_template().all_outputs())
    paths = {}
    for name in outputs:
        entry = catalog.get(name)
        assert entry is not None and not isinstance(entry, MemoryDataset), name
        path = Path(artifact_path(entry))
        assert path.parts[0] == "data" and path.parts[2] == dataset, (name, path)
        paths[name] = path
    assert len(set(paths.values())) == len(paths)  # no two artifacts overwrite each other
    assert paths[f"{dataset}.confusion_plot"].name == "confusion.png"


def test_artifacts_round_trip_through_their_catalog_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Save and load the artifacts with awkward contents through the real entries, in a scratch folder."""
    from vision_pipelines.pipelines.image_classification import nodes

    make_class_folders(tmp_path / "images" / "Training", ["a", "b"], 4, size=(12, 12))
    (tmp_path / "images" / "Training" / "a" / "notes.txt").write_text("x")
    manifest, classes = nodes.build_manifest(tmp_path / "images", {"kind": "local", "path": "x"},
                                             {"val_fraction": 0.25, "seed": 0})
    cache, report = nodes.build_image_cache(tmp_path / "images", manifest, classes, {"size": 8})
    card = {"model": {"name": "resnet9", "width": 2, "dropout": 0.0}, "class_names": classes,
            "input": {"channels": 3}}
    weights = model_from_card(card).state_dict()
    monkeypatch.chdir(tmp_path)  # the catalog's relative data/ paths now point into tmp_path
    catalog = project_catalog()
    for name, value in (("manifest", manifest), ("class_names", classes), ("image_cache", cache),
                        ("data_report", report), ("model_weights", weights), ("model_card", card),
                        ("raw_images", tmp_path / "images")):
        catalog.save(f"garbage.{name}", value)
    assert (tmp_path / "data" / "02_intermediate" / "garbage" / "manifest.parquet").is_file()

    loaded = catalog.load("garbage.manifest")
    pd.testing.assert_frame_equal(loaded.astype(object).where(loaded.notna(), None),
                                  manifest.where(manifest.notna(), None), check_dtype=False)
    assert loaded.loc[loaded["subset"] == "skipped", "reason"].tolist() == ["not an image file (notes.txt)"]
    assert catalog.load("garbage.class_names") == classes
    assert catalog.load("garbage.data_report") == report
    reloaded_cache = catalog.load("garbage.image_cache")
    assert set(reloaded_cache) == set(cache)
    assert all(torch.equal(reloaded_cache[k], cache[k]) and reloaded_cache[k].dtype == cache[k].dtype for k in cache)
    network = model_from_card(catalog.load("garbage.model_card"), catalog.load("garbage.model_weights"))
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(network(x), model_from_card(card, weights)(x))
    assert catalog.load("garbage.raw_images") == (tmp_path / "images").resolve()


# --- augmentation ---------------------------------------------------------------------------------


def crops_of_reflect_padded(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every original-size crop of ``image`` reflect-padded by ``padding`` (the torchvision recipe)."""
    padded = F.pad(image[None].float(), (padding,) * 4, mode="reflect")[0].to(image.dtype)
    height, width = image.shape[-2:]
    return [padded[:, y:y + height, x:x + width] for y in range(2 * padding + 1) for x in range(2 * padding + 1)]


@pytest.mark.parametrize("padding", [1, 3])
def test_batch_crop_equals_cropping_a_reflect_padded_image(padding: int) -> None:
    images = torch.randint(0, 256, (40, 3, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cropped = batch_crop(images, padding, torch.Generator().manual_seed(2))
    assert cropped.dtype == torch.uint8 and cropped.shape == images.shape
    offsets = []
    for image, crop in zip(images, cropped):
        matches = [i for i, candidate in enumerate(crops_of_reflect_padded(image, padding))
                   if torch.equal(candidate, crop)]
        assert matches, "a crop that no reflect-padded crop equals"
        offsets.append(matches[0])
    assert len(set(offsets)) > (2 * padding + 1) ** 2 // 2  # each image gets its own offset
    assert torch.equal(batch_crop(images, 0, torch.Generator()), images)


def test_flip_keeps_uint8_and_each_image_is_whole_or_mirrored() -> None:
    images = torch.randint(0, 256, (32, 1, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flipped = batch_flip_lr(images, torch.Generator().manual_seed(5))
    assert flipped.dtype == torch.uint8 and flipped.shape == images.shape
    for original, result in zip(images, flipped):
        assert torch.equal(result, original) or torch.equal(result, original.flip(-1))


def test_augment_is_repeatable_with_a_seed() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = augment(images, 2, True, torch.Generator().manual_seed(7))
    again = augment(images, 2, True, torch.Generator().manual_seed(7))
    other = augment(images, 2, True, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(augment(images, 0, False, torch.Generator()), images)


def test_normalize_matches_the_model_card_formula() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = torch.tensor([0.5, 0.2, 0.0]), torch.tensor([0.5, 0.25, 1.0])
    out = normalize(images, mean, std)
    expected = (images.float() / 255 - mean[None, :, None, None]) / std[None, :, None, None]
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
