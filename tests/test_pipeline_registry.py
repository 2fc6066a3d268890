"""The registry (src/vision_pipelines/pipeline_registry.py) and the catalog that serves it:
three pipelines per dataset, every node named and tagged with its stage, every artifact a file of
its own under the dataset's folders, round-tripping through its catalog entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset

from conftest import PROJECT_ROOT, make_class_folders, write_cache
from vision_pipelines.config import ConfigError, ImageConfig, ModelConfig, SourceConfig, SplitConfig
from vision_pipelines.model_card import load_model, make_card
from vision_pipelines.models import build_model
from vision_pipelines.pipeline_registry import dataset_names, register_pipelines
from vision_pipelines.pipelines.image_classification import create_template
from vision_pipelines.pipelines.image_classification.pipeline import STAGES

DATASETS = ["apparel", "cifar10", "fruits", "garbage", "intel"]
LAYERS = {"raw", "intermediate", "model_input", "models", "model_output", "reporting"}


def test_registry_has_three_pipelines_per_dataset_and_a_safe_default() -> None:
    assert dataset_names(PROJECT_ROOT / "conf" / "base") == DATASETS
    pipelines = register_pipelines()
    assert set(pipelines) == {"__default__", *DATASETS, *(f"{d}_predict" for d in DATASETS),
                              *(f"{d}_export" for d in DATASETS), *(f"{d}_lr_find" for d in DATASETS),
                              *(f"{d}_cv" for d in DATASETS), *(f"{d}_tune" for d in DATASETS)}
    assert {n.name for n in pipelines["__default__"].nodes} == {n.name for n in pipelines["fruits"].nodes}
    assert "fruits.manifest" in pipelines["fruits"].all_outputs()
    # predicting and exporting start from what training saved: one lineage in kedro-viz
    assert {"fruits.model_weights", "fruits.model_card"} <= pipelines["fruits_predict"].inputs()
    assert {"fruits.model_weights", "fruits.model_card"} <= pipelines["fruits_export"].inputs()


@pytest.mark.parametrize("name", ["fruits_predict", "fruits_export", "fruits_lr_find", "fruits_cv",
                                  "fruits_tune", "__default__"])
def test_a_dataset_named_like_a_generated_pipeline_is_refused_naming_its_file(name: str, tmp_path: Path) -> None:
    """Its pipeline would silently replace fruits' predict or export pipeline, or the default."""
    for dataset in ("fruits", name):
        (tmp_path / f"parameters_{dataset}.yml").write_text(f"{dataset}:\n  train: {{epochs: 1}}\n")
    with pytest.raises(ConfigError, match=f"parameters_{name}.yml: the dataset name '{name}' is taken by a "
                                          "pipeline of 'fruits'.*rename the file and its top-level key"):
        dataset_names(tmp_path)


def test_a_dataset_whose_name_only_ends_like_a_generated_pipeline_is_fine(tmp_path: Path) -> None:
    for dataset in ("fruits", "data_export"):
        (tmp_path / f"parameters_{dataset}.yml").write_text(f"{dataset}: {{}}\n")
    assert dataset_names(tmp_path) == ["data_export", "fruits"]


def test_every_node_is_named_and_tagged_with_one_stage() -> None:
    for node in create_template().nodes:
        assert node.name == node.func.__name__
        assert len(node.tags & set(STAGES)) == 1, node.name


@pytest.mark.parametrize("dataset", DATASETS)
def test_namespaced_nodes_read_their_own_parameters_and_write_their_own_artifacts(dataset: str) -> None:
    pipeline = register_pipelines()[dataset]
    assert len(pipeline.nodes) == len(create_template().nodes)
    for node in pipeline.nodes:
        assert node.name.startswith(f"{dataset}.") and node.namespace == dataset
        assert dataset in node.tags and len(node.tags & set(STAGES)) == 1, node.name
        for name in node.inputs:
            assert name.startswith((f"{dataset}.", f"params:{dataset}.")), (node.name, name)
        assert all(name.startswith(f"{dataset}.") for name in node.outputs), node.name
    assert pipeline.inputs() == {*(f"params:{dataset}.{s}" for s in ("source", "split", "images", "model", "compute",
                                                                    "train", "evaluate", "submission", "lr_find")),
                                 f"{dataset}.downloads", f"{dataset}.checkpoint", f"{dataset}.lr_find_reports"}


def test_each_stage_tag_selects_its_nodes() -> None:
    template = create_template()
    by_stage = {stage: {n.name for n in template.only_nodes_with_tags(stage).nodes} for stage in STAGES}
    assert by_stage["download"] == {"download_images"}
    assert by_stage["split"] == {"build_manifest"}
    assert by_stage["cache"] == {"build_image_cache", "summarise_data"}
    assert by_stage["train"] == {"train_model"}
    assert by_stage["submit"] == {"make_submission"}
    assert {"predict", "evaluate_predictions", "plot_confusion_matrix"} <= by_stage["evaluate"]
    assert set().union(*by_stage.values()) == {n.name for n in template.nodes}


def project_catalog() -> DataCatalog:
    config = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")["catalog"]
    return DataCatalog.from_config(config)


@pytest.mark.parametrize("pipeline", ["garbage", "garbage_predict", "garbage_export"])
def test_every_artifact_has_its_own_file_under_the_dataset_folder_and_a_layer(pipeline: str) -> None:
    catalog = project_catalog()
    free = {"garbage.new_images", "garbage.new_prediction_images"}  # handed between two nodes in memory
    names = sorted((register_pipelines()[pipeline].all_outputs() | register_pipelines()[pipeline].inputs())
                   - free)
    paths = {}
    for name in (n for n in names if not n.startswith("params:")):
        entry = catalog.get(name)
        assert entry is not None and not isinstance(entry, MemoryDataset), name
        assert entry.metadata["kedro-viz"]["layer"] in LAYERS, name
        described = entry._describe()
        path = Path(str(described.get("filepath") or described.get("path")))
        assert path.parts[0] == "data" and (path.parts[2] == "garbage" or name == "garbage.downloads"), (name, path)
        paths[name] = path
    assert len(set(paths.values())) == len(paths)  # no two artifacts overwrite each other


def test_artifacts_round_trip_through_their_catalog_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Save and load artifacts with awkward contents through the real entries, in a scratch folder."""
    from vision_pipelines.pipelines.image_classification import nodes

    make_class_folders(tmp_path / "images" / "Training", ["a", "b"], 4, size=(12, 12))
    (tmp_path / "images" / "Training" / "a" / "notes.txt").write_text("x")
    split = SplitConfig(val_fraction=0.25)
    manifest, classes = nodes.build_manifest(tmp_path / "images", SourceConfig(path="x"), split)
    cache = write_cache(nodes.build_image_cache(tmp_path / "images", manifest, classes, ImageConfig(size=8)),
                        tmp_path / "scratch_cache")
    weights = build_model(ModelConfig(width=2), 3, 2).state_dict()
    card = make_card(ModelConfig(width=2), ImageConfig(size=8), classes, weights, {"image_cache": cache.fingerprint},
                     training={}, metrics={})
    monkeypatch.chdir(tmp_path)  # the catalog's relative data/ paths now point into tmp_path
    catalog = project_catalog()
    for name, value in (("manifest", manifest), ("class_names", classes), ("image_cache",
                        nodes.build_image_cache(tmp_path / "images", manifest, classes, ImageConfig(size=8))),
                        ("model_weights", weights), ("model_card", card), ("raw_images", tmp_path / "images")):
        catalog.save(f"garbage.{name}", value)
    assert (tmp_path / "data" / "02_intermediate" / "garbage" / "manifest.parquet").is_file()
    loaded = catalog.load("garbage.manifest")
    assert loaded.loc[loaded["subset"] == "skipped", "reason"].tolist() == ["not an image file (notes.txt)"]
    columns = ["file", "label", "subset"]
    assert loaded[columns].values.tolist() == manifest[columns].values.tolist()
    assert catalog.load("garbage.class_names") == classes
    assert torch.equal(catalog.load("garbage.image_cache").images("train"), cache.images("train"))
    _, network = load_model(catalog.load("garbage.model_card"), catalog.load("garbage.model_weights"))
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(network(x), load_model(card, weights)[1](x))
    assert catalog.load("garbage.raw_images") == (tmp_path / "images").resolve()
    assert catalog.load("garbage.checkpoint") == tmp_path / "data/06_models/garbage/checkpoint.pt"
