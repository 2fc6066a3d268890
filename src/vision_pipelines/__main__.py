"""``python -m vision_pipelines`` runs the project like ``kedro run``; ``python -m vision_pipelines
promote | serve | demo <dataset>`` manages and serves the registered model (serving.py)."""

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

SERVING_COMMANDS = ("promote", "serve", "demo")  # serving.COMMANDS, without importing mlflow for a run


def main(*args, **kwargs):
    if sys.argv[1:2] and sys.argv[1] in SERVING_COMMANDS and not args and not kwargs:
        from .serving import main as serving_main

        return serving_main(sys.argv[1:])
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    run = find_run_command(package_name)
    run(*args, **kwargs)


if __name__ == "__main__":
    main()
