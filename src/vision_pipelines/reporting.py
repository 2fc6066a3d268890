"""Reporting: classification metrics and the figures of the evaluation report.

Figures are built as ``matplotlib.figure.Figure`` objects (no pyplot state) and saved by
``matplotlib.MatplotlibDataset`` catalog entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .config import SUBSETS

FULL_MATRIX_MAX_CLASSES = 25  # above this a confusion matrix is unreadable: show the top pairs


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, class_names: list[str],
                           top_confused: int = 20) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, the confusion matrix and the most confused pairs."""
    k = len(class_names)
    matrix = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    support = matrix.sum(1)
    predicted_count = matrix.sum(0)
    hits = np.diag(matrix)
    recall = np.divide(hits, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(hits, predicted_count, out=np.zeros(k), where=predicted_count > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k),
                   where=precision + recall > 0)
    off_diagonal = matrix * (1 - np.eye(k, dtype=matrix.dtype))
    pairs = np.argsort(off_diagonal, axis=None)[::-1][:top_confused]
    present = support > 0
    return {
        "images": int(support.sum()),
        "accuracy": float(hits.sum() / max(support.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"accuracy": float(recall[i]), "precision": float(precision[i]),
                   "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "top_confused": [
            {"true": class_names[p // k], "predicted": class_names[p % k], "count": int(off_diagonal.flat[p])}
            for p in pairs if off_diagonal.flat[p] > 0
        ],
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),  # rows: true class, columns: predicted class
    }


def plot_curves(history: pd.DataFrame, columns: dict[str, str], ylabel: str, title: str) -> Figure:
    """One line per history column against the epoch."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for column, label in columns.items():
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_lr_schedule(steps: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(steps["step"], steps["lr"])
    ax.set(xlabel="batch", ylabel="learning rate", title="Learning rate per batch (one-cycle)")
    ax.grid(alpha=0.3)
    return fig


def plot_confusion(metrics: dict[str, Any]) -> Figure:
    """The full matrix for few classes; for many, the most confused pairs and their sub-matrix."""
    names = metrics["class_names"]
    matrix = np.asarray(metrics["confusion_matrix"])
    if len(names) <= FULL_MATRIX_MAX_CLASSES:
        size = 3 + 0.45 * len(names)
        fig = Figure(figsize=(size + 1, size), layout="constrained")
        _matrix_axes(fig.add_subplot(), matrix, names, "Confusion matrix")
        return fig
    pairs = metrics["top_confused"]
    involved = list(dict.fromkeys([p["true"] for p in pairs] + [p["predicted"] for p in pairs]))[:20]
    fig = Figure(figsize=(16, 8), layout="constrained")
    bars, sub = fig.subplots(1, 2, width_ratios=[1, 1.2])
    labels = [f"{p['true']} → {p['predicted']}" for p in pairs][::-1]
    bars.barh(labels, [p["count"] for p in pairs][::-1], color="tab:red")
    bars.set(xlabel="images", title=f"Top {len(pairs)} confused pairs (true → predicted)")
    if involved:
        index = [names.index(n) for n in involved]
        _matrix_axes(sub, matrix[np.ix_(index, index)], involved,
                     f"Confusion among the {len(involved)} most confused of {len(names)} classes")
    else:
        sub.set_axis_off()
        sub.set_title("No confusions")
    return fig


def signed(fig: Figure, made_by: dict[str, Any]) -> Figure:
    """``fig`` with the model that made its figures named in its bottom-right corner."""
    if made_by.get("model"):
        version = made_by.get("model_version")
        name = f"{version} (weights {made_by['model']})" if version else made_by["model"]
        fig.text(0.995, 0.003, f"model {name}", ha="right", va="bottom", fontsize=6, color="grey")
    return fig


def _matrix_axes(ax, matrix: np.ndarray, names: list[str], title: str) -> None:
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > threshold else "black")


def plot_per_class_accuracy(metrics: dict[str, Any]) -> Figure:
    rows = sorted(((v["accuracy"], name) for name, v in metrics["per_class"].items() if v["support"]))
    fig = Figure(figsize=(7, 1.5 + 0.18 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([name for _, name in rows], [acc for acc, _ in rows], color="tab:blue")
    ax.axvline(metrics["accuracy"], color="black", linestyle="--", label=f"overall {metrics['accuracy']:.3f}")
    ax.set(xlim=(0, 1), xlabel="accuracy (recall)", title="Per-class accuracy, worst first")
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    return fig


def plot_image_grid(images: list[np.ndarray], titles: list[str], title: str, columns: int = 8) -> Figure:
    """Images (HWC or HW uint8) in a grid with a caption each."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(2 * columns, 2.3 * rows + 0.5), layout="constrained")
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, caption in zip(axes, images, titles):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    if not images:
        axes[0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    return fig


def data_report(manifest: pd.DataFrame, decoded: pd.DataFrame, class_names: list[str],
                min_train_per_class: int = 5) -> dict[str, Any]:
    """What was found, used and skipped (with reasons), per class and per subset, and warnings
    for classes with fewer than ``min_train_per_class`` training images.

    ``manifest`` holds every file the source listed (``subset == "skipped"`` with a ``reason``
    when it was not an image); ``decoded`` holds one row per decode attempt (``reason`` set when
    the file could not be decoded). ``errors`` (empty here) is where checks that must stop
    training add their findings.
    """
    failed = decoded.set_index("file")["reason"].dropna()
    table = manifest.assign(reason=manifest["reason"].where(manifest["reason"].notna(),
                                                            manifest["file"].map(failed)))
    table["used"] = table["reason"].isna() & (table["subset"] != "skipped")
    table["class"] = table["label"].fillna("(unlabelled)")
    per_class = {}
    for name, rows in table.groupby("class", sort=True):
        used = rows[rows["used"]]
        per_class[name] = {"found": len(rows), "used": int(len(used)), "skipped": int((~rows["used"]).sum()),
                           **{s: int((used["subset"] == s).sum()) for s in SUBSETS}}
    skipped = table[~table["used"]].assign(short_reason=lambda t: t["reason"].str.split(" \\(").str[0])
    train_counts = {n: per_class.get(n, {}).get("train", 0) for n in class_names}
    smallest = min(train_counts, key=train_counts.get, default=None)
    largest = max(train_counts, key=train_counts.get, default=None)
    small = {name: count for name, count in train_counts.items() if count < min_train_per_class}
    warnings = [f"class {name!r} has {'no' if count == 0 else f'only {count}'} training image(s) "
                f"(split.min_train_per_class={min_train_per_class})" for name, count in small.items()]
    return {
        "errors": [],
        "warnings": warnings,
        "found": len(table), "used": int(table["used"].sum()), "skipped": len(skipped),
        "subsets": {s: int((table["used"] & (table["subset"] == s)).sum())
                    for s in SUBSETS},
        "skipped_by_reason": skipped["short_reason"].value_counts().to_dict(),
        "skipped_by_class": {name: rows["short_reason"].value_counts().to_dict()
                             for name, rows in skipped.groupby("class", sort=True)},
        "skipped_files": skipped[["file", "label", "reason"]].head(1000).to_dict("records"),
        "class_balance": {  # training images per class
            "classes": len(class_names), "min_train": train_counts.get(smallest, 0),
            "max_train": train_counts.get(largest, 0), "smallest_class": smallest, "largest_class": largest,
            "max_to_min_ratio": (round(train_counts[largest] / train_counts[smallest], 2)
                                 if smallest is not None and train_counts[smallest] else None),
            "below_minimum": small,  # classes with fewer than min_train_per_class training images
        },
        "per_class": per_class,
    }
