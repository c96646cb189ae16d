"""What test-time augmentation buys: accuracy and images/s over 1, 2, 4 and 8 views.

Models: `smallcnn extract` (defaults) of cats-dogs-small and ants-bees, and `smallcnn
finetune` (defaults) of ants-bees (cats-dogs-small's would take most of an hour on this
machine). Each is evaluated on cats-dogs-small's test split and ants-bees' val split,
in-process, through the same engine. Noise: the gain of TTA is paired (the same images),
so it is compared with two standard errors of a paired difference, 2 * sqrt(b + c) / n,
where b and c count the images it turns right and wrong (McNemar's).

    .venv/bin/python bench/tta.py
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, load_results, save_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "tta.json"
VIEW_COUNTS = (1, 2, 4, 8)
CELLS = [("cats-dogs-small", "extract", "test"), ("ants-bees", "extract", "val"),
         ("ants-bees", "finetune", "val")]


def data_of(name):
    return ROOT / "datasets" / name if name == "ants-bees" else SHARED / name


def train(name, command, work):
    from smallcnn import train as commands

    out = work / f"{name}-{command}"
    getattr(commands, command)(data_of(name), out=out)
    return out


def measure(run, split):
    import numpy as np

    from smallcnn.inference.evaluate import evaluate
    from smallcnn.inference.predict import load_run

    classifier = load_run(run)
    rows, right = [], {}
    for views in VIEW_COUNTS:
        started = time.perf_counter()
        result = evaluate(run, split=split, classifier=classifier, tta=views, top_wrong=100000)
        seconds = time.perf_counter() - started
        wrong = {w["path"] for w in result.wrong}
        right[views] = wrong
        total = int(np.sum(result.confusion_matrix))
        row = {"views": views, "accuracy": result.accuracy, "images": total,
               "seconds": seconds, "images_per_second": total / seconds}
        if views > 1:
            turned_right = len(right[1] - wrong)
            turned_wrong = len(wrong - right[1])
            row.update(turned_right=turned_right, turned_wrong=turned_wrong,
                       noise=2 * math.sqrt(turned_right + turned_wrong) / total)
        rows.append(row)
        print(json.dumps({"run": str(run), **row}), flush=True)
    return rows


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    lines = ["## Test-time augmentation", "",
             f"bench/tta.py ({results['date']}): accuracy and images/s of `evaluate --tta-views "
             "N` (the views: image, mirror, centre crop, its mirror, then the corner crops). "
             "Gain against one view, and the noise of that paired gain (2 standard errors, "
             "from the images it turns right and wrong).", "",
             "| model | split | views | accuracy | gain | noise | turned right, wrong | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in results["cells"]:
        base = cell["rows"][0]["accuracy"]
        for row in cell["rows"]:
            first = row["views"] == 1
            gain = "-" if first else f"{row['accuracy'] - base:+.2%}"
            noise = "-" if first else f"{row['noise']:.2%}"
            turned = "-" if first else f"{row['turned_right']}, {row['turned_wrong']}"
            lines.append(f"| {cell['set']} {cell['command']} | {cell['split']} | {row['views']} "
                         f"| {row['accuracy']:.2%} | {gain} | {noise} | {turned} | "
                         f"{row['images_per_second']:.1f} |")
    return lines + [""]


def main():
    # No options; --help says what the bench does (and runs nothing).
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    import os

    results = {"date": time.strftime("%Y-%m-%d"), "cells": []}
    with tempfile.TemporaryDirectory(prefix="smallcnn-tta-") as folder:
        work = Path(folder)
        os.environ["SMALLCNN_CACHE"] = str(work / "cache")
        for name, command, split in CELLS:
            run = train(name, command, work)
            results["cells"].append({"set": name, "command": command, "split": split,
                                     "rows": measure(run, split)})
            save_results(RESULTS, results, summary)  # after each cell: a failure keeps them


if __name__ == "__main__":
    main()
