"""How much does extract's accuracy depend on the seed, with one head and with --heads K?

Trains extract's head on the cached base features of a data set (run `smallcnn extract
DATA` once first; the features are computed if they are not cached) for several groups
of seeds, with one head (seed s) and with K heads merged (seeds s..s+K-1), and prints
the mean, spread and range of validation and test accuracy and val_loss for each.

    .venv/bin/python bench/heads.py ../shared/datasets/cats-dogs-small [--groups 16] [--heads 5]
"""

import argparse
import dataclasses
import time

import numpy as np

from smallcnn.model import head
from smallcnn.progress import Reporter
from smallcnn.train import Session, Settings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1000)
    args = parser.parse_args()

    context = Session("extract", args.data, Settings(), Reporter(), command_line="bench/heads.py")
    s = context.settings
    train, val = context.features("train"), context.features("val")
    test = context.features("test") if "test" in context.dataset.splits else None
    classes = len(context.dataset.class_names)
    print(f"{args.data}: {len(train[0])} train, {len(val[0])} val, "
          f"{len(test[0]) if test else 0} test feature rows; {args.groups} groups of seeds "
          f"from {args.first_seed}")
    print(f"{'heads':>5}  {'val accuracy':>22}  {'test accuracy':>22}  {'val_loss':>8}  seconds")
    for members in (1, args.heads):
        rows = []
        for group in range(args.groups):
            settings = dataclasses.replace(s, seed=args.first_seed + group * args.heads)
            started = time.perf_counter()
            weights, _ = head.train(*train, val, settings, classes,
                                    class_weights=context.class_weights(), members=members)
            seconds = time.perf_counter() - started
            val_loss, val_accuracy = head.evaluate(weights, *val)
            test_accuracy = head.evaluate(weights, *test)[1] if test else np.nan
            rows.append((val_accuracy, test_accuracy, val_loss, seconds))
        r = np.array(rows)

        def spread(column):
            values = r[:, column] * 100
            if np.isnan(values).any():
                return "(no test split)"
            return (f"{values.mean():6.2f} +- {values.std():.2f} "
                    f"[{values.min():.2f}, {values.max():.2f}]")

        print(f"{members:>5}  {spread(0):>22}  {spread(1):>22}  {r[:, 2].mean():8.4f}  "
              f"{r[:, 3].mean():.2f}")


if __name__ == "__main__":
    main()
