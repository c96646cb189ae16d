"""Simulated labelling (issue 30): how many labels each `smallcnn suggest` strategy needs.

For each set, its train split is the pool, the labels hidden; each strategy picks the
images to label (`smallcnn.labels.strategies.rank`), their labels are revealed as a
person would give them, and the head is trained on the labels so far with extract's own
trainer (`smallcnn.model.head.train`, extract's settings, one head; the labelled images
are its own validation set, as a person labelling has no other), which ranks the next
batch. Test accuracy at 20, 50, 100, 200 and 400 labels, mean and spread over seeds.
margin starts from a random batch (no model to ask before the first labels). Features:
the default base (EfficientNet-B0) through extract's feature cache. food101-10 is read
where it lies, never copied.

    .venv/bin/python bench/label_less.py [--seeds 5] [--datasets food101-10 cats-dogs-small]
"""

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, load_results, save_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "label_less.json"
DATASETS = ("food101-10", "cats-dogs-small")
BUDGETS = (20, 50, 100, 200, 400)
MEASURED = ("random", "margin", "typical", "mix")  # "auto" is one of them
SEEDS = 5
# The targets: the default reaches random's accuracy at REACH_AT labels with at
# most REACH_FRACTION of them, and beats random by GAIN_AT_FIRST points at the first budget.
REACH_AT, REACH_FRACTION, GAIN_AT_FIRST = 100, 2 / 3, 8.0


def split_features(data):
    """`(pool, test, class names)`: the train and test splits' (features, labels), as
    extract computes and caches them."""
    from smallcnn.progress import Reporter
    from smallcnn.train import Settings
    from smallcnn.train.session import Session

    session = Session("extract", data, Settings(), Reporter(), command_line="bench/label_less.py")
    return (session.features("train"), session.features("test"),
            session.dataset.class_names, session.settings)


def simulate(pool, test, classes, settings, strategy, seed):
    """Test accuracy (%) and labels used at each budget, for one strategy and seed."""
    import dataclasses

    from smallcnn.labels.strategies import rank
    from smallcnn.model import head

    x, y = pool
    settings = dataclasses.replace(settings, seed=seed)
    labelled = np.zeros(0, np.int64)
    weights, accuracies, counts, seconds = None, [], [], []
    for budget in BUDGETS:
        unlabelled = np.setdiff1d(np.arange(len(x)), labelled)
        probabilities = None if weights is None else head.probabilities(weights, x[unlabelled])
        chosen = "random" if strategy == "margin" and weights is None else strategy
        started = time.perf_counter()
        picked = rank(x[unlabelled], chosen, budget - len(labelled), x[labelled],
                      probabilities, seed)
        seconds.append(time.perf_counter() - started)
        labelled = np.concatenate([labelled, unlabelled[picked]])  # the labels revealed
        weights, _ = head.train(x[labelled], y[labelled], (x[labelled], y[labelled]),
                                settings, len(classes))
        accuracies.append(100 * head.evaluate(weights, *test)[1])
        counts.append(len(labelled))
    return accuracies, counts, max(seconds)


def labels_to_reach(means, target):
    """Labels (interpolated linearly between the budgets) at which a curve of mean
    accuracies first reaches `target`; None if it never does."""
    for i, value in enumerate(means):
        if value >= target:
            if i == 0:
                return float(BUDGETS[0])
            low, high = means[i - 1], value
            return BUDGETS[i - 1] + (BUDGETS[i] - BUDGETS[i - 1]) * (target - low) / (high - low)
    return None


def measure(name, seeds):
    from smallcnn.labels.strategies import rank

    pool, test, classes, settings = split_features(SHARED / name)
    rank(pool[0][:50], "typical", 5)  # scikit-learn imported before any ranking is timed
    cell = {"pool": len(pool[0]), "test": len(test[0]), "classes": len(classes),
            "strategies": {}}
    for strategy in MEASURED:
        runs = [simulate(pool, test, classes, settings, strategy, seed) for seed in range(seeds)]
        cell["strategies"][strategy] = {
            "accuracy": [r[0] for r in runs], "labels": [r[1] for r in runs],
            "rank_seconds": max(r[2] for r in runs)}
        means = np.mean([r[0] for r in runs], axis=0)
        print(f"{name} {strategy}: " + ", ".join(f"{b} {m:.1f}" for b, m in zip(BUDGETS, means)),
              flush=True)
    return cell


def targets(cell, strategy):
    """`(labels to reach random's accuracy at REACH_AT, as a fraction of REACH_AT; points
    over random at the first budget)` for a strategy."""
    def means(name):
        return np.mean(cell["strategies"][name]["accuracy"], axis=0)

    reach = labels_to_reach(means(strategy), means("random")[BUDGETS.index(REACH_AT)])
    gain = means(strategy)[0] - means("random")[0]
    return (None if reach is None else reach / REACH_AT), float(gain)


def best_strategy(results):
    """The strategy that met the targets on the most sets, then the highest mean accuracy
    over every budget and set: what `auto` should run."""
    def score(strategy):
        met, accuracy = 0, []
        for cell in results["cells"].values():
            fraction, gain = targets(cell, strategy)
            met += (fraction is not None and fraction <= REACH_FRACTION) + (gain >= GAIN_AT_FIRST)
            accuracy.append(np.mean(cell["strategies"][strategy]["accuracy"]))
        return met, float(np.mean(accuracy))

    return max((s for s in MEASURED if s != "random"), key=score)


def load():
    return load_results(RESULTS)


def summary(results):
    from smallcnn.labels.strategies import AUTO

    if not results:
        return []
    lines = ["## Labelling less: `smallcnn suggest`'s strategies", "",
             f"bench/label_less.py ({results['date']}): simulated labelling, each set's train "
             "split the pool and its labels revealed as chosen; extract's head trained on the "
             "labels so far (one head, 100 epochs); test accuracy (%), mean +- std over "
             f"{results['seeds']} seeds. margin starts from a random batch. `auto` runs "
             f"**{AUTO}** (the best measured here: {results['best']}). Targets: the default reaches "
             f"random's accuracy at {REACH_AT} labels with at most {REACH_FRACTION:.0%} of them, "
             f"and beats random by {GAIN_AT_FIRST:.0f} points at {BUDGETS[0]} labels.", ""]
    for name, cell in results["cells"].items():
        lines += [f"{name} (pool {cell['pool']}, test {cell['test']}, {cell['classes']} "
                  "classes):", "",
                  "| labels | " + " | ".join(MEASURED) + " |",
                  "|---|" + "---|" * len(MEASURED)]
        for i, budget in enumerate(BUDGETS):
            row = [np.array(cell["strategies"][s]["accuracy"])[:, i] for s in MEASURED]
            lines.append(f"| {budget} | " + " | ".join(f"{r.mean():.1f} +- {r.std():.1f}"
                                                        for r in row) + " |")
        lines.append("")
        for strategy in MEASURED[1:]:
            fraction, gain = targets(cell, strategy)
            reach = "never" if fraction is None else f"{fraction:.0%} of the labels"
            lines.append(f"- {strategy}: reaches random's {REACH_AT}-label accuracy with "
                         f"{reach}; {gain:+.1f} points at {BUDGETS[0]} labels; slowest "
                         f"ranking {cell['strategies'][strategy]['rank_seconds']:.2f} s.")
        lines += [_verdict(cell, AUTO), ""]
    return lines


def _verdict(cell, strategy):
    """Whether the default met each target on a set, by how much, and why where not."""
    fraction, gain = targets(cell, strategy)
    reach = ("never reached" if fraction is None else
             f"{'met' if fraction <= REACH_FRACTION else 'missed'} "
             f"({fraction:.0%} of the labels against {REACH_FRACTION:.0%})")
    first = (f"{'met' if gain >= GAIN_AT_FIRST else 'missed'} ({gain:+.1f} points against "
             f"+{GAIN_AT_FIRST:.0f})")
    best = max(np.mean(s["accuracy"], axis=0)[-1] for s in cell["strategies"].values())
    room = best - np.mean(cell["strategies"]["random"]["accuracy"], axis=0)[0]
    why = ""
    if room < GAIN_AT_FIRST:
        why = (f" No strategy can gain {GAIN_AT_FIRST:.0f} points here: random's "
               f"{BUDGETS[0]} labels are within {room:.1f} points of the best "
               f"{BUDGETS[-1]}-label accuracy.")
    return (f"- Targets of the default ({strategy}): reaching random's {REACH_AT}-label "
            f"accuracy {reach}; beating random at {BUDGETS[0]} labels {first}.{why}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = parser.parse_args()
    results = {"date": datetime.date.today().isoformat(), "seeds": args.seeds,
               "cells": {name: measure(name, args.seeds) for name in args.datasets}}
    results["best"] = best_strategy(results)
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
