"""What the benchmark scripts share: the project's own parameters, the samples, the machine;
and, with the tests (``tests/conftest.py`` imports them), the project copy, the newest version of
an output and the made-up image folders.

Every figure a script records carries the date, the device, the torch version, the cores and the
command that made it, so anyone can re-run it and compare like with like.

Nothing here needs Kedro unless Kedro is there: the GPU machine (``gpu_suite.py``) has none, so
the parameters are then read with PyYAML and merged as Kedro's "soft" strategy merges them, and
the pipeline's nodes are imported without their package (whose ``__init__`` builds Kedro pipelines).
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import shutil
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT / "src") not in sys.path:  # the package, where it is not installed (the GPU machine)
    sys.path.insert(1, str(PROJECT / "src"))
RESULTS = PROJECT / "benchmarks" / "results"
KEDRO = str(Path(sys.executable).parent / "kedro")  # this environment's kedro, without activating it
SAMPLES = Path(os.environ.get("DATASETS_DIR", PROJECT.parent / "shared" / "datasets"))
# each dataset's sample, in its original layout, under SAMPLES
SAMPLE_ROOTS = {"fruits": "fruits360", "garbage": "garbage", "intel": "intel", "apparel": "apparel",
                "cifar10": "cifar10"}


def has_kedro() -> bool:
    try:
        import kedro  # noqa: F401
    except ImportError:
        return False
    return True


def project_parameters(dataset: str, env: str) -> dict[str, Any]:
    """``params:<dataset>`` as ``kedro run --env=<env>`` sees them (conf/<env> over conf/base)."""
    if not has_kedro():
        return yaml_parameters(dataset, env)
    from kedro.config import OmegaConfigLoader

    from vision_pipelines.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(conf_source=str(PROJECT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})
    with warnings.catch_warnings():  # kedro's own deprecation notices about omegaconf resolvers
        warnings.simplefilter("ignore", UserWarning)
        return loader["parameters"][dataset]


def yaml_parameters(dataset: str, env: str, conf: Path = PROJECT / "conf") -> dict[str, Any]:
    """The same parameters without Kedro: ``conf/base/parameters*.yml``, then ``conf/<env>``'s
    merged over them key by key (Kedro's "soft" merge). The parameter files use no interpolation."""
    import yaml

    def merge(base: dict, update: dict) -> dict:
        return {**base, **{key: merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict)
                           else value for key, value in update.items()}}

    merged: dict[str, Any] = {}
    for folder in dict.fromkeys(["base", env]):
        for path in sorted((conf / folder).glob("parameters*.yml")):
            merged = merge(merged, yaml.safe_load(path.read_text()) or {})
    return merged[dataset]


def import_nodes() -> types.ModuleType:
    """``vision_pipelines.pipelines.image_classification.nodes``, also where Kedro is absent.

    The nodes are plain functions, but their package's ``__init__`` builds the Kedro pipeline.
    Without Kedro, the package is registered as a bare module over its folder (what Python does
    for a folder without ``__init__``), so that only the nodes module itself is imported.
    """
    name = "vision_pipelines.pipelines.image_classification"
    if not has_kedro() and name not in sys.modules:
        parent = importlib.import_module("vision_pipelines.pipelines")
        package = types.ModuleType(name)
        package.__path__ = [str(Path(parent.__path__[0]) / "image_classification")]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.nodes")


def latest_version(path: Path) -> Path:
    """The newest version of a versioned catalog output: ``<path>/<newest timestamp>/<name>``."""
    versions = sorted(p for p in Path(path).iterdir() if (p / Path(path).name).is_file())
    if not versions:
        raise FileNotFoundError(f"no version of {path}")
    return versions[-1] / Path(path).name


def project_copy(folder: Path) -> Path:
    """A throw-away copy of the project's configuration at ``folder``, where ``kedro run`` writes
    its own data/ (the real project's data/ stays untouched)."""
    folder.mkdir(parents=True)
    shutil.copytree(PROJECT / "conf", folder / "conf", ignore=shutil.ignore_patterns("credentials*", "local"))
    (folder / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        if (PROJECT / name).exists():
            shutil.copy(PROJECT / name, folder / name)
    (folder / "src").mkdir()  # bootstrap_project checks it exists; the package is installed
    return folder


# Distinct base colours, so tiny datasets are learnable and a trained model beats chance.
PALETTE = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 200, 40), (200, 40, 200),
           (40, 200, 200), (120, 60, 20), (250, 250, 250), (20, 20, 20), (128, 128, 128)]


def make_image(path: Path, class_index: int, size: tuple[int, int] = (24, 24), mode: str = "RGB",
               seed: int = 0, quality: int | None = None) -> Path:
    """An image of class ``class_index``: its palette colour plus noise and a bright square
    (``quality``: JPEG quality, else Pillow's default)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.clip(np.array(PALETTE[class_index % len(PALETTE)])[None, None, :]
                     + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    corner = rng.integers(0, max(1, min(size) // 2), 2)
    pixels[corner[1]:corner[1] + height // 4, corner[0]:corner[0] + width // 4] = 255
    image = Image.fromarray(pixels).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({"quality": quality} if quality else {}))
    return path


def make_class_folders(root: Path, classes: list[str], per_class: int, size=(24, 24),
                       extension: str = ".jpg", start_seed: int = 0, quality: int | None = None) -> Path:
    """``root/<class>/<n><extension>`` for each class."""
    for index, name in enumerate(classes):
        for n in range(per_class):
            make_image(root / name / f"{n}{extension}", index, size, seed=start_seed + 1000 * index + n,
                       quality=quality)
    return root


def generate_class_folders(root: Path, classes: int = 10, per_class: int = 50, size: int = 32,
                           seed: int = 0) -> Path:
    """Stand-in JPEGs in ``root/class_<c>/<n>.jpg``, for a clean clone without the shared samples.

    Each class is a colour with mild noise and a bright square (``make_image``), saved at JPEG
    quality 90, so the files compress and decode like small photos rather than like pure noise
    (which would make JPEG decoding look slower).
    """
    return make_class_folders(root, [f"class_{c}" for c in range(classes)], per_class, (size, size),
                              start_seed=100_000 * seed, quality=90)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the processor's model name (Linux), else the architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_record(device: torch.device) -> dict[str, Any]:
    """Date, device, software and the command line: the header of every results file."""
    import torchvision

    cuda = {}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        cuda = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "gpu_memory_gib": round(properties.total_memory / 2**30, 1), "gpu_count": torch.cuda.device_count()}
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device_type": device.type, "device": device_name(device), **cuda,
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "command": " ".join(["python", os.path.relpath(sys.argv[0], PROJECT), *sys.argv[1:]])
        if sys.argv and sys.argv[0].endswith(".py") else "(called from Python, not the command line)",
    }


def write_record(record: dict[str, Any], markdown: list[str], stem: str, results: Path = RESULTS) -> tuple[Path, Path]:
    """``<results>/<stem>.json`` (the record) and ``<stem>.md`` (the table), both also printed;
    returns both paths."""
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results / f"{stem}.json", results / f"{stem}.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text("\n".join(markdown) + "\n")
    print("\n".join(markdown))
    print("wrote", json_path, md_path)
    return json_path, md_path


def machine_line(record: dict[str, Any]) -> str:
    gpu = (f" ({record['gpu_memory_gib']} GiB, CUDA {record['cuda']}, cuDNN {record['cudnn']})"
           if record.get("cuda") else "")
    return (f"{record['date']}; {record['device']}{gpu}; {record['cores']} cores ({record['torch_threads']} torch "
            f"threads); torch {record['torch']}. Command: `{record['command']}`")
