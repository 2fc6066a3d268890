"""Do the recipe options help the small `--env=cpu` recipes? garbage and intel samples, several seeds.

    python benchmarks/samples_options.py
    python benchmarks/samples_options.py --datasets garbage --seeds 43 44 45 46 47

Each cell is ``kedro run --pipelines=<dataset> --env=cpu`` on the real sample (``$DATASETS_DIR``)
with the variant's settings and ``train.seed``; the split (``split.seed``) stays, so every cell is
scored on the same test images. The samples are small (garbage: 36 test images, one image = 2.8
points; intel: 60), so a variant counts as better only when its mean over the seeds is. Results:
``benchmarks/results/samples_options_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from cifar10_ablation import RECIPE_OPTIONS
from common import RESULTS, SAMPLE_ROOTS, SAMPLES, machine_line, machine_record, write_record
from pipelines_on_samples import run_pipeline
from vision_pipelines.loader import resolve_device

VARIANTS = {  # name: settings on top of conf/cpu's recipe
    "as configured": "",
    "airbench options": RECIPE_OPTIONS,
    "class-balanced loss": "train.class_balance=loss",
    "plain loss": "train.class_balance=none",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["garbage", "intel"], choices=list(SAMPLE_ROOTS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[43, 44, 45])
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="folder of the samples ($DATASETS_DIR)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for dataset in args.datasets:
            source = (args.samples / SAMPLE_ROOTS[dataset]).resolve()
            for number, variant in enumerate(args.variants):
                runs = [run_pipeline(dataset, source, "cpu", Path(workdir) / f"{number}_{seed}",
                                     ",".join(filter(None, [VARIANTS[variant], f"train.seed={seed}"])))
                        for seed in args.seeds]
                rows.append({"dataset": dataset, "variant": variant, "settings": VARIANTS[variant],
                             "seeds": args.seeds, "accuracy": [run["accuracy"] for run in runs],
                             "images": runs[0]["images_evaluated"], "subset": runs[0]["evaluated_on"],
                             "train_seconds": [run["train_seconds"] for run in runs]})
                print(json.dumps(rows[-1]))
    record = {**machine_record(resolve_device("auto")), "rows": rows}
    lines = ["# Recipe options on the garbage and intel samples, `--env=cpu`", "", machine_line(record), "",
             "Test accuracy per training seed (same split), fp32. Small samples: one garbage test image is "
             "2.8 points.", "",
             "| dataset | variant | settings | " + " | ".join(f"seed {seed}" for seed in args.seeds)
             + " | mean | train time (mean) |", "|---|---|---|" + "---|" * (len(args.seeds) + 2)]
    for row in rows:
        lines.append(f"| {row['dataset']} ({row['subset']}, {row['images']}) | {row['variant']} | "
                     f"`{row['settings'] or '(as configured)'}` | "
                     + " | ".join(f"{accuracy:.1%}" for accuracy in row["accuracy"])
                     + f" | **{statistics.mean(row['accuracy']):.1%}** | "
                     f"{statistics.mean(row['train_seconds']):.0f} s |")
    write_record(record, lines, "samples_options_cpu", args.results)


if __name__ == "__main__":
    main()
