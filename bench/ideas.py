"""Ideas for using more of the backbone, measured with extract's own head on cached features.

For one data set (default: food101-10, the fine-grained one), each variant's pooled
features are computed once (smallcnn's feature cache, under bench/.cache unless
$SMALLCNN_CACHE is set) and extract's head (its default settings: 5 merged heads) is
trained on them for several groups of seeds, so each figure comes with its spread:
  one base at its own size                    e.g. efficientnet_b0
  one base at another size                    e.g. efficientnet_lite2@300
  two bases' features side by side (concat)   e.g. efficientnet_b0+efficientnet_lite2

    .venv/bin/python bench/ideas.py [--data food101-10] [--variants ...] [--groups 4]

Records bench/results/ideas.json; bench/report.py puts it in docs/benchmarks.md.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallcnn.model import head  # noqa: E402
from smallcnn.progress import Reporter  # noqa: E402
from smallcnn.train import Session, Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results" / "ideas.json"
VARIANTS = ("mobilenet_v2", "efficientnet_b0", "efficientnet_lite2", "efficientnet_b0@260",
            "efficientnet_lite2@300", "efficientnet_b0+efficientnet_lite2")


def features(data, variant):
    """{split: (x, y)} for a variant: 'base', 'base@size' or 'base+base' (concatenated)."""
    parts = []
    for member in variant.split("+"):
        base, _, size = member.partition("@")
        settings = Settings(base=base, image_size=int(size) if size else None)
        session = Session("extract", data, settings, Reporter(), command_line="bench/ideas.py")
        parts.append({split: session.features(split) for split in session.dataset.splits})
    splits = parts[0]
    for other in parts[1:]:
        for split, (x, y) in other.items():
            assert np.array_equal(splits[split][1], y), "the bases saw different images"
            splits[split] = (np.concatenate([splits[split][0], x], axis=1), y)
    return splits, session


def measure(data, variant, groups):
    started = time.perf_counter()
    splits, session = features(data, variant)
    feature_seconds = time.perf_counter() - started
    settings = session.settings
    rows = []
    for group in range(groups):
        seeded = dataclasses.replace(settings, seed=1000 + group * settings.heads)
        weights, _ = head.train(*splits["train"], splits["val"], seeded,
                                len(session.dataset.class_names),
                                class_weights=session.class_weights(), members=settings.heads)
        row = {"val_accuracy": head.evaluate(weights, *splits["val"])[1]}
        if "test" in splits:
            row["test_accuracy"] = head.evaluate(weights, *splits["test"])[1]
        rows.append(row)

    def spread(name):
        values = [r[name] for r in rows if name in r]
        return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
                "std": statistics.pstdev(values)} if values else None

    return {"variant": variant, "data": data.name, "groups": groups,
            "feature_width": int(splits["train"][0].shape[1]),
            "feature_seconds": feature_seconds,
            "val_accuracy": spread("val_accuracy"), "test_accuracy": spread("test_accuracy"),
            "date": time.strftime("%Y-%m-%d")}


def summary(results):
    if not results:
        return []
    lines = ["## Using more of the backbone (bench/ideas.py)", "",
             "Extract's head (5 merged heads) on each variant's cached features, groups of "
             "seeds: mean [min, max]. Tuned on val; test reported once per design.", "",
             "| data | variant | features | val accuracy | test accuracy |", "|---|---|---|---|---|"]
    for r in results.values():
        def shown(s):
            return f"{s['mean']:.2%} [{s['min']:.2%}, {s['max']:.2%}]" if s else "-"
        lines.append(f"| {r['data']} | {r['variant']} | {r['feature_width']} | "
                     f"{shown(r['val_accuracy'])} | {shown(r['test_accuracy'])} |")
    return lines + [""]


def load():
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="food101-10")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--groups", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("SMALLCNN_CACHE", str(ROOT / "bench" / ".cache"))
    data = SHARED / args.data
    for variant in args.variants:
        result = measure(data, variant, args.groups)
        results = load()
        results[f"{args.data}/{variant}"] = result
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        print(json.dumps(result), flush=True)
    print("\n".join(summary(load())))


if __name__ == "__main__":
    main()
