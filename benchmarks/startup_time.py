"""How long a ``kedro`` command takes in this project before it answers: the start-up cost.

    python benchmarks/startup_time.py                        # this tree's src/
    python benchmarks/startup_time.py --before 092d1a1       # and that commit's src/, runs interleaved
    python benchmarks/startup_time.py --runs 1               # a quick look

Times, from the command's start to its exit, in a throw-away copy of the project (the real
data/ and mlflow.db are untouched):

- ``kedro --version``;
- ``kedro registry list`` (builds every pipeline, so imports the nodes' modules);
- a mistyped ``--params``: ``kedro run --pipelines=fruits --env=cpu --params=fruits.train.epochs=2.5``,
  refused by ``hooks.ValidateParametersHook`` (the script checks that it exits with that error).

The package is taken from ``--src`` (default this tree's ``src/``; ``--before REV`` adds the
``src/`` of a git revision), put first on ``PYTHONPATH``; the script checks each command imports
it from there. Each command runs ``--runs`` times per tree, after one untimed round (which warms
the file cache and makes the MLflow store a project has after its first run), the trees taking
turns so that a change in the machine's load falls on both; the median is reported. The 1-minute
load average is recorded before each run: on a shared machine, a load above the core count means
other work slowed the commands down. Results: ``benchmarks/results/startup_time_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from common import KEDRO, PROJECT, RESULTS, machine_line, machine_record, project_copy, write_record

COMMANDS = {
    "kedro --version": ["--version"],
    "kedro registry list": ["registry", "list"],
    "mistyped --params, refused": ["run", "--pipelines=fruits", "--env=cpu", "--params=fruits.train.epochs=2.5"],
}
TARGET_SECONDS = {"kedro --version": 3, "kedro registry list": 3, "mistyped --params, refused": 5}
REFUSAL = "fruits.train.epochs"  # what the refused run's error names


def source_of_revision(revision: str, folder: Path) -> Path:
    """``src/`` as it is at git ``revision``, extracted under ``folder``."""
    folder.mkdir(parents=True)
    archive = folder / "src.tar"
    subprocess.run(["git", "-C", str(PROJECT), "archive", "--output", str(archive), revision, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def environment(src: Path) -> dict[str, str]:
    """The environment a user's shell gives kedro, with ``src`` first on the import path."""
    return {**os.environ, "PYTHONPATH": str(src), "KEDRO_DISABLE_TELEMETRY": "true"}


def check_source(src: Path, project: Path) -> None:
    """Refuse to time a tree that is not the one imported (an installed package could win)."""
    python = Path(KEDRO).with_name("python")
    found = subprocess.run([str(python), "-c", "import vision_pipelines; print(vision_pipelines.__file__)"],
                           cwd=project, env=environment(src), capture_output=True, text=True, check=True).stdout
    if not Path(found.strip()).is_relative_to(src.resolve()):
        raise SystemExit(f"kedro would import vision_pipelines from {found.strip()}, not from {src}")


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(name: str, src: Path, project: Path) -> tuple[float, float]:
    """Seconds from the start of ``kedro <COMMANDS[name]>`` to its exit, and the CPU seconds it
    used (user + system: what it would take on an idle machine, waits for the disk aside);
    checks how it ended."""
    started, cpu_before = time.perf_counter(), cpu_seconds_of_children()
    finished = subprocess.run([KEDRO, *COMMANDS[name]], cwd=project, env=environment(src),
                              capture_output=True, text=True)
    seconds, cpu_seconds = time.perf_counter() - started, cpu_seconds_of_children() - cpu_before
    refused = name.startswith("mistyped")
    if bool(finished.returncode) != refused or (refused and REFUSAL not in finished.stdout + finished.stderr):
        raise SystemExit(f"kedro {' '.join(COMMANDS[name])} (src {src}) ended with {finished.returncode}:\n"
                         f"{(finished.stdout + finished.stderr)[-3000:]}")
    return seconds, cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=PROJECT / "src", help="the src/ folder to time")
    parser.add_argument("--before", metavar="REV", help="also time the src/ of this git revision")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command per tree")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        project = project_copy(Path(workdir) / "project")
        trees = {"this tree": args.src.resolve()}
        if args.before:
            trees = {f"before ({args.before})": source_of_revision(args.before, Path(workdir) / "before"), **trees}
        for src in trees.values():
            check_source(src, project)
        times = {tree: {name: [] for name in COMMANDS} for tree in trees}
        cpu_times = {tree: {name: [] for name in COMMANDS} for tree in trees}
        loads = []
        for round_ in range(args.runs + 1):  # round 0 is the untimed one
            for name in COMMANDS:
                for tree, src in trees.items():
                    loads.append(round(os.getloadavg()[0], 2))
                    seconds, cpu_seconds = time_command(name, src, project)
                    if round_:
                        times[tree][name].append(round(seconds, 2))
                        cpu_times[tree][name].append(round(cpu_seconds, 2))
                        print(f"{tree}: {name}: {seconds:.2f} s, CPU {cpu_seconds:.2f} s (load {loads[-1]})",
                              flush=True)
    rows = [{"tree": tree, "command": name, "kedro_args": COMMANDS[name], "median_seconds": statistics.median(runs),
             "min_seconds": min(runs), "max_seconds": max(runs), "seconds": runs,
             "median_cpu_seconds": statistics.median(cpu_times[tree][name]), "cpu_seconds": cpu_times[tree][name],
             "target_seconds": TARGET_SECONDS[name]}
            for tree, by_command in times.items() for name, runs in by_command.items()]
    record = {**machine_record(torch.device("cpu")), "runs_per_command": args.runs,
              "trees": {tree: str(src) for tree, src in trees.items()},
              "load_1min": {"min": min(loads), "max": max(loads), "median": statistics.median(loads)},
              "results": rows}
    busy = (f"**The machine was busy**: 1-minute load average {min(loads)}–{max(loads)} (median "
            f"{statistics.median(loads)}) on {os.cpu_count()} cores, so other work slowed every command down; "
            "the trees took turns, so they compare with each other, not with an idle machine's figures."
            if max(loads) > (os.cpu_count() or 1) else
            f"1-minute load average {min(loads)}–{max(loads)} on {os.cpu_count()} cores.")
    lines = ["# Start-up time of kedro commands in this project", "", machine_line(record), "", busy, "",
             f"Seconds from the command's start to its exit, median of {args.runs} (min–max), then the CPU "
             "seconds it used (user + system, median; about what it takes on an idle machine), in a copy of "
             "the project; the mistyped run is `kedro run --pipelines=fruits --env=cpu "
             "--params=fruits.train.epochs=2.5`, which must be refused.", "",
             "| command | " + " | ".join(trees) + " | target (idle machine) |",
             "|---|" + "---|" * len(trees) + "---|"]
    for name in COMMANDS:
        cells = [f"{statistics.median(times[tree][name]):.1f} s ({min(times[tree][name]):.1f}–"
                 f"{max(times[tree][name]):.1f}); CPU {statistics.median(cpu_times[tree][name]):.1f} s"
                 for tree in trees]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | ≤ {TARGET_SECONDS[name]} s |")
    write_record(record, lines, f"startup_time_{record['device_type']}", args.results)


if __name__ == "__main__":
    main()
