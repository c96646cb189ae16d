"""Every bundled base on every bench data set: accuracy, wall time, images/s.

For each base with packaged ImageNet weights and each data set (../shared/datasets):
  extract    smallcnn extract, cold (an empty cache of its own)
  train      smallcnn train --freeze --epochs E (no early stop)
  finetune   smallcnn finetune --from the extract run --epochs E (no early stop)
Accuracy is the test split's where the data set has one, else the validation split's.
Each cell is recorded in bench/results/bases.json as soon as it is measured, so a run
can be split into parts (--bases, --datasets, --phases); --variant LABEL with extra
options after `--` (for the measured phase's command; finetune starts from a plain
extract) records a tried idea (e.g. `--variant blocks2 --phases finetune --
--unfreeze-blocks 2`).

    .venv/bin/python bench/bases.py [--bases ...] [--datasets ...] [--phases ...] [--epochs 2]
    .venv/bin/python bench/bases.py --summarize      # print the tables only

The default base is chosen by the rule in the README (tools/default_base.py), from these
figures; the summary says what it gives.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED, run_metrics, smallcnn  # noqa: E402
from tools.default_base import (BUNDLED, DATASETS, DEFAULT_RULE, FASTEST, RESULTS,  # noqa: E402
                                load, rule)

PHASES = ("extract", "train", "finetune")


def accuracy(metrics):
    return metrics.get("test_accuracy", metrics.get("val_accuracy"))


def measure(base, dataset, phase, epochs, extra, work):
    data = SHARED / dataset
    env = {"SMALLCNN_CACHE": str(work / "cache")}
    extract_run = work / "extract"
    if phase == "extract":
        shutil.rmtree(work / "cache", ignore_errors=True)
        run = smallcnn("extract", data, "--base", base, *extra, "--out", extract_run,
                       "--overwrite", env=env)
        out = extract_run
    elif phase == "train":
        out = work / "train"
        run = smallcnn("train", "--freeze", data, "--base", base, *extra, "--epochs", epochs,
                       "--patience", epochs, "--out", out, "--overwrite", env=env)
    else:
        if not (extract_run / "metrics.json").exists():
            measure(base, dataset, "extract", epochs, [], work)
        out = work / "finetune"
        run = smallcnn("finetune", data, "--from", extract_run, *extra, "--epochs", epochs,
                       "--patience", epochs, "--out", out, "--overwrite", env=env)
    metrics = run_metrics(out)
    return {"wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"],
            "accuracy": accuracy(metrics), "val_accuracy": metrics.get("val_accuracy"),
            "test_accuracy": metrics.get("test_accuracy"), "val_loss": metrics.get("val_loss"),
            "base_images_per_second": metrics.get("base_images_per_second"),
            "train_images": metrics.get("train_images"), "epochs": epochs if phase != "extract" else None,
            "kept_earlier": metrics.get("kept_earlier_model", False),
            "timings": metrics.get("timings"),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def summary(results):
    lines = ["## Bases", "",
             "bench/bases.py: every bundled base on every bench data set, cold extract (an empty "
             "cache), `train --freeze` and `finetune --from` the extract run for the epochs "
             "given (no early stop). Accuracy: the test split where there is one "
             "(cats-dogs-small, food101-10), else val (ants-bees).", ""]
    variants = sorted({key.split("/")[0] for key in results})
    for phase in PHASES:
        rows = [(v, [results.get(f"{v}/{d}/{phase}") for d in DATASETS]) for v in variants]
        rows = [(v, cells) for v, cells in rows if any(cells)]
        if not rows:
            continue
        lines += [f"### {phase}", "",
                  "| base | " + " | ".join(f"{d}: accuracy, wall s, base images/s"
                                           for d in DATASETS) + " |",
                  "|---|" + "---|" * len(DATASETS)]
        for variant, cells in rows:
            shown = []
            for c in cells:
                if c is None:
                    shown.append("-")
                    continue
                speed = f", {c['base_images_per_second']:.0f}/s" \
                    if c.get("base_images_per_second") else ""
                epochs = f" ({c['epochs']} ep)" if c.get("epochs") else ""
                kept = "; kept the extract's model" if c.get("kept_earlier") else ""
                accuracy = f"val {c['val_accuracy']:.2%}" + (
                    f", test {c['test_accuracy']:.2%}" if c.get("test_accuracy") else "")
                shown.append(f"{accuracy}{epochs}, {c['wall_seconds']:.1f} s{speed}{kept}")
            lines.append(f"| {variant} | " + " | ".join(shown) + " |")
        tried = {v: next(c["options"] for c in cells if c) for v, cells in rows if "@" in v}
        if tried:
            lines += ["", "Variants: " + "; ".join(f"{v}: `{' '.join(o)}`"
                                                   for v, o in tried.items()) + "."]
        lines.append("")
    chosen, candidates = rule(results)
    if candidates:
        lines += [f"Default base by the rule ({DEFAULT_RULE}): **{chosen}**. "
                  + "; ".join(f"{b}: mean {c['mean_accuracy']:.2%}, cold extract "
                              f"{c['slowdown']:.2f}x {FASTEST}'s"
                              f"{'' if c['eligible'] else ' (too slow)'}"
                              for b, c in candidates.items()) + ".", ""]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=list(BUNDLED))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--variant", default="", help="a label for a tried idea")
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("extra", nargs="*", help="options passed on (after --)")
    args = parser.parse_args()
    if not args.summarize:
        for base in args.bases:
            for dataset in args.datasets:
                work = Path(tempfile.mkdtemp(prefix=f"smallcnn-bases-{base}-{dataset}-"))
                for phase in args.phases:
                    result = measure(base, dataset, phase, args.epochs, args.extra, work)
                    result["options"] = args.extra
                    name = base + (f"@{args.variant}" if args.variant else "")
                    results = load()  # re-read: another part may have written meanwhile
                    results[f"{name}/{dataset}/{phase}"] = result
                    RESULTS.parent.mkdir(parents=True, exist_ok=True)
                    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True))
                    print(name, dataset, phase, json.dumps(result), flush=True)
                shutil.rmtree(work, ignore_errors=True)
    print("\n".join(summary(load())))


if __name__ == "__main__":
    main()
