"""`kedro viz build --include-previews` shows every pipeline, each dataset in its layer, and previews.

One static site is built per module, in a throw-away project where a quick fruits run has
finished (``fruits_run``), with the CLI a user runs; the site's API files (``build/api/main``,
``build/api/pipelines/<id>``, ``build/api/nodes/<id>``) are what the browser reads.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import KEDRO, latest, make_project

# The data layers in lineage order: kedro-viz sorts them by the pipeline's dependencies and shows
# none at all when they form a cycle.
LAYERS = ["raw", "intermediate", "model_input", "models", "model_output", "reporting"]


def viz_build(project: Path) -> str:
    """``KEDRO_ENV=cpu kedro viz build --include-previews`` in ``project``: what it printed."""
    unreachable = "http://127.0.0.1:9"  # nothing listens there: any attempt to go online fails at once
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "KEDRO_ENV": "cpu", "HTTP_PROXY": unreachable,
           "HTTPS_PROXY": unreachable, "http_proxy": unreachable, "https_proxy": unreachable}
    result = subprocess.run([KEDRO, "viz", "build", "--include-previews"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "Success!" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def built(fruits_run: Path) -> str:
    """The site of the finished fruits run, built once: what the build printed."""
    return viz_build(fruits_run)


@pytest.fixture(scope="module")
def site(built: str, fruits_run: Path) -> Path:
    """The site's API files: ``build/api``."""
    return fruits_run / "build" / "api"


@pytest.fixture(scope="module")
def registered(fruits_run: Path) -> dict:
    """The project's pipelines, as ``kedro run --pipelines`` knows them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(fruits_run)
        from vision_pipelines.pipeline_registry import register_pipelines

        return register_pipelines()


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_site_lists_every_registered_pipeline(site: Path, registered: dict) -> None:
    main = read(site / "main")
    assert {p["id"] for p in main["pipelines"]} == set(registered)
    assert main["selected_pipeline"] == "__default__"


def test_site_shows_the_settings_of_the_environment(site: Path, fruits_run: Path) -> None:
    """KEDRO_ENV=cpu stands in for `--env=cpu`, which `kedro viz build` does not take."""
    cpu = yaml.safe_load((fruits_run / "conf" / "cpu" / "parameters.yml").read_text())["fruits"]["images"]["size"]
    nodes = {n["name"]: n for n in read(site / "pipelines" / "fruits")["nodes"]}
    assert nodes["build_image_cache"]["parameters"]["fruits.images"]["size"] == cpu


def test_every_pipeline_shows_its_nodes_and_its_datasets_in_layers(site: Path, registered: dict) -> None:
    problems = []
    for name, pipeline in registered.items():
        shown = read(site / "pipelines" / name)
        tasks = {n["full_name"] for n in shown["nodes"] if n["type"] == "task"}
        if tasks != {node.name for node in pipeline.nodes}:
            problems.append(f"{name}: nodes {sorted(tasks ^ {node.name for node in pipeline.nodes})} differ")
        data = [n for n in shown["nodes"] if n["type"] == "data"]
        datasets = {d for d in pipeline.datasets() if not d.startswith("params:") and d != "parameters"}
        if {n["name"] for n in data} != datasets:
            problems.append(f"{name}: datasets {sorted({n['name'] for n in data} ^ datasets)} differ")
        # every catalog entry has its layer; what passes between two nodes in memory has none
        layers = {n["name"]: n["layer"] for n in data if not n["dataset_type"].endswith(".MemoryDataset")}
        unlayered = sorted(d for d, layer in layers.items() if layer not in LAYERS)
        if unlayered:
            problems.append(f"{name}: catalog entries without one of the layers {LAYERS}: {unlayered}")
        if not set(layers.values()) <= set(shown["layers"]):  # kedro-viz shows none when layers form a cycle
            problems.append(f"{name}: layers shown {shown['layers']}, used {sorted(set(layers.values()))}")
    assert not problems, "\n".join(problems)


def test_a_whole_pipeline_shows_its_layers_in_lineage_order(site: Path, fruits_run: Path) -> None:
    from vision_pipelines.pipeline_registry import dataset_names

    for name in [*dataset_names(fruits_run / "conf" / "base"), "__default__"]:  # download -> ... -> submit
        assert read(site / "pipelines" / name)["layers"] == LAYERS, name


def test_previews_show_what_the_run_saved(site: Path, fruits_run: Path) -> None:
    nodes = {n["name"]: n["id"] for n in read(site / "pipelines" / "fruits")["nodes"]}
    reporting = fruits_run / "data" / "08_reporting" / "fruits"

    metrics = read(site / "nodes" / nodes["fruits.metrics"])
    assert metrics["preview_type"] == "JSONPreview"
    assert json.loads(metrics["preview"])["accuracy"] == read(latest(reporting / "metrics.json"))["accuracy"]

    confusion = read(site / "nodes" / nodes["fruits.confusion_plot"])
    assert confusion["preview_type"] == "ImagePreview"
    assert base64.b64decode(confusion["preview"]) == latest(reporting / "confusion.png").read_bytes()

    manifest = read(site / "nodes" / nodes["fruits.manifest"])
    assert manifest["preview_type"] == "TablePreview" and manifest["stats"]["rows"] == 48


def test_entries_no_run_has_saved_are_neither_previewed_nor_warned_about(built: str, site: Path,
                                                                         tmp_path: Path) -> None:
    """The fruits run saved fruits' entries, none of the other datasets'; a project never run
    saved nothing. Neither build warns about what it cannot preview (it used to, once per entry:
    76 warnings after the fruits run, 95 for a project never run)."""
    nodes = {n["name"]: n["id"] for n in read(site / "pipelines" / "__default__")["nodes"]}
    garbage = {n["name"]: n["id"] for n in read(site / "pipelines" / "garbage")["nodes"]}
    assert read(site / "nodes" / nodes["fruits.metrics"])["preview"] is not None
    assert read(site / "nodes" / garbage["garbage.metrics"])["preview"] is None
    assert "preview" not in built.lower(), built[-3000:]

    never_run = viz_build(make_project(tmp_path / "project"))
    assert "preview" not in never_run.lower(), never_run[-3000:]
