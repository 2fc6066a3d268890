"""How long the same ``kedro run`` takes the second time, when nothing it depends on changed.

    python benchmarks/rerun_time.py                          # this tree, full CIFAR-10
    python benchmarks/rerun_time.py --before 092d1a1         # and that commit's src/ and conf/
    python benchmarks/rerun_time.py --dataset fruits --path ../shared/datasets/fruits360   # a quick look

For each tree, in a throw-away project made from that tree's ``conf/`` (the real data/ is
untouched), the user's command runs twice: ``kedro run --pipelines=<dataset> --env=cpu
--params=<dataset>.source.kind=local,<dataset>.source.path=<path>,<dataset>.train.epochs=<epochs>``.
The first run decodes the images and trains; the second finds everything up to date: the training
returns the finished model at once (its checkpoint), and — since the loop issue — the image cache
is reused instead of decoded again. The second run's wall time is what a user waits for on every
re-run (an evaluation setting changed, say); ``--epochs`` (default 1) only shortens the first run,
which is not timed. Each run's log is searched for the cache's decode and "up to date" lines.
Results: ``benchmarks/results/rerun_time_<dataset>_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from common import KEDRO, PROJECT, RESULTS, SAMPLES, machine_line, machine_record, project_copy, write_record


def tree_of_revision(revision: str, folder: Path) -> tuple[Path, Path]:
    """``src/`` and ``conf/`` as they are at git ``revision``, extracted under ``folder``."""
    folder.mkdir(parents=True)
    archive = folder / "tree.tar"
    subprocess.run(["git", "-C", str(PROJECT), "archive", "--output", str(archive), revision, "src", "conf"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src", folder / "conf"


def timed_run(project: Path, src: Path, dataset: str, params: str) -> tuple[float, str]:
    """Wall seconds of one ``kedro run`` and what it printed; fails loudly if the run fails."""
    env = {**os.environ, "PYTHONPATH": str(src), "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    started = time.perf_counter()
    finished = subprocess.run([KEDRO, "run", f"--pipelines={dataset}", "--env=cpu", f"--params={params}"],
                              cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = finished.stdout + finished.stderr
    if finished.returncode:
        raise SystemExit(f"kedro run (src {src}) failed:\n{output[-3000:]}")
    return seconds, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--path", type=Path, default=SAMPLES / "cifar10-full", help="the dataset's folder")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the first (untimed) run")
    parser.add_argument("--before", metavar="REV", help="also time the src/ and conf/ of this git revision")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    d = args.dataset
    params = f"{d}.source.kind=local,{d}.source.path={args.path.resolve()},{d}.train.epochs={args.epochs}"
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        trees = {"this tree": (PROJECT / "src", PROJECT / "conf")}
        if args.before:
            trees = {f"before ({args.before})": tree_of_revision(args.before, Path(workdir) / "before"), **trees}
        for number, (tree, (src, conf)) in enumerate(trees.items()):
            project = project_copy(Path(workdir) / f"project{number}")
            shutil.rmtree(project / "conf")  # this tree's configuration: its catalog and logging
            shutil.copytree(conf, project / "conf")
            (project / "conf" / "local").mkdir(exist_ok=True)
            first, _ = timed_run(project, src, d, params)
            load = round(os.getloadavg()[0], 2)
            second, output = timed_run(project, src, d, params)
            rows.append({"tree": tree, "first_run_seconds": round(first, 1), "rerun_seconds": round(second, 1),
                         "rerun_decoded": "decoding" in output, "rerun_cache_up_to_date": "image cache up to date"
                         in output, "load_1min_before_rerun": load})
            print(rows[-1], flush=True)
    record = {**machine_record(torch.device("cpu")), "dataset": d, "path": str(args.path), "epochs": args.epochs,
              "results": rows}
    lines = [f"# Re-running an up-to-date `{d}` run", "", machine_line(record), "",
             f"`kedro run --pipelines={d} --env=cpu` on `{args.path}` ({args.epochs} epoch(s)), run twice in a fresh "
             "project; the second run is timed (wall seconds, from the command's start to its exit).", "",
             "| tree | first run | re-run | re-run decodes the images | 1-min load before the re-run |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['tree']} | {r['first_run_seconds']} s | **{r['rerun_seconds']} s** | "
              f"{'yes' if r['rerun_decoded'] else 'no (image cache up to date)'} | {r['load_1min_before_rerun']} |"
              for r in rows]
    write_record(record, lines, f"rerun_time_{d}_{record['device_type']}", args.results)


if __name__ == "__main__":
    main()
