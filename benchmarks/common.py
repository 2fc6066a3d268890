"""What the benchmark scripts share: the project's own parameters, the samples, the machine.

Every figure a script records carries the date, the device, the torch version, the cores and the
command that made it, so anyone can re-run it and compare like with like.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
SAMPLES = Path(os.environ.get("DATASETS_DIR", PROJECT.parent / "shared" / "datasets"))
# each dataset's sample, in its original layout, under SAMPLES
SAMPLE_ROOTS = {"fruits": "fruits360", "garbage": "garbage", "intel": "intel", "apparel": "apparel",
                "cifar10": "cifar10"}


def project_parameters(dataset: str, env: str) -> dict[str, Any]:
    """``params:<dataset>`` as ``kedro run --env=<env>`` sees them (conf/<env> over conf/base)."""
    from kedro.config import OmegaConfigLoader

    from vision_pipelines.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(conf_source=str(PROJECT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})
    with warnings.catch_warnings():  # kedro's own deprecation notices about omegaconf resolvers
        warnings.simplefilter("ignore", UserWarning)
        return loader["parameters"][dataset]


def generate_class_folders(root: Path, classes: int = 10, per_class: int = 50, size: int = 32) -> Path:
    """Stand-in JPEGs in ``root/<class>/<n>.jpg``, for a clean clone without the shared samples.

    Each class is a colour with mild noise and a bright square, so the files compress and decode
    like small photos rather than like pure noise (which would make JPEG decoding look slower).
    """
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(30, 225, 3)
        (root / f"class_{c}").mkdir(parents=True)
        for n in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            pixels[y:y + size // 4, x:x + size // 4] = 255
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{n}.jpg", quality=90)
    return root


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
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device_type": device.type, "device": device_name(device),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": " ".join(["python", os.path.relpath(sys.argv[0], PROJECT), *sys.argv[1:]])
        if sys.argv and sys.argv[0].endswith(".py") else "(called from Python, not the command line)",
    }


def write_record(record: dict[str, Any], markdown: list[str], stem: str, results: Path = RESULTS) -> tuple[Path, Path]:
    """``<results>/<stem>.json`` (the record) and ``<stem>.md`` (the table); returns both paths."""
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results / f"{stem}.json", results / f"{stem}.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text("\n".join(markdown) + "\n")
    return json_path, md_path


def machine_line(record: dict[str, Any]) -> str:
    return (f"{record['date']}; {record['device']}; {record['cores']} cores ({record['torch_threads']} torch "
            f"threads); torch {record['torch']}. Command: `{record['command']}`")
