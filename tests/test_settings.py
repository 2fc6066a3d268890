"""The project's settings (src/vision_pipelines/settings.py), which every ``kedro`` command imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import vision_pipelines

HEAVY = ("torch", "matplotlib", "mlflow")  # seconds each to import on a small machine


def test_settings_hooks_and_registry_import_neither_torch_matplotlib_nor_mlflow() -> None:
    """Every kedro command imports the settings (and so the hooks); ``ValidateParametersHook``
    reads the registry's dataset names before a run does anything. Nothing there may import
    torch, matplotlib or mlflow, or every command (``kedro --version``, a mistyped ``--params``)
    waits seconds before it prints anything; a run imports them where it uses them."""
    modules = ["settings", "hooks", "tracking", "pipeline_registry"]
    code = (f"import sys\nfor m in {modules}: __import__('vision_pipelines.' + m)\n"
            f"print(' '.join(m for m in {HEAVY} if m in sys.modules))")
    source = str(Path(vision_pipelines.__file__).parents[1])  # the code under test, in a fresh process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    imported = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.split()
    assert imported == [], f"importing the settings imported {imported}"
