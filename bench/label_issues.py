"""How well `smallcnn check --label-issues` finds planted label errors and outliers.

For each set, a copy (symbolic links) of its train and validation splits where a seeded
random fraction of the train images is filed under another class, and 10 images of
food101-10 (5 in each of the first two classes) are added to train as strangers. Then
the analysis (the default base, 5 folds), and precision and recall of its label-error
flags against the planted ones, how many strangers it calls outliers, and the seconds
(features cold, then cached). cleanlab's `find_label_issues` on the same out-of-fold
probabilities, side by side. food101-10 is only linked from a temporary folder.

    .venv/bin/python bench/label_issues.py
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, load_results, save_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "label_issues.json"
SETS = {"cats-dogs-small": 0.05, "ants-bees": 0.10}
STRANGERS = 10
TARGET = {"recall": 0.90, "precision": 0.80}


def planted_copy(source, rate, work, seed=0):
    """The copy described above: (folder, planted label errors, strangers)."""
    rng = random.Random(seed)
    planted, strangers = set(), set()
    for split in sorted(p for p in source.iterdir() if p.is_dir() and p.name != "test"):
        classes = sorted(p.name for p in split.iterdir() if p.is_dir())
        for name in classes:
            for image in sorted(split.joinpath(name).iterdir()):
                filed = name
                if split.name == "train" and rng.random() < rate:
                    filed = rng.choice([c for c in classes if c != name])
                link = work / split.name / filed / image.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(image.resolve())
                if filed != name:
                    planted.add(str(link))
        if split.name == "train":
            food = sorted((SHARED / "food101-10" / "train").rglob("*.jpg"))
            for index, image in enumerate(rng.sample(food, STRANGERS)):
                link = work / "train" / classes[index % 2] / f"stranger-{image.name}"
                link.symlink_to(image)
                strangers.add(str(link))
    return work, planted, strangers


def scores(flagged, planted):
    hits = len(flagged & planted)
    return {"flagged": len(flagged), "correct": hits,
            "precision": hits / len(flagged) if flagged else None,
            "recall": hits / len(planted) if planted else None}


def measure(name, rate, work):
    from smallcnn.labels.label_issues import find_label_issues

    data, planted, strangers = planted_copy(SHARED / name if name != "ants-bees" else
                                            ROOT / "datasets" / name, rate, work / name)
    times = []
    for _ in range(2):  # cold (the features computed), then from the cache
        started = time.perf_counter()
        report, _ = find_label_issues(data)
        times.append(time.perf_counter() - started)
    flagged = {issue.path for issue in report.label_issues}
    cell = {"set": name, "rate": rate, "images": report.images, "planted": len(planted),
            "seconds_cold": times[0], "seconds_cached": times[1],
            "out_of_fold_accuracy": report.oof_accuracy,
            "smallcnn": scores(flagged - strangers, planted),
            "strangers": len(strangers),
            "strangers_in_outliers": len({o.path for o in report.outliers} & strangers),
            "outliers": len(report.outliers),
            "strangers_flagged_as_label_errors": len(flagged & strangers)}
    try:
        from cleanlab.filter import find_label_issues as cleanlab_find
    except ImportError:
        cell["cleanlab"] = "not installed"
    else:
        mask = cleanlab_find(report.labels, report.probabilities)
        theirs = {report.paths[i] for i in range(len(mask)) if mask[i]}
        cell["cleanlab"] = scores(theirs - strangers, planted)
    return cell


def load():
    return load_results(RESULTS)


def _percent(value):
    return "-" if value is None else f"{value:.1%}"


def summary(results):
    if not results:
        return []
    lines = ["## Finding label errors and outliers", "",
             f"bench/label_issues.py ({results['date']}): `smallcnn check --label-issues` "
             "(the default base, 5 folds) on copies of the bench sets with a seeded fraction "
             f"of the train labels flipped and {STRANGERS} food101-10 images added to train; "
             "cleanlab's `find_label_issues` on the same out-of-fold probabilities. Target: "
             f"recall >= {TARGET['recall']:.0%} with precision >= {TARGET['precision']:.0%}.",
             "", "| set | flipped | smallcnn precision | recall | cleanlab precision | recall "
             "| strangers among outliers | seconds cold, cached |", "|---|---|---|---|---|---|---|---|"]
    for cell in results["cells"]:
        theirs = cell["cleanlab"] if isinstance(cell["cleanlab"], dict) else {}
        lines.append(
            f"| {cell['set']} ({cell['images']} images) | {cell['planted']} ({cell['rate']:.0%} "
            f"of train) | {_percent(cell['smallcnn']['precision'])} | "
            f"{_percent(cell['smallcnn']['recall'])} | {_percent(theirs.get('precision'))} | "
            f"{_percent(theirs.get('recall'))} | {cell['strangers_in_outliers']} of "
            f"{cell['strangers']} ({cell['outliers']} outliers) | "
            f"{cell['seconds_cold']:.1f}, {cell['seconds_cached']:.1f} |")
    return lines + [""]


def main():
    # No options; --help says what the bench does (and runs nothing).
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    import os

    results = {"date": time.strftime("%Y-%m-%d"), "cells": []}
    with tempfile.TemporaryDirectory(prefix="smallcnn-label-issues-") as folder:
        work = Path(folder)
        os.environ["SMALLCNN_CACHE"] = str(work / "cache")
        for name, rate in SETS.items():
            cell = measure(name, rate, work)
            results["cells"].append(cell)
            print(json.dumps(cell), flush=True)
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
