"""Layouts: how a dataset's folders map to rows of (file, label, origin).

``origin`` is where the source put an image: ``train`` (labelled, to be split), ``test``
(labelled, kept for testing) or ``predict`` (unlabelled, to be predicted). Files that cannot be
images, and rows that cannot be trusted, are returned as skipped with a reason, never dropped
silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import SourceConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Archive and OS litter found in real downloads: never a folder of the dataset.
IGNORED_DIRS = frozenset({"__MACOSX", ".ipynb_checkpoints"})
MAX_SEARCH_DEPTH = 3
COLUMNS = ["file", "label", "origin"]


class LayoutError(ValueError):
    """The folder does not have the layout its configuration describes."""


@dataclass
class Scan:
    """What a layout found under a root folder."""

    images: pd.DataFrame  # file (posix path relative to root), label (str | None), origin
    skipped: pd.DataFrame  # file, label, reason
    class_names: list[str]  # index -> name, the order of the model's outputs


def scan(root: Path, source: SourceConfig) -> Scan:
    """List every image of the dataset under ``root`` in the layout ``source.layout``."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"dataset folder {root} does not exist or is not a folder")
    found = scan_folders(root, source) if source.layout == "folders" else scan_csv(root, source)
    _check_classes(found, root)
    return found


# --- class folders ---------------------------------------------------------------------------


def scan_folders(root: Path, source: SourceConfig) -> Scan:
    """``<train_dir>/<class>/*``, ``<test_dir>/<class>/*`` and ``<predict_dir>/*``.

    Each named folder is located up to three levels below ``root`` (Kaggle archives nest them,
    e.g. ``seg_train/seg_train/<class>``); an unset ``train_dir`` means the class folders sit
    at the root, below any single wrapper folders.
    """
    rows, skipped = [], []
    train_root = locate_dir(root, source.train_dir) if source.train_dir else unwrap(root)
    class_names = _list_class_folders(train_root, root, "train", rows, skipped)
    if source.test_dir:
        test_root = locate_dir(root, source.test_dir)
        _list_class_folders(test_root, root, "test", rows, skipped)
    if source.predict_dir:
        predict_root = locate_dir(root, source.predict_dir)
        for path in sorted(_files(predict_root, recursive=True)):
            _add_file(path, root, None, "predict", rows, skipped)
    return Scan(_frame(rows, COLUMNS), _frame(skipped, ["file", "label", "reason"]), class_names)


def _list_class_folders(folder: Path, root: Path, origin: str, rows: list, skipped: list) -> list[str]:
    classes = []
    for class_dir in sorted(_subdirs(folder)):
        before = len(rows)
        for path in sorted(_files(class_dir, recursive=True)):
            _add_file(path, root, class_dir.name, origin, rows, skipped)
        if len(rows) == before:
            log.warning("class folder %s holds no images: it is not used as a class", class_dir)
            skipped.append({"file": _rel(class_dir, root) + "/", "label": class_dir.name,
                            "reason": "empty class folder"})
        else:
            classes.append(class_dir.name)
    loose = [p for p in _files(folder, recursive=False) if p.suffix.lower() in IMAGE_EXTENSIONS]
    for path in loose:
        skipped.append({"file": _rel(path, root), "label": None,
                        "reason": "image outside any class folder"})
    return classes


def _add_file(path: Path, root: Path, label: str | None, origin: str, rows: list, skipped: list) -> None:
    rel = _rel(path, root)
    if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
        skipped.append({"file": rel, "label": label, "reason": f"not an image file ({path.name})"})
    else:
        rows.append({"file": rel, "label": label, "origin": origin})


def locate_dir(root: Path, name: str) -> Path:
    """The shallowest folder called ``name`` (or at relative path ``name``) within three levels."""
    direct = root / name
    if direct.is_dir():
        return unwrap(direct)
    level = [root]
    for _ in range(MAX_SEARCH_DEPTH):
        matches = sorted(d for parent in level for d in _subdirs(parent) if d.name == name)
        if matches:
            if len(matches) > 1:
                log.warning("several folders are called %r: using %s (others: %s); set the "
                            "relative path to choose", name, matches[0], [str(m) for m in matches[1:]])
            return unwrap(matches[0])
        level = [d for parent in level for d in _subdirs(parent)]
    raise LayoutError(f"no folder named {name!r} within {MAX_SEARCH_DEPTH} levels of {root}; "
                      "check source.path and the folder settings in the dataset's parameters")


def unwrap(folder: Path) -> Path:
    """Descend through wrapper folders: a lone subfolder that itself holds only folders."""
    while True:
        subdirs = list(_subdirs(folder))
        has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in _files(folder, recursive=False))
        if len(subdirs) != 1 or has_images:
            return folder
        child = subdirs[0]
        if any(not p.name.startswith(".") for p in _files(child, recursive=False)):
            # the lone subfolder holds files: it is a class folder, not a wrapper
            return folder
        folder = child


def _subdirs(folder: Path):
    return (d for d in folder.iterdir() if d.is_dir() and d.name not in IGNORED_DIRS
            and not d.name.startswith("."))


def _files(folder: Path, recursive: bool):
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return (p for p in paths if p.is_file() and not any(part in IGNORED_DIRS for part in p.parts))


# --- contest CSV ---------------------------------------------------------------------------


def scan_csv(root: Path, source: SourceConfig) -> Scan:
    """``train.csv`` (id,label) beside ``train/<id>.png``; optional unlabelled ``test.csv``."""
    rows, skipped = [], []
    class_names = list(source.class_names or [])
    train_csv = _find_one(root, source.train_csv)
    labels = _read_csv_rows(train_csv, root, source, "train", class_names, rows, skipped)
    if not class_names:
        class_names = sorted(labels, key=_label_order)
    if source.test_csv:
        _read_csv_rows(_find_one(root, source.test_csv), root, source, "predict", class_names,
                       rows, skipped)
    return Scan(_frame(rows, COLUMNS), _frame(skipped, ["file", "label", "reason"]), class_names)


def _read_csv_rows(csv_path: Path, root: Path, source: SourceConfig, origin: str,
                   class_names: list[str], rows: list, skipped: list) -> set[str]:
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    labelled = origin == "train"
    needed = [source.id_column] + ([source.label_column] if labelled else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise LayoutError(f"{csv_path} has no column(s) {missing}; its columns are {list(table.columns)}")
    ids = table[source.id_column].str.strip()
    duplicates = sorted(set(ids[ids.duplicated()]))
    if duplicates:
        raise LayoutError(f"{csv_path} lists {len(duplicates)} id(s) more than once, e.g. "
                          f"{duplicates[:5]}: images and labels would be misaligned")
    image_dir = csv_path.parent / source.image_dir.format(csv_stem=csv_path.stem)
    if not image_dir.is_dir():
        raise LayoutError(f"image folder {image_dir} for {csv_path.name} does not exist")
    on_disk = {p.name: p for p in _files(image_dir, recursive=False)}
    listed: set[str] = set()
    found_labels: set[str] = set()
    for index, image_id in enumerate(ids):
        name = image_id + source.image_extension
        listed.add(name)
        label = _csv_label(table[source.label_column].iloc[index], class_names) if labelled else None
        rel = _rel(image_dir / name, root)
        if name not in on_disk:
            skipped.append({"file": rel, "label": label, "reason": f"listed in {csv_path.name} but no image file"})
        elif labelled and label is None:
            raw = table[source.label_column].iloc[index]
            skipped.append({"file": rel, "label": raw, "reason": f"unknown label {raw!r}"})
        else:
            rows.append({"file": rel, "label": label, "origin": origin})
            if label is not None:
                found_labels.add(label)
    for name in sorted(set(on_disk) - listed):
        skipped.append({"file": _rel(on_disk[name], root), "label": None,
                        "reason": f"not listed in {csv_path.name}"})
    return found_labels


def _label_order(label: str) -> tuple:
    """Integer labels in numeric order ("2" before "10": output i is label i), then names."""
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def _csv_label(raw: str, class_names: list[str]) -> str | None:
    """A CSV label as a class name: an index into ``class_names``, or the name itself."""
    raw = raw.strip()
    if not class_names:
        return raw or None
    if raw in class_names:
        return raw
    if raw.isdigit() and int(raw) < len(class_names):
        return class_names[int(raw)]
    return None


def _find_one(root: Path, pattern: str) -> Path:
    matches = sorted(root.glob(pattern)) or sorted(root.glob(f"*/{pattern}"))
    if not matches:
        raise LayoutError(f"no file matching {pattern!r} under {root}")
    if len(matches) > 1:
        log.warning("several files match %r: using %s", pattern, matches[0])
    return matches[0]


# --- shared ----------------------------------------------------------------------------------


def _check_classes(found: Scan, root: Path) -> None:
    if found.images.empty or not (found.images["origin"] == "train").any():
        raise LayoutError(f"no training images found under {root}")
    if len(found.class_names) < 2:
        raise LayoutError(f"found {len(found.class_names)} class(es) {found.class_names} under {root}: "
                          "a classifier needs at least 2")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns).astype(object)
