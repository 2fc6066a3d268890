"""Layouts: how a dataset's folders map to rows of (file, label, origin).

``origin`` is where the source put an image: ``train`` (labelled, to be split), ``test``
(labelled, kept for testing) or ``predict`` (unlabelled, to be predicted). Files that cannot be
images, and rows that cannot be trusted, are returned as skipped with a reason, never dropped
silently.

What is read, in every layout and in ``list_images`` (one rule):

- nothing outside the dataset's root folder is listed or read; the root itself may be a link
  (``data/01_raw/<dataset>`` is one), and is judged by the folder it points to;
- a link to a folder inside the dataset is never followed: it is skipped, ``link to a folder``;
  so a link to ``/etc`` lists nothing, a link to ``.`` is no class, and a link loop is never walked;
- a link to a file is read only when it resolves inside the root; otherwise it is skipped
  (``link outside the dataset``, ``broken link``);
- a file or folder whose name is not valid UTF-8 is skipped under an escaped, printable form of
  its name (``bad\\xff.jpg``), since the manifest (Parquet) stores text;
- a contest CSV row whose id is not a plain file name (empty, absolute, with ``/``, ``\\``) is
  skipped as ``<csv> row <n>``; integral labels written as floats (``6.0``) read as integers.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import SourceConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Archive and OS litter found in real downloads: never a folder of the dataset.
IGNORED_DIRS = frozenset({"__MACOSX", ".ipynb_checkpoints"})
MAX_SEARCH_DEPTH = 3
COLUMNS = ["file", "label", "origin"]
SKIPPED_COLUMNS = ["file", "label", "reason"]


class LayoutError(ValueError):
    """The folder does not have the layout its configuration describes."""


@dataclass
class Scan:
    """What a layout found under a root folder."""

    images: pd.DataFrame  # file (posix path relative to root), label (str | None), origin
    skipped: pd.DataFrame  # file, label, reason
    class_names: list[str]  # index -> name, the order of the model's outputs


@dataclass
class Found:
    """What a walk of the dataset has found so far: image rows, and what was skipped with why."""

    rows: list[dict] = field(default_factory=list)  # file, label, origin
    skipped: list[dict] = field(default_factory=list)  # file, label, reason

    def add(self, file: str, label: str | None, origin: str) -> None:
        self.rows.append({"file": file, "label": label, "origin": origin})

    def skip(self, file: str, label: str | None, reason: str) -> None:
        self.skipped.append({"file": file, "label": label, "reason": reason})

    def skip_path(self, path: Path, root: Path, label: str | None, reason: str, folder: bool = False) -> None:
        """Skip ``path`` under its printable name relative to ``root`` (a folder's ends in ``/``)."""
        self.skip(printable(_rel(path, root)) + ("/" if folder else ""), label, reason)

    def scan(self, class_names: list[str]) -> Scan:
        return Scan(_frame(self.rows, COLUMNS), _frame(self.skipped, SKIPPED_COLUMNS), class_names)


def scan(root: Path, source: SourceConfig) -> Scan:
    """List every image of the dataset under ``root`` in the layout ``source.layout``."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"dataset folder {root} does not exist or is not a folder")
    root = root.resolve()  # the root may be a link: what lies below is judged against its target
    found = scan_folders(root, source) if source.layout == "folders" else scan_csv(root, source)
    _check_classes(found, root)
    return found


def list_images(path: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files in folder ``path`` (at any depth), or ``path`` itself if it is an image file,
    by the rules ``scan`` follows: links, names, non-image files.

    Returns the files (under ``path`` resolved, in sorted order) and what was skipped, as
    ``(printable path relative to path, reason)``.
    """
    path = Path(path)
    if path.is_file():  # the root may be a link
        reason = _name_problem(path.name, "file") or _image_problem(path.name)
        return ([], [(printable(path.name), reason)]) if reason else ([path.resolve()], [])
    if not path.is_dir():
        raise LayoutError(f"{path} is neither an image file nor a folder")
    root = path.resolve()
    found = Found()
    files = _images_below(root, root, None, found)
    return files, [(row["file"], row["reason"]) for row in found.skipped]


# --- class folders ---------------------------------------------------------------------------


def scan_folders(root: Path, source: SourceConfig) -> Scan:
    """``<train_dir>/<class>/*``, ``<test_dir>/<class>/*`` and ``<predict_dir>/*``.

    Each named folder is located up to three levels below ``root`` (Kaggle archives nest them,
    e.g. ``seg_train/seg_train/<class>``); an unset ``train_dir`` means the class folders sit
    at the root, below any single wrapper folders.
    """
    found = Found()
    train_root = locate_dir(root, source.train_dir) if source.train_dir else unwrap(root)
    class_names = _list_class_folders(train_root, root, "train", found)
    if source.test_dir:
        test_root = locate_dir(root, source.test_dir)
        _list_class_folders(test_root, root, "test", found)
    if source.predict_dir:
        predict_root = locate_dir(root, source.predict_dir)
        for path in _images_below(predict_root, root, None, found):
            found.add(_rel(path, root), None, "predict")
    return found.scan(class_names)


def _list_class_folders(folder: Path, root: Path, origin: str, found: Found) -> list[str]:
    classes = []
    for entry in _entries(folder):
        path = Path(entry.path)
        if not os.path.isdir(entry.path):  # follows links: a link to a folder is reported below
            if _has_image_suffix(entry.name):
                found.skip_path(path, root, None, "image outside any class folder")
            continue
        if entry.name in IGNORED_DIRS or entry.name.startswith("."):
            continue
        problem = _entry_problem(entry, root)
        if problem:
            found.skip_path(path, root, None, problem, folder=True)
            continue
        before = len(found.rows)
        for file in _images_below(path, root, entry.name, found):
            found.add(_rel(file, root), entry.name, origin)
        if len(found.rows) == before:
            log.warning("class folder %s holds no images: it is not used as a class", path)
            found.skip_path(path, root, entry.name, "empty class folder", folder=True)
        else:
            classes.append(entry.name)
    return classes


def locate_dir(root: Path, name: str) -> Path:
    """The shallowest folder called ``name`` (or at relative path ``name``) within three levels."""
    direct = root / name
    if direct.is_dir():
        if not _within(root, direct):
            raise LayoutError(f"{name!r} under {root} is a link to a folder or leads outside it: links "
                              "inside a dataset are not followed; point source.path at the folder itself")
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
        subdirs = _subdirs(folder)
        if len(subdirs) != 1 or any(_has_image_suffix(name) for name in _file_names(folder)):
            return folder
        child = subdirs[0]
        if any(not name.startswith(".") for name in _file_names(child)):
            # the lone subfolder holds files: it is a class folder, not a wrapper
            return folder
        folder = child


# --- what is read: one walk, one rule --------------------------------------------------------


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _subdirs(folder: Path) -> list[Path]:
    """Real folders (never links) that may belong to the dataset."""
    return [Path(e.path) for e in _entries(folder) if e.is_dir(follow_symlinks=False)
            and e.name not in IGNORED_DIRS and not e.name.startswith(".") and _is_utf8(e.name)]


def _file_names(folder: Path) -> list[str]:
    return [e.name for e in _entries(folder) if not os.path.isdir(e.path)]


def _images_below(folder: Path, root: Path, label: str | None, found: Found) -> list[Path]:
    """Image files at any depth below ``folder``, in sorted order; everything else that is
    there is skipped, with its reason, in ``found``."""
    images = []
    for path in _walk(folder, root, label, found):
        problem = _image_problem(path.name)
        if problem:
            found.skip_path(path, root, label, problem)
        else:
            images.append(path)
    return images


def _walk(folder: Path, root: Path, label: str | None, found: Found) -> list[Path]:
    files = []
    for entry in _entries(folder):
        path = Path(entry.path)
        real_folder = entry.is_dir(follow_symlinks=False)
        problem = _entry_problem(entry, root)
        if problem:
            found.skip_path(path, root, label, problem, folder=os.path.isdir(entry.path))
        elif real_folder:
            if entry.name not in IGNORED_DIRS:
                files += _walk(path, root, label, found)
        else:
            files.append(path)
    return files


def _entry_problem(entry: os.DirEntry, root: Path) -> str | None:
    """Why ``entry`` is not read, or None: the rule in this module's docstring."""
    real_folder = entry.is_dir(follow_symlinks=False)
    problem = _name_problem(entry.name, "folder" if real_folder else "file")
    if problem:
        if real_folder:
            count = sum(len(files) for _, _, files in os.walk(entry.path))
            problem += f" ({count} file(s) in it not used)"
        return problem
    if entry.is_symlink():
        target = os.path.realpath(entry.path)
        if os.path.isdir(target):
            return "link to a folder (links to folders are not followed)"
        if not os.path.isfile(target):
            return "broken link"
        if not _inside(target, root):
            return "link outside the dataset"
        return None
    if not (real_folder or entry.is_file(follow_symlinks=False)):
        return "not a regular file"
    return None


def _name_problem(name: str, kind: str) -> str | None:
    return None if _is_utf8(name) else f"{kind} name is not valid UTF-8"


def _image_problem(name: str) -> str | None:
    return None if _has_image_suffix(name) and not name.startswith(".") else f"not an image file ({printable(name)})"


def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # a name that is not UTF-8 on disk holds surrogates here
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 written as ``\\xff``: safe to store and show."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _inside(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


def _within(root: Path, path: Path) -> bool:
    """``path`` (``root / relative``) lies in the dataset: no ``..``, no link to a folder on the
    way, and a link to a file resolves inside ``root``."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    if ".." in parts:
        return False
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink() and (current != path or current.is_dir()):
            return False
    return _inside(os.path.realpath(path), root)


# --- contest CSV ---------------------------------------------------------------------------


def scan_csv(root: Path, source: SourceConfig) -> Scan:
    """``train.csv`` (id,label) beside ``train/<id>.png``; optional unlabelled ``test.csv``."""
    found = Found()
    class_names = list(source.class_names or [])
    train_csv = find_one(root, source.train_csv)
    labels = _read_csv_rows(train_csv, root, source, "train", class_names, found)
    if not class_names:
        class_names = sorted(labels, key=_label_order)
    if source.test_csv:
        _read_csv_rows(find_one(root, source.test_csv), root, source, "predict", class_names, found)
    return found.scan(class_names)


@dataclass
class _ImageFolder:
    """A contest CSV's image folder, as listed."""

    path: Path
    files: dict[str, Path] = field(default_factory=dict)  # readable files, by name
    not_read: set[str] = field(default_factory=set)  # names already skipped, with their reason
    listed: set[str] = field(default_factory=set)  # names the CSV lists


def _read_csv_rows(csv_path: Path, root: Path, source: SourceConfig, origin: str,
                   class_names: list[str], found: Found) -> set[str]:
    """A row of ``origin`` for each id of ``csv_path`` whose image is in the CSV's image folder;
    every other id, and every file of the folder the CSV does not list, skipped with its reason.
    Returns the labels found."""
    table = _read_csv(csv_path, source, labelled=origin == "train")
    folder = _list_image_folder(csv_path, root, source, found)
    labels = _match_ids(csv_path, table.assign(name=table["id"] + source.image_extension), folder, root, origin,
                        class_names, found)
    for name in sorted(set(folder.files) - folder.listed):
        found.skip(_rel(folder.files[name], root), None, f"not listed in {csv_path.name}")
    return labels


def _read_csv(csv_path: Path, source: SourceConfig, labelled: bool) -> pd.DataFrame:
    """The CSV's ids (stripped) and raw labels (None when unlabelled), as columns ``id, label``;
    refused when a column is missing or an id repeats."""
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding_errors="backslashreplace")
    needed = [source.id_column] + ([source.label_column] if labelled else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise LayoutError(f"{csv_path} has no column(s) {missing}; its columns are {list(table.columns)}")
    ids = table[source.id_column].str.strip()
    duplicates = sorted(set(ids[ids.duplicated() & (ids != "")]))
    if duplicates:
        raise LayoutError(f"{csv_path} lists {len(duplicates)} id(s) more than once, e.g. "
                          f"{duplicates[:5]}: images and labels would be misaligned")
    return pd.DataFrame({"id": ids, "label": table[source.label_column] if labelled else None})


def _list_image_folder(csv_path: Path, root: Path, source: SourceConfig, found: Found) -> _ImageFolder:
    """The files of ``csv_path``'s image folder (``source.image_dir``), by the rule of this module;
    what cannot be read is skipped in ``found``."""
    folder = _ImageFolder(csv_path.parent / source.image_dir.format(csv_stem=csv_path.stem))
    if not folder.path.is_dir():
        raise LayoutError(f"image folder {folder.path} for {csv_path.name} does not exist")
    if not _within(root, folder.path):
        raise LayoutError(f"image folder {folder.path} for {csv_path.name} is a link or lies outside {root}: "
                          "links inside a dataset are not followed")
    for entry in _entries(folder.path):
        problem = _entry_problem(entry, root)
        if problem:
            folder.not_read.add(entry.name)
            found.skip_path(Path(entry.path), root, None, problem, folder=os.path.isdir(entry.path))
        elif not entry.is_dir(follow_symlinks=False):
            folder.files[entry.name] = Path(entry.path)
    return folder


def _match_ids(csv_path: Path, table: pd.DataFrame, folder: _ImageFolder, root: Path, origin: str,
               class_names: list[str], found: Found) -> set[str]:
    """Each CSV row matched to its image file: added as a row of ``origin``, or skipped with why;
    returns the labels of the rows added."""
    labelled, csv_rel, labels = origin == "train", _rel(csv_path, root), set()
    for number, (image_id, name, raw) in enumerate(zip(table["id"], table["name"], table["label"]), start=1):
        label = _csv_label(raw, class_names) if labelled else None
        problem = _id_problem(image_id)
        if problem:
            found.skip(f"{csv_rel} row {number}", label or raw, problem)
            continue
        folder.listed.add(name)
        rel = _rel(folder.path / name, root)
        if name in folder.not_read:
            continue  # already skipped, with the reason it cannot be read
        if name not in folder.files:
            found.skip(rel, label, f"listed in {csv_path.name} but no image file")
        elif labelled and label is None:
            found.skip(rel, raw, f"unknown label {raw!r}")
        else:
            found.add(rel, label, origin)
            if label is not None:
                labels.add(label)
    return labels


def _id_problem(image_id: str) -> str | None:
    """An id names a file in the CSV's image folder: a plain name, nothing that leads elsewhere."""
    if not image_id:
        return "empty id"
    if image_id in (".", "..") or any(c in image_id for c in "/\\\0"):
        return f"not a plain file name (id {image_id!r})"
    return None


def _label_order(label: str) -> tuple:
    """Integer labels in numeric order ("2" before "10": output i is label i), then names."""
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


INTEGRAL = re.compile(r"\+?(\d+)(?:\.0*)?")


def _csv_label(raw: str, class_names: list[str]) -> str | None:
    """A CSV label as a class name: an index into ``class_names``, or the name itself.

    Integral numbers read as integers: ``6.0`` (as spreadsheets and pandas write them) and ``06``
    are label ``6``.
    """
    raw = raw.strip()
    integral = INTEGRAL.fullmatch(raw)
    number = str(int(integral.group(1))) if integral else None
    if not class_names:
        return number or raw or None
    if raw in class_names:
        return raw
    if number is not None and int(number) < len(class_names):
        return class_names[int(number)]
    return None


def find_one(root: Path, pattern: str) -> Path:
    """The file matching ``pattern`` at the root or one level below, inside the dataset: never
    through a link to a folder, nor a link to a file outside ``root``."""
    root = Path(root).resolve()
    matches = [m for m in sorted(root.glob(pattern)) if _within(root, m)] or \
        [m for m in sorted(root.glob(f"*/{pattern}")) if _within(root, m)]
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
