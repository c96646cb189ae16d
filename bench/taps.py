"""Intermediate taps: what pooling a base's inner blocks beside its last layer gives.

    .venv/bin/python bench/taps.py [--datasets food101-10 ...] [--resplits 10]

Two measurements on each set, from the features extract computes and caches (the default
base, its taps included):
1. Issue 28's probe: a logistic regression (scikit-learn, C chosen on val, test read once)
   on the last layer's pooled features against the last layer's and the taps' (each group
   L2-normalised), with McNemar's exact test on test; then the same on `--resplits`
   re-splits of all the set's images (the split sizes kept), the mean gain.
2. The product: `smallcnn extract` with `--taps off`, `on` and `auto` (the default: the
   taps kept where they gain on val), val and test accuracy, and what auto chose.
"""

import argparse
import datetime
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, load_results, run_metrics, save_results, smallcnn  # noqa: E402,E501

RESULTS = ROOT / "bench" / "results" / "taps.json"
DATASETS = ("food101-10",)
C_GRID = (0.1, 0.3, 1, 3, 10, 30, 100)
RESPLITS = 10
CHOICES = ("off", "on", "auto")


def raw_features(data):
    """`{split: (features, labels)}` of train, val and test: the extractor's whole output
    (last layer, then each tap), as extract computes and caches it; and the groups' widths."""
    from smallcnn.progress import Reporter
    from smallcnn.train import Settings
    from smallcnn.train.session import Session

    session = Session("extract", data, Settings(), Reporter(), command_line="bench/taps.py")
    if "test" not in session.dataset.splits:
        raise SystemExit(f"{data.name} has no test split: the probe reads test once; "
                         "give a set with train, val and test.")
    splits = {name: session.source.raw_features(name) for name in ("train", "val", "test")}
    return splits, session.source.head_input.widths, session.spec


def groups(features, widths, taps):
    """The probe's input: the last layer's group alone, or every group; each L2-normalised."""
    parts = np.split(features, np.cumsum(widths)[:-1], axis=1)[: None if taps else 1]
    return np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts], 1)


def probe(train, val, test):
    """Test predictions of the logistic regression whose C is best on val (the path of Cs
    warm-started, each from the last)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, warm_start=True)
    best = (-1.0, None, None)
    for c in C_GRID:
        model.set_params(C=c).fit(*train)
        score = model.score(*val)
        if score > best[0]:
            best = (score, c, model.predict(test[0]))
    return best[2], best[1]


def mcnemar(a_right, b_right):
    """McNemar's exact two-sided p-value for paired right/wrong answers."""
    b, c = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def measure_probe(splits, widths, resplits):
    def predictions(taps, parts):
        train, val, test = ((groups(x, widths, taps), y) for x, y in parts)
        return probe(train, val, test)

    parts = [splits[name] for name in ("train", "val", "test")]
    test_y = parts[2][1]
    (last, c_last), (tapped, c_taps) = predictions(False, parts), predictions(True, parts)
    gains = []
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    sizes = np.cumsum([len(p[1]) for p in parts])[:2]
    for seed in range(resplits):
        order = np.random.default_rng(seed).permutation(len(y))
        resplit = [(x[i], y[i]) for i in np.split(order, sizes)]
        truth = resplit[2][1]
        gains.append(100 * (np.mean(predictions(True, resplit)[0] == truth) -
                            np.mean(predictions(False, resplit)[0] == truth)))
    return {"test": len(test_y), "last": float(np.mean(last == test_y)),
            "taps": float(np.mean(tapped == test_y)), "c": [c_last, c_taps],
            "mcnemar_p": mcnemar(tapped == test_y, last == test_y),
            "resplit_gains": gains}


def measure_product(data):
    """`smallcnn extract --taps X` on the set: val and test accuracy, and auto's record."""
    found = {}
    work = Path(tempfile.mkdtemp(prefix="taps-"))
    try:
        for choice in CHOICES:
            run = work / choice
            timed = smallcnn("extract", data, "--taps", choice, "--out", run)
            metrics = run_metrics(run)
            found[choice] = {"val": metrics["val_accuracy"], "test": metrics["test_accuracy"],
                             "seconds": timed["wall_seconds"], "record": metrics.get("taps")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return found


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    lines = ["## Intermediate taps (issue 28, part 1)", "",
             f"bench/taps.py ({results['date']}), the default base's features (the last layer "
             "and its taps, as extract caches them). Probe: a logistic regression, C chosen on "
             "val, test read once, each group L2-normalised; McNemar's exact test; then "
             "re-splits of all the set's images (sizes kept; how many: the 'better in' "
             "column). "
             "Product: `smallcnn extract` with each `--taps`; auto keeps the taps where, on val, "
             "the images only they get right outnumber those only the last layer's head gets "
             "right by 2 and by the square root of their sum, at no higher val loss.", "",
             "| set | probe: last layer (test) | + taps (test) | McNemar p | re-splits: mean "
             "gain | better in | extract --taps off / on / auto (test) | auto chose |",
             "|---|---|---|---|---|---|---|---|"]
    for name, cell in results["cells"].items():
        p, made = cell["probe"], cell["product"]
        gains = np.array(p["resplit_gains"])
        chose = made["auto"]["record"]
        lines.append(
            f"| {name} ({p['test']}) | {p['last']:.1%} | {p['taps']:.1%} | "
            f"{p['mcnemar_p']:.2f} | "
            + (f"{gains.mean():+.1f} +- {gains.std():.1f} | {int(np.sum(gains > 0))}/"
               f"{len(gains)} | " if len(gains) else "not run | - | ")
            + " / ".join(f"{made[c]['test']:.1%}" for c in CHOICES) + " | "
            + ("taps" if chose["used"] else "last layer")
            + " (val: taps alone right {taps_only}, last layer alone {last_only}) |".format(
                **chose["val_images_right"]))
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--resplits", type=int, default=RESPLITS)
    parser.add_argument("--product-only", action="store_true",
                        help="measure extract again, keeping each set's recorded probe")
    args = parser.parse_args()
    results = load_results(RESULTS)  # the sets measured before, and these
    cells = {}
    for name in args.datasets:
        splits, widths, _ = raw_features(SHARED / name)
        probe_cell = results["cells"][name]["probe"] if args.product_only else \
            measure_probe(splits, widths, args.resplits)
        cells[name] = {"widths": list(widths), "probe": probe_cell,
                       "product": measure_product(SHARED / name)}
        print(name, cells[name]["probe"]["last"], cells[name]["probe"]["taps"], flush=True)
    results = {"date": datetime.date.today().isoformat(),
               "cells": {**results.get("cells", {}), **cells}}
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
