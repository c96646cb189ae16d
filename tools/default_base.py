"""The rule that picks the default base (README, docs/guide.md), applied to the figures
bench/bases.py records: bench/bases.py prints what it gives, tests/test_bases.py holds
smallcnn's DEFAULT_BASE to it."""

import json
import statistics
from pathlib import Path

from smallcnn.model.bases import BASES

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "bases.json"
DATASETS = ("ants-bees", "cats-dogs-small", "food101-10")
BUNDLED = tuple(name for name, spec in BASES.items() if spec.packaged_imagenet)
FASTEST = "mobilenet_v2"
SPEED_DATASET = "cats-dogs-small"
MAX_SLOWDOWN = 2.0
DEFAULT_RULE = (f"the bundled base with the best mean extract accuracy over the bench data sets "
                f"whose cold extract on {SPEED_DATASET} takes at most {MAX_SLOWDOWN:g}x "
                f"{FASTEST}'s")


def load():
    """bench/bases.py's recorded cells, or {} when it has not run."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def cell(results, base, dataset, phase, variant=""):
    return results.get("/".join(filter(None, (base + (f"@{variant}" if variant else ""),
                                              dataset, phase))))


def rule(results):
    """The default base by DEFAULT_RULE, with the figures it used (None where cells are missing)."""
    fastest = cell(results, FASTEST, SPEED_DATASET, "extract")
    candidates = {}
    for base in BUNDLED:
        cells = [cell(results, base, d, "extract") for d in DATASETS]
        speed = cell(results, base, SPEED_DATASET, "extract")
        if None in cells or fastest is None:
            continue
        slowdown = speed["wall_seconds"] / fastest["wall_seconds"]
        candidates[base] = {"mean_accuracy": statistics.mean(c["accuracy"] for c in cells),
                            "slowdown": slowdown, "eligible": slowdown <= MAX_SLOWDOWN}
    eligible = {b: c for b, c in candidates.items() if c["eligible"]}
    chosen = max(eligible, key=lambda b: eligible[b]["mean_accuracy"]) if eligible else None
    return chosen, candidates
