"""The GPU suite: one command that measures the GPU recipes on one CUDA machine in under 9 minutes.

    python benchmarks/gpu_suite.py --pack                 # here, once: .gpu_data/cifar10-full.tar.gz (~20 MB)
    python3 benchmarks/gpu_suite.py --results $OUT        # on the GPU machine (device tool), carrying .gpu_data
    python benchmarks/gpu_suite.py --smoke --results /tmp/gpu_suite   # anywhere, CPU too: toy sizes

Sections, each recorded with its status, in ``gpu_suite_<device>.{json,md}`` (date, device, CUDA,
torch version, command):

- ``cifar10_fast``: the ``--env=cifar10_fast`` recipe on the full CIFAR-10 (40,000 train images
  after its validation split, 10,000 test): training time and test accuracy with flip TTA; when
  it ends below 94 %, again with more epochs while the time budget allows (target: 94 % in
  <= 10 s of training on one H100). A one-epoch warm-up run comes first, so CUDA's start-up is
  not counted;
- ``fruits_epoch``: the fruits GPU recipe's epoch time on random 100 px images, as many as
  Fruits-360's training set (67,692 images, 131 classes; 20 % validate);
- ``determinism``: the cifar10_fast recipe (4 epochs) twice with ``train.deterministic=true``
  (same weights?), and twice without (how far apart);
- ``resume``: the same run killed with SIGKILL once its first checkpoint exists, then resumed by
  a fresh process, against the uninterrupted deterministic run;
- ``ddp``: the same run through ``distributed.launch`` with one process (NCCL) against the plain
  path;
- ``throughput_cifar10``, ``throughput_fruits``: ``train_throughput.py``'s three paths (project,
  the tutorials' loop, ceiling) for the cifar10 and fruits base recipes (``conf/base``); the
  fruits images are generated 100 px JPEGs (Fruits-360 itself is not here).

They run in that order; one that would start after ``--budget-s`` is recorded as skipped, and one
that fails is recorded with its error while the others run. ``--sections`` runs some of them.

Runs with what the GPU machine has (torch, torchvision, numpy, pandas, pyarrow, pillow, tqdm,
pyyaml, matplotlib; no Kedro): it puts ``src/`` on the path, reads the parameters with PyYAML as
Kedro merges them, imports the nodes without their Kedro pipeline, and trains with the project's
own engine, loader, cache and distributed launcher. Without CUDA, only ``--smoke`` runs, and
every section says "skipped: no CUDA": the code ran on the CPU at toy sizes, nothing was measured.
"""

from __future__ import annotations

import importlib.util
import sys

# Beyond torch and torchvision, what the suite imports; the GPU machine's image has all of them.
NEEDS = {"numpy": "numpy", "pandas": "pandas", "pyarrow": "pyarrow", "PIL": "pillow", "tqdm": "tqdm",
         "yaml": "pyyaml", "matplotlib": "matplotlib", "torchvision": "torchvision"}
_missing = [package for module, package in NEEDS.items() if importlib.util.find_spec(module) is None]
if _missing:
    sys.exit(f"missing Python packages: {', '.join(_missing)}. Carry them as wheels (see benchmarks/README.md, "
             "'GPU suite'): python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 "
             f"--platform manylinux2014_x86_64 -d .whl {' '.join(_missing)}")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import (  # noqa: E402
    PROJECT,
    RESULTS,
    generate_class_folders,
    import_nodes,
    machine_line,
    machine_record,
    project_parameters,
    write_record,
)
from vision_pipelines import collectives, distributed, engine, lineage  # noqa: E402
from vision_pipelines.cache import ImageCache, write_cache  # noqa: E402
from vision_pipelines.config import DatasetConfig, EvaluateConfig, parse_dataset  # noqa: E402
from vision_pipelines.loader import Loader, MemoryImages, resolve_device  # noqa: E402
from vision_pipelines.models import build_model  # noqa: E402

log = logging.getLogger("gpu_suite")

CIFAR10_FULL = PROJECT.parent / "shared" / "datasets" / "cifar10-full"
PACKED = PROJECT / ".gpu_data" / "cifar10-full.tar.gz"  # .gpu_data/ is git-ignored; the device tool carries it
CARRY_LIMIT_MIB = 60  # the device tool carries at most 64 MiB per call, the working tree included
FRUITS_360 = {"train_images": 67_692, "classes": 131}  # Fruits-360 100x100, 2020 release: Training/
TARGET = {"accuracy": 0.94, "seconds": 10.0}  # cifar10_fast on one H100
# In the order they run: the longest (throughput, many fresh processes) last.
SECTIONS = ("cifar10_fast", "fruits_epoch", "determinism", "resume", "ddp", "throughput_cifar10", "throughput_fruits")
NO_CUDA = "skipped: no CUDA, not measured (smoke: the code ran on the CPU at toy sizes)"


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the suite's own sizes, or the smoke run's toy ones."""

    throughput_steps: int = 60  # steps per timed window
    throughput_windows: int = 3  # rounds; each path runs in a fresh process per round
    reference_workers: int = 4  # DataLoader workers of the tutorials' loop (their notebooks use 3-4)
    fast_epochs: tuple[int, ...] = (10, 15, 20, 30)  # the recipe's own, then more until 94 % is reached
    fruits_images: int = FRUITS_360["train_images"]
    fruits_epochs: int = 2  # the second one is the steady-state epoch
    check_epochs: int = 4  # determinism, resume and ddp runs
    generated_per_class: int = 60  # 100 px JPEGs per class for the fruits throughput
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # settings over every recipe's


FULL = Sizes()
SMOKE = Sizes(throughput_steps=2, throughput_windows=1, reference_workers=1, fast_epochs=(2,), fruits_images=120,
              check_epochs=4, generated_per_class=8,
              overrides={"images": {"decode_workers": 1}, "model": {"width": 4}, "train": {"batch_size": 16},
                         "evaluate": {"batch_size": 64}})


# --- data -------------------------------------------------------------------------------------


def pack(source: Path = CIFAR10_FULL, archive: Path = PACKED) -> Path:
    """CIFAR-10's train/ and test/ JPEGs in one .tar.gz, to carry to the GPU machine. The 60,000
    files are 55 MB, but their JPEG headers repeat, so gzip makes them about 20 MB."""
    if not (source / "train").is_dir() or not (source / "test").is_dir():
        raise SystemExit(f"{source} has no train/ and test/ class folders")
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for part in ("train", "test"):
            tar.add(source / part, arcname=part)  # members in sorted order
    os.replace(partial, archive)
    mib = archive.stat().st_size / 2**20
    if mib > CARRY_LIMIT_MIB:
        raise SystemExit(f"{archive} is {mib:.0f} MiB, more than the device tool carries in one call")
    return archive


def unpack(archive: Path, workdir: Path) -> Path:
    """The packed images, extracted once under ``workdir``."""
    root = workdir / archive.name.split(".")[0]
    if not (root / ".complete").exists():
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        (root / ".complete").touch()
    return root


def toy_cifar10(workdir: Path) -> Path:
    """A CIFAR-10 stand-in for smoke runs: 10 classes of generated 32 px JPEGs, train/ and test/."""
    root = workdir / "cifar10-toy"
    if not root.exists():
        generate_class_folders(root / "train", classes=10, per_class=24, size=32, seed=0)
        generate_class_folders(root / "test", classes=10, per_class=6, size=32, seed=1)
    return root


def build_cifar10_cache(root: Path, config: DatasetConfig, workdir: Path) -> tuple[ImageCache, dict[str, Any]]:
    """split -> cache with the pipeline's own nodes; the cache is the project's (folder of shards)."""
    nodes = import_nodes()  # here, not at the top: every spawned process re-imports this script
    started = time.perf_counter()
    manifest, class_names = nodes.build_manifest(root, config.source, config.split)
    split_seconds = time.perf_counter() - started
    started = time.perf_counter()
    write_cache(workdir / "cifar10-cache", nodes.build_image_cache(root, manifest, class_names, config.images))
    cache = ImageCache(workdir / "cifar10-cache")
    return cache, {"images": {subset: cache.count(subset) for subset in ("train", "val", "test")},
                   "split_seconds": round(split_seconds, 1), "cache_seconds": round(time.perf_counter() - started, 1)}


# --- recipes and runs -------------------------------------------------------------------------


def recipe(dataset: str, env: str, sizes: Sizes, data: Path | str = "(generated)") -> DatasetConfig:
    """``params:<dataset>`` under ``--env=<env>``, with the sizes' overrides, validated."""
    params = project_parameters(dataset, env)
    for section, values in sizes.overrides.items():
        params[section] = {**params.get(section, {}), **values}
    params["source"] = {**params["source"], "kind": "local", "path": str(data)}
    return parse_dataset(params, dataset)


def training_job(cache: ImageCache, config: DatasetConfig, checkpoint: Path | None = None,
                 **train: Any) -> engine.TrainingJob:
    return engine.TrainingJob(cache, config.model, config.images, dataclasses.replace(config.train, **train),
                              config.compute, checkpoint)


def train_and_test(job: engine.TrainingJob, evaluate: EvaluateConfig, launch: bool = False
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``engine.train(job)`` (or ``distributed.launch(job)``), then the test accuracy as the
    evaluate stage computes it; returns the figures and the weights (numpy: they cross processes)."""
    result = distributed.launch(job) if launch else engine.train(job)
    network = build_model(job.model, job.images.channels, len(job.cache.class_names))
    network.load_state_dict(result.weights)
    test = Loader.create(MemoryImages(job.cache.images("test")), job.cache.labels("test"), job.images.mean,
                         job.images.std, evaluate.batch_size, job.compute)
    _, accuracy = engine.evaluate(network, test, evaluate.tta_flip)
    seconds = result.history["seconds"].tolist()
    figures = {"epochs": len(seconds), "train_seconds": round(result.seconds, 2),
               "epoch_seconds": [round(s, 2) for s in seconds], "test_accuracy": round(accuracy, 4),
               "val_accuracy": round(float(result.history["val_accuracy"].iloc[-1]), 4),
               "precision": result.precision, "processes": result.world_size,
               "weights_fingerprint": lineage.weights_fingerprint(result.weights)}
    return figures, {name: tensor.numpy() for name, tensor in result.weights.items()}


def train_and_test_twice(job: engine.TrainingJob, evaluate: EvaluateConfig) -> list[tuple[dict, dict]]:
    return [train_and_test(job, evaluate) for _ in range(2)]


def steady(epoch_seconds: list[float]) -> float:
    """The median epoch time after the first (which also pays for warm-up)."""
    return round(statistics.median(epoch_seconds[1:] or epoch_seconds), 2)


def difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest absolute difference between two runs' weights (0.0: identical)."""
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max(initial=0)) for k in a)


def in_child(function: Callable, *args: Any) -> Any:
    """``function(*args)`` in a fresh spawned process: deterministic mode, which is global to a
    process (and needs cuBLAS set up after it), never leaks into the other sections."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=configure_logging) as child:
        return child.submit(function, *args).result()


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)


# --- sections ---------------------------------------------------------------------------------


def throughput(dataset: str, folder: Path, sizes: Sizes, isolate: bool) -> dict[str, Any]:
    """``train_throughput.py`` on the dataset's base recipe."""
    import train_throughput  # here, not at the top: every spawned process re-imports this script

    setup = train_throughput.make_setup(dataset, "base", folder, sizes.overrides, steps=sizes.throughput_steps,
                                        windows=sizes.throughput_windows, workers=sizes.reference_workers)
    record = train_throughput.measure(setup, isolate=isolate)
    s = record["setup"]
    return {"recipe": f"{dataset}, conf/base", "data": str(folder),
            "settings": f"{s['model']['name']} width {s['model']['width']}, {s['images']['size']} px, batch "
                        f"{s['train']['batch_size']}, bf16 {s['bf16_autocast']}, channels_last {s['channels_last']}",
            "images_per_second": {path: p["images_per_second"] for path, p in record["paths"].items()},
            "ratios": record["ratios"], "target_project_over_reference": record["targets"]["project_over_reference"],
            "reference_workers": setup.workers, "windows": f"{setup.windows} x {setup.steps} steps",
            "paths": record["paths"]}


def cifar10_fast(cache: ImageCache, config: DatasetConfig, sizes: Sizes, deadline: float) -> dict[str, Any]:
    """The fast recipe's training time and test accuracy; more epochs until 94 % while time allows."""
    warm_up = engine.TrainingJob(cache, config.model, config.images, dataclasses.replace(config.train, epochs=1),
                                 config.compute)
    train_and_test(warm_up, config.evaluate)  # CUDA context, cuDNN and allocator warm-up: not counted
    runs = []
    for epochs in sizes.fast_epochs:
        figures, _ = train_and_test(training_job(cache, config, epochs=epochs), config.evaluate)
        runs.append(figures)
        log.info("cifar10_fast, %d epochs: %.1f s, test accuracy %.4f", epochs, figures["train_seconds"],
                 figures["test_accuracy"])
        if figures["test_accuracy"] >= TARGET["accuracy"] or time.time() > deadline:
            break
    reached = [r for r in runs if r["test_accuracy"] >= TARGET["accuracy"]]
    return {"recipe": "cifar10, --env=cifar10_fast", "batch_size": config.train.batch_size,
            "width": config.model.width, "train_images": cache.count("train"), "test_images": cache.count("test"),
            "tta_flip": config.evaluate.tta_flip, "runs": runs, "target": TARGET,
            "seconds_to_target": reached[0]["train_seconds"] if reached else None}


def fruits_epoch(sizes: Sizes) -> dict[str, Any]:
    """The fruits GPU recipe's epoch time on random 100 px images, as many as Fruits-360 has,
    through ``engine.fit`` on loaders built as ``engine.train`` builds them."""
    config = recipe("fruits", "base", sizes)
    device = resolve_device(config.compute.device)
    n, classes, side = sizes.fruits_images, FRUITS_360["classes"], config.images.size
    images = torch.randint(0, 256, (n, config.images.channels, side, side), dtype=torch.uint8, device=device,
                           generator=torch.Generator(device).manual_seed(0))
    labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(0))
    n_val = round(n * config.split.val_fraction)
    norm = {"mean": config.images.mean, "std": config.images.std, "batch_size": config.train.batch_size,
            "compute": config.compute}
    train = Loader.create(MemoryImages(images[n_val:]), labels[n_val:], **norm,
                          crop_padding=config.train.crop_padding, flip=config.train.flip)
    val = Loader.create(MemoryImages(images[:n_val]), labels[:n_val], **norm)
    engine.seed_everything(config.train.seed)
    network = build_model(config.model, config.images.channels, classes)
    result = engine.fit(network, train, val, dataclasses.replace(config.train, epochs=sizes.fruits_epochs))
    seconds = result.history["seconds"].tolist()
    return {"recipe": "fruits, conf/base", "data": "random uint8 pixels (Fruits-360 is not on the GPU machine)",
            "size": side, "width": config.model.width, "batch_size": config.train.batch_size,
            "train_images": n - n_val, "val_images": n_val, "classes": classes, "precision": result.precision,
            "epoch_seconds": [round(s, 2) for s in seconds], "recipe_epochs": config.train.epochs,
            "estimated_recipe_seconds": round(seconds[0] + (config.train.epochs - 1) * seconds[-1], 1)}


@dataclass
class Reference:
    """The run that ``resume`` and ``ddp`` are compared with."""

    figures: dict[str, Any]
    weights: dict[str, np.ndarray]
    deterministic: bool


def determinism(cache: ImageCache, config: DatasetConfig, sizes: Sizes) -> tuple[dict[str, Any], Reference]:
    """Two runs with ``train.deterministic=true`` (in a fresh process), and two without."""
    job = training_job(cache, config, epochs=sizes.check_epochs, deterministic=True)
    deterministic = in_child(train_and_test_twice, job, config.evaluate)
    default = train_and_test_twice(training_job(cache, config, epochs=sizes.check_epochs), config.evaluate)
    return ({"epochs": sizes.check_epochs, "deterministic": compare(*deterministic), "default": compare(*default)},
            Reference(*deterministic[0], deterministic=True))


def reference_run(cache: ImageCache, config: DatasetConfig, sizes: Sizes) -> tuple[dict[str, Any], Reference]:
    """When deterministic mode fails: one default run for ``resume`` and ``ddp`` to compare with
    (their weights can then differ in the last bits for that reason alone)."""
    figures, weights = in_child(train_and_test, training_job(cache, config, epochs=sizes.check_epochs),
                                config.evaluate)
    return {"test_accuracy": figures["test_accuracy"]}, Reference(figures, weights, deterministic=False)


def compare(a: tuple[dict, dict], b: tuple[dict, dict]) -> dict[str, Any]:
    """Two runs of one job: are their weights the same, and their accuracy?"""
    gap = difference(a[1], b[1])
    return {"identical": gap == 0, "max_weight_difference": gap,
            "test_accuracy": [a[0]["test_accuracy"], b[0]["test_accuracy"]], "epoch_seconds": a[0]["epoch_seconds"]}


def resume(cache: ImageCache, config: DatasetConfig, sizes: Sizes, workdir: Path,
           reference: Reference) -> dict[str, Any]:
    """A (deterministic) run killed with SIGKILL once its first checkpoint is written, then the
    same job in a fresh process, which resumes; compared with the uninterrupted run ``reference``."""
    checkpoint = workdir / "resume" / "checkpoint.pt"
    checkpoint.unlink(missing_ok=True)
    job = training_job(cache, config, checkpoint, epochs=sizes.check_epochs, deterministic=reference.deterministic)
    process = multiprocessing.get_context("spawn").Process(target=engine.train, args=(job,))
    process.start()
    while not checkpoint.exists() and process.is_alive():
        time.sleep(0.01)
    process.kill()
    process.join()
    if not checkpoint.exists():
        raise RuntimeError(f"the run to kill ended (exit code {process.exitcode}) before writing a checkpoint")
    saved_epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["state"]["epoch"]
    if saved_epoch >= sizes.check_epochs:
        raise RuntimeError("the run finished before it could be killed: nothing to resume")
    resumed, weights = in_child(train_and_test, job, config.evaluate)
    return {"epochs": sizes.check_epochs, "deterministic": reference.deterministic,
            "killed_after_epoch": saved_epoch, "killed_exit_code": process.exitcode,
            "resumed_seconds": resumed["train_seconds"],
            "identical_to_uninterrupted": difference(weights, reference.weights) == 0,
            "max_weight_difference": difference(weights, reference.weights),
            "test_accuracy": {"resumed": resumed["test_accuracy"], "uninterrupted": reference.figures["test_accuracy"]}}


def ddp(cache: ImageCache, config: DatasetConfig, sizes: Sizes, reference: Reference) -> dict[str, Any]:
    """The reference run through ``distributed.launch`` with one process, against the plain path."""
    job = training_job(cache, config, epochs=sizes.check_epochs, deterministic=reference.deterministic)
    launched, weights = train_and_test(job, config.evaluate, launch=True)
    plain = reference.figures
    return {"epochs": sizes.check_epochs, "deterministic": reference.deterministic,
            "backend": collectives.backend_for("auto", resolve_device("auto")),
            "epoch_seconds": {"plain": steady(plain["epoch_seconds"]),
                              "ddp_1_process": steady(launched["epoch_seconds"])},
            "launched_run_seconds": launched["train_seconds"],
            "test_accuracy": {"plain": plain["test_accuracy"], "ddp_1_process": launched["test_accuracy"]},
            "identical_weights": difference(weights, reference.weights) == 0,
            "max_weight_difference": difference(weights, reference.weights)}


# --- the suite --------------------------------------------------------------------------------


class Suite:
    """Runs sections in order, each recorded with its status, time and figures; a failing
    section is recorded with its error and the next one runs."""

    def __init__(self, record: dict[str, Any], cuda: bool, smoke: bool, budget_s: float) -> None:
        self.record, self.cuda, self.smoke, self.budget_s = record, cuda, smoke, budget_s
        self.started = time.time()

    @property
    def status(self) -> str:
        if not self.cuda:
            return NO_CUDA
        return "smoke: toy sizes, not a measurement" if self.smoke else "measured"

    def run(self, name: str, function: Callable, *args: Any) -> Any:
        if time.time() - self.started > self.budget_s:
            self.record["sections"][name] = {"status": f"skipped: the suite's {self.budget_s:.0f} s budget was spent"}
            return None
        log.info("--- %s", name)
        started = time.time()
        extra = None
        try:
            result = function(*args)
            if isinstance(result, tuple):  # figures, and the run later sections compare with
                result, extra = result
            entry = {"status": self.status, **result}
        except Exception as error:  # noqa: BLE001 - one broken section must not cost the others
            traceback.print_exc()
            entry = {"status": f"failed: {type(error).__name__}: {error}"}
        entry["section_seconds"] = round(time.time() - started, 1)
        self.record["sections"][name] = entry
        return extra if extra is not None else entry


def run_suite(data: Path | None, workdir: Path, smoke: bool, budget_s: float, sections: tuple[str, ...]) -> dict:
    device = resolve_device("auto")
    sizes = SMOKE if smoke else FULL
    record = {**machine_record(device), "suite": "gpu_suite", "smoke": smoke, "budget_seconds": budget_s,
              "sizes": dataclasses.asdict(sizes), "sections": {}}
    suite = Suite(record, device.type == "cuda", smoke, budget_s)
    root = toy_cifar10(workdir) if smoke else unpack(data, workdir) if data.is_file() else data
    fast = recipe("cifar10", "cifar10_fast", sizes, root)
    cache, record["cifar10_data"] = build_cifar10_cache(root, fast, workdir)
    record["cifar10_data"]["source"] = "generated 32 px JPEGs (smoke)" if smoke else str(data)
    if "cifar10_fast" in sections:
        suite.run("cifar10_fast", cifar10_fast, cache, fast, sizes, suite.started + 0.3 * budget_s)
    if "fruits_epoch" in sections:
        suite.run("fruits_epoch", fruits_epoch, sizes)
    checks = [name for name in ("resume", "ddp") if name in sections]
    if "determinism" in sections or checks:  # resume and ddp compare with its deterministic run
        reference = suite.run("determinism", determinism, cache, fast, sizes)
        if checks and not isinstance(reference, Reference):  # deterministic mode failed: compare default runs
            reference = suite.run("reference_run", reference_run, cache, fast, sizes)
        for name in checks:
            if not isinstance(reference, Reference):
                record["sections"][name] = {"status": "skipped: no reference run to compare with"}
            elif name == "resume":
                suite.run("resume", resume, cache, fast, sizes, workdir, reference)
            else:
                suite.run("ddp", ddp, cache, fast, sizes, reference)
    if "throughput_cifar10" in sections:
        suite.run("throughput_cifar10", throughput, "cifar10", root / "train", sizes, not smoke)
    if "throughput_fruits" in sections:
        folder = workdir / "fruits-100px"
        if not folder.exists():
            generate_class_folders(folder, classes=10, per_class=sizes.generated_per_class, size=100)
        suite.run("throughput_fruits", throughput, "fruits", folder, sizes, not smoke)
    return record


def markdown(record: dict[str, Any]) -> list[str]:
    s = record["sections"]
    lines = [f"# GPU suite{' (smoke run: toy sizes)' if record['smoke'] else ''}", "", machine_line(record),
             "", f"Whole suite: {record['suite_seconds']:.0f} s.", ""]
    if record["device_type"] != "cuda":
        lines += ["**No CUDA device: nothing in this file is a GPU measurement.** Every section ran on the CPU "
                  "at toy sizes only to check the code.", ""]
    data = record["cifar10_data"]
    lines += [f"CIFAR-10: {data['source']}; {data['images']['train']} train / {data['images']['val']} val / "
              f"{data['images']['test']} test images; split {data['split_seconds']} s, image cache (decode) "
              f"{data['cache_seconds']} s.", ""]
    for name, entry in s.items():
        lines += [f"## {name}", "", f"Status: {entry['status']}"
                  + (f" ({entry['section_seconds']} s)" if "section_seconds" in entry else ""), ""]
        if not entry["status"].startswith(("failed", "skipped: the suite", "skipped: no reference")):
            lines += RENDER[name](entry) + [""]
    return lines


def kind(r: dict) -> str:
    return "Deterministic" if r["deterministic"] else "Default-mode (deterministic mode failed)"


def _throughput_lines(r: dict) -> list[str]:
    rate, ratio = r["images_per_second"], r["ratios"]
    return [f"{r['recipe']}: {r['settings']}; data `{r['data']}`; median of {r['windows']} windows; tutorial loop: "
            f"ImageFolder + per-sample transforms + DataLoader({r['reference_workers']} workers).", "",
            "| project | tutorial loop | ceiling | project / ceiling | project / tutorial |", "|---|---|---|---|---|",
            f"| {rate['project']:.0f} | {rate['reference']:.0f} | {rate['ceiling']:.0f} | "
            f"**{ratio['project_over_ceiling']:.2f}** | **{ratio['project_over_reference']:.2f}** "
            f"(target ≥ {r['target_project_over_reference']}) |"]


def _fast_lines(r: dict) -> list[str]:
    lines = [f"{r['recipe']}: ResNet9 width {r['width']}, batch {r['batch_size']}, flip TTA {r['tta_flip']}; "
             f"{r['train_images']} train images, {r['test_images']} test. Training time is the train "
             "stage's (`engine.train`, validation each epoch included), after a one-epoch warm-up run.", "",
             "| epochs | training time | test accuracy |", "|---|---|---|"]
    lines += [f"| {run['epochs']} | {run['train_seconds']:.1f} s | {run['test_accuracy']:.2%} |" for run in r["runs"]]
    reached = r["seconds_to_target"]
    target = f"target ≤ {r['target']['seconds']:.0f} s"
    lines += ["", f"Time to {r['target']['accuracy']:.0%}: "
              + (f"**{reached:.1f} s** ({target})" if reached is not None else f"not reached ({target})")]
    return lines


def _fruits_lines(r: dict) -> list[str]:
    return [f"{r['recipe']}: {r['size']} px, width {r['width']}, batch {r['batch_size']}, {r['precision']}; "
            f"{r['train_images']} train + {r['val_images']} val images, {r['classes']} classes; {r['data']}.", "",
            "| epoch 1 | steady epoch | whole recipe (estimated) |", "|---|---|---|",
            f"| {r['epoch_seconds'][0]:.1f} s | **{r['epoch_seconds'][-1]:.1f} s** | "
            f"{r['estimated_recipe_seconds']:.0f} s ({r['recipe_epochs']} epochs) |"]


def _determinism_lines(r: dict) -> list[str]:
    rows = [f"| `train.deterministic={flag}` | {r[key]['identical']} | {r[key]['max_weight_difference']:.3g} | "
            f"{', '.join(f'{a:.2%}' for a in r[key]['test_accuracy'])} | {steady(r[key]['epoch_seconds']):.2f} s |"
            for flag, key in (("true", "deterministic"), ("false", "default"))]
    return [f"cifar10_fast recipe, {r['epochs']} epochs, two runs each.", "",
            "| setting | identical weights | max weight difference | test accuracy | epoch time |",
            "|---|---|---|---|---|", *rows]


def _resume_lines(r: dict) -> list[str]:
    return [f"{kind(r)} run of {r['epochs']} epochs, SIGKILLed once its checkpoint existed (after epoch "
            f"{r['killed_after_epoch']}), then resumed by a fresh process.", "",
            "| identical to the uninterrupted run | max weight difference | test accuracy (resumed / uninterrupted) |",
            "|---|---|---|",
            f"| **{r['identical_to_uninterrupted']}** | {r['max_weight_difference']:.3g} | "
            f"{r['test_accuracy']['resumed']:.2%} / {r['test_accuracy']['uninterrupted']:.2%} |"]


def _ddp_lines(r: dict) -> list[str]:
    e, a = r["epoch_seconds"], r["test_accuracy"]
    return [f"{kind(r)} run of {r['epochs']} epochs: `engine.train` against `distributed.launch` with "
            f"nproc_per_node=1 ({r['backend']}).", "",
            "| path | epoch time | test accuracy |", "|---|---|---|",
            f"| plain | {e['plain']:.2f} s | {a['plain']:.2%} |",
            f"| DDP, 1 process | {e['ddp_1_process']:.2f} s | {a['ddp_1_process']:.2%} |", "",
            f"Identical weights: **{r['identical_weights']}** (max difference {r['max_weight_difference']:.3g})."]


RENDER = {"throughput_cifar10": _throughput_lines, "throughput_fruits": _throughput_lines,
          "cifar10_fast": _fast_lines, "fruits_epoch": _fruits_lines, "determinism": _determinism_lines,
          "resume": _resume_lines, "ddp": _ddp_lines,
          "reference_run": lambda r: [f"Default-mode run for resume and ddp: test accuracy {r['test_accuracy']:.2%}."]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", nargs="?", type=Path, const=CIFAR10_FULL, metavar="FOLDER",
                        help=f"pack a full CIFAR-10 folder (default {CIFAR10_FULL}) into {PACKED.relative_to(PROJECT)} "
                             "and stop")
    parser.add_argument("--data", type=Path, help="a full CIFAR-10: folder (train/<class>, test/<class>) or .tar.gz "
                                                  f"(default {PACKED.relative_to(PROJECT)}, else {CIFAR10_FULL})")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on generated images: checks the code, "
                                                             "on the CPU too; measures nothing")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--budget-s", type=float, default=420,
                        help="sections that would start later than this are skipped (default 420)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--label", default="", help="added to the results' names: gpu_suite_cuda_<label>")
    args = parser.parse_args()
    started = time.time()
    configure_logging()
    if args.pack:
        archive = pack(args.pack)
        print(f"wrote {archive} ({archive.stat().st_size / 2**20:.1f} MiB); carry it with the device tool: see "
              "benchmarks/README.md, 'GPU suite'")
        return
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU suite measures nothing here. `--smoke` checks its code on "
                         "the CPU at toy sizes.")
    data = args.data or (PACKED if PACKED.exists() else CIFAR10_FULL)
    if not args.smoke and not data.exists():
        raise SystemExit(f"{data} does not exist: run `python benchmarks/gpu_suite.py --pack` where the "
                         "data is, and carry .gpu_data")
    if args.smoke:  # toy networks: one thread each, so that a busy machine does not stall them
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    os.environ["PYTHONPATH"] = os.pathsep.join(  # spawned processes import the package and the scripts
        [str(PROJECT / "src"), str(PROJECT / "benchmarks"), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="gpu_suite-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        record = run_suite(data, workdir, args.smoke, args.budget_s, tuple(args.sections))
    record["suite_seconds"] = round(time.time() - started, 1)
    lines = markdown(record)
    stem = f"gpu_suite_{'smoke_' if args.smoke else ''}{record['device_type']}{f'_{args.label}' if args.label else ''}"
    write_record(record, lines, stem, args.results)


if __name__ == "__main__":
    main()
