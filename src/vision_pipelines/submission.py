"""The submission table: one id and one predicted label per image of the submission subset.

Ids come from the images' relative paths, stems or names (``submission.id_from``), and stay
unique; with ``submission.template`` (a sample submission found in the dataset) its columns
and row order are copied exactly. The submit node checks lineage and calls ``submission_table``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from . import sources
from .config import SubmissionConfig
from .sources.layouts import find_one

log = logging.getLogger(__name__)


def submission_table(rows: pd.DataFrame, all_files: pd.Series, class_names: list[str], raw_images: Path,
                     submission: SubmissionConfig) -> pd.DataFrame:
    """``<id_column>,<label_column>`` for the predictions ``rows`` (``file, predicted``);
    ``all_files`` are the manifest's, which the relative-path ids are relative to."""
    ids = submission_ids(rows["file"], all_files, submission.id_from)
    if not ids.is_unique:
        log.warning("submission ids from submission.id_from=%r repeat (%d duplicates, e.g. %s): using the "
                    "images' relative paths as ids instead; set submission.id_from=path to choose them",
                    submission.id_from, ids.duplicated().sum(), ids[ids.duplicated()].iloc[0])
        ids = submission_ids(rows["file"], all_files, "path")
    labels = rows["predicted"] if submission.label_format == "name" else rows["predicted"].map(class_names.index)
    table = pd.DataFrame({submission.id_column: ids.to_numpy(), submission.label_column: labels.to_numpy()})
    if submission.template:
        table = fill_template(Path(raw_images), submission, table)
    return table


def fill_template(root: Path, submission: SubmissionConfig, table: pd.DataFrame) -> pd.DataFrame:
    try:  # the lookup the layouts use: a link leading out of the dataset is never followed
        found = find_one(root, submission.template)
    except sources.LayoutError:
        raise FileNotFoundError(f"submission.template={submission.template!r}: no such file under {root} "
                                "(links leading outside the dataset are not followed)") from None
    template = pd.read_csv(found, dtype=str, keep_default_na=False)
    if submission.id_column not in template.columns:
        raise ValueError(f"sample submission {submission.template} has no column {submission.id_column!r}")
    by_id = table.set_index(submission.id_column)[submission.label_column]
    missing = set(template[submission.id_column]) - set(by_id.index)
    if missing:
        raise ValueError(f"{len(missing)} id(s) of the sample submission have no prediction, "
                         f"e.g. {sorted(missing)[:5]}")
    return template.assign(**{submission.label_column: template[submission.id_column].map(by_id).to_numpy()})


def submission_ids(files: pd.Series, all_files: pd.Series, id_from: str) -> pd.Series:
    """Ids of ``files``: relative paths (without the folders every file of the dataset sits
    in, so they do not depend on how deep ``source.path`` points), file stems or file names."""
    dirs = [os.path.dirname(f) for f in all_files]
    common = os.path.commonpath(dirs) if dirs and all(dirs) else ""
    paths = files.map(lambda f: f[len(common) + 1:] if common else f)
    return {"path": paths, "stem": paths.map(lambda p: Path(p).stem),
            "name": paths.map(lambda p: Path(p).name)}[id_from].reset_index(drop=True)
