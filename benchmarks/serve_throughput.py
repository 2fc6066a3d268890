"""Requests per second and latency of the REST endpoint (``mlflow models serve``) on this machine.

    python benchmarks/serve_throughput.py                       # fruits CPU model, 1 and 32 images per request
    python benchmarks/serve_throughput.py --requests 10          # a quick look

In a throw-away project, the README's set-up run trains the fruits CPU model on the Fruits-360
sample (``kedro run --pipelines=fruits --env=cpu``), which registers it as ``models:/fruits@champion``;
``python -m vision_pipelines serve fruits`` then serves it on 127.0.0.1 (one worker, as
``mlflow models serve`` starts it). One client sends ``--requests`` requests in a row, each with 1
and then 32 test images (base64 JPEGs of the sample, 100x100), after 3 untimed ones: requests/s,
images/s and the median (p50) and 95th percentile (p95) latency, from sending the request to
reading the whole answer. The 1-minute load average before each series says how busy the machine
was. Results: ``benchmarks/results/serve_throughput_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from common import KEDRO, RESULTS, SAMPLES, machine_line, machine_record, project_copy, write_record


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:g} s")


def series(url: str, images: list[str], batch: int, requests: int) -> dict:
    """``requests`` timed requests of ``batch`` images each (after 3 untimed): rates and latencies."""
    body = json.dumps({"inputs": {"image": [images[i % len(images)] for i in range(batch)]}}).encode()
    latencies = []
    for n in range(3 + requests):
        started = time.perf_counter()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            assert len(json.load(answer)["predictions"]) == batch
        if n >= 3:
            latencies.append(time.perf_counter() - started)
    total = sum(latencies)
    return {"images_per_request": batch, "requests": requests, "requests_per_second": round(requests / total, 2),
            "images_per_second": round(requests * batch / total, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * statistics.quantiles(latencies, n=20)[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=SAMPLES / "fruits360", help="the Fruits-360 sample")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per series")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="images per request")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    test_images = sorted((args.path / "fruits-360" / "Test").rglob("*.jpg"))[:64]
    images = [base64.b64encode(path.read_bytes()).decode() for path in test_images]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        project = project_copy(Path(workdir) / "project")
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}  # the project's store
        env["KEDRO_DISABLE_TELEMETRY"] = "true"
        trained = subprocess.run([KEDRO, "run", "--pipelines=fruits", "--env=cpu",
                                  f"--params=fruits.source.kind=local,fruits.source.path={args.path.resolve()}"],
                                 cwd=project, env=env, capture_output=True, text=True)
        if trained.returncode:
            raise SystemExit(f"the training run failed:\n{(trained.stdout + trained.stderr)[-3000:]}")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "vision_pipelines", "serve", "fruits", "--port", str(port)],
                                  cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            wait_for(f"http://127.0.0.1:{port}/ping", 300)
            for batch in args.batches:
                load = round(os.getloadavg()[0], 2)
                rows.append({**series(f"http://127.0.0.1:{port}/invocations", images, batch, args.requests),
                             "load_1min_before": load})
                print(rows[-1], flush=True)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    record = {**machine_record(torch.device("cpu")), "model": "models:/fruits@champion (fruits --env=cpu)",
              "images": f"{len(test_images)} Fruits-360 test JPEGs, 100x100", "results": rows}
    lines = ["# REST endpoint throughput: `mlflow models serve -m models:/fruits@champion`", "",
             machine_line(record), "",
             "One client, requests in a row, to one server worker on 127.0.0.1; the fruits `--env=cpu` model "
             "(ResNet9, 32 px, fp32). Latency: from sending the request to reading the whole answer.", "",
             "| images per request | requests/s | images/s | p50 | p95 | 1-min load before |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['images_per_request']} | {r['requests_per_second']} | {r['images_per_second']} | "
              f"{r['p50_ms']} ms | {r['p95_ms']} ms | {r['load_1min_before']} |" for r in rows]
    write_record(record, lines, f"serve_throughput_{record['device_type']}", args.results)


if __name__ == "__main__":
    main()
