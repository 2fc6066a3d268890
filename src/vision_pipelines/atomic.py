"""Files replaced whole or never: written aside, synced, then renamed over the target.

Every file the project writes goes through here (the catalog's datasets, the image cache's
index, the training checkpoint), so a kill, a crash or a full disk at any moment leaves the
previous file intact, and what is left half-written has a recognisable name that the next
run removes (``hooks.RunGuardHook``).
"""

from __future__ import annotations

import os
from pathlib import Path

PARTIAL = ".partial"


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (hidden, in the same folder)."""
    return path.with_name(f".{path.name}{PARTIAL}-{os.getpid()}")


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """``path`` holds either its old content or ``data``, whole.

    A full disk fails with "No space left on device" naming the file, and the old file stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except OSError as error:
        raise OSError(error.errno, f"could not write {path} ({len(data) / 1e6:.1f} MB): "
                                   f"{error.strerror}; the previous file is unchanged") from error
    finally:
        partial.unlink(missing_ok=True)
