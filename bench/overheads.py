"""Wall time a user waits, and where it goes: the overheads around smallcnn's forward pass.

On cats-dogs-small with --base mobilenet_v2, each command in a fresh process, from this
checkout and (--baseline PATH) from another checkout of smallcnn, alternating, --rounds
times:
  extract-cold    smallcnn extract, empty cache
  extract-second  the same, with the base's LiteRT conversion and model template cached
                  but no features (a user's second data set)
  train           smallcnn train --freeze --epochs 2 (no early stop), empty cache
  recipe          the hand-written Keras recipe, frozen base, 2 epochs (bench/peer.py)
Each records wall seconds and peak memory (/usr/bin/time), the run's timings and epochs;
overhead = wall minus the forward pass for features (extract) or minus the epochs (train,
recipe). The overhead of every bundled base's cold extract comes from bench/bases.py's
results. Results: bench/results/overheads.json; bench/report.py puts the tables in
docs/benchmarks.md.

    .venv/bin/python bench/overheads.py [--baseline ../smallcnn-old] [--rounds 2]
    .venv/bin/python bench/overheads.py --summarize
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, peer, run_metrics, smallcnn  # noqa: E402
from tools import default_base  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "overheads.json"
DATASET = "cats-dogs-small"
BASE = "mobilenet_v2"
EPOCHS = 2
COMMANDS = ("extract-cold", "extract-second", "train")


def commit(tree):
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "?"


def measure(command, tree, work):
    """One smallcnn command run from the source tree `tree` (its folder is the working
    directory, so `python -m smallcnn` imports that tree's package)."""
    data = SHARED / DATASET
    cache = work / "cache"
    out = work / command
    if command == "extract-second":  # the conversion and template stay: a new data set
        shutil.rmtree(cache / "features", ignore_errors=True)
        shutil.rmtree(cache / "scans", ignore_errors=True)
    else:
        shutil.rmtree(cache, ignore_errors=True)
    args = (["extract", data] if command.startswith("extract") else
            ["train", "--freeze", data, "--epochs", EPOCHS, "--patience", EPOCHS])
    run = smallcnn(*args, "--base", BASE, "--out", out, "--overwrite",
                   env={"SMALLCNN_CACHE": str(cache)}, cwd=tree)
    metrics = run_metrics(out)
    epochs = [float(row["seconds"]) for row in metrics["history"]]
    timings = metrics.get("timings", {})
    inner = sum(epochs) if command == "train" else timings.get("base")
    return {"wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"],
            "timings": timings, "epoch_seconds": epochs if command == "train" else None,
            "overhead_seconds": round(run["wall_seconds"] - inner, 2) if inner else None,
            "val_accuracy": metrics.get("val_accuracy"),
            "test_accuracy": metrics.get("test_accuracy")}


def measure_recipe(work):
    run = peer("frozen", SHARED / DATASET, EPOCHS, work)
    epochs = run.get("epoch_seconds") or []
    return {"wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"],
            "epoch_seconds": epochs,
            "overhead_seconds": round(run["wall_seconds"] - sum(epochs), 2) if epochs else None,
            "val_accuracy": run.get("val_accuracy"), "test_accuracy": run.get("test_accuracy")}


def record(results, cell):
    """Adds a measured cell and writes the results at once (a failure later keeps it)."""
    results["runs"].append(cell)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(cell), flush=True)


def load():
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def _median(cells, key):
    values = [c[key] for c in cells if c.get(key) is not None]
    return statistics.median(values) if values else None


def summary(results):
    if not results:
        return []
    trees = results["trees"]
    lines = ["## Overheads", "",
             f"bench/overheads.py ({results['date']}, {results['rounds']} round(s), the trees "
             f"alternating): {DATASET}, `--base {BASE}`, each command in a fresh process. "
             "Overhead = wall minus the forward pass for features (extract) or minus the epochs "
             "(train, recipe). Medians over the rounds (this machine's speed varies by a third "
             "from one minute to the next); every figure per round is in "
             "bench/results/overheads.json.", "",
             "| command | tree | wall s | overhead s | peak MB | where the time went (last round) "
             "| val, test accuracy |", "|---|---|---|---|---|---|---|"]
    from smallcnn.runtime.timings import summary as timings_summary

    labels = {**{label: f"{label} ({tree['commit']})" for label, tree in trees.items()},
              "recipe": "the Keras recipe"}
    for command in (*COMMANDS, "recipe"):
        for label, shown in labels.items():
            cells = [r for r in results["runs"] if r["command"] == command and r["tree"] == label]
            if not cells:
                continue
            last = cells[-1]
            went = timings_summary(last["timings"], limit=5) if last.get("timings") else "-"
            accuracy = ", ".join(f"{last[k]:.2%}" for k in ("val_accuracy", "test_accuracy")
                                 if last.get(k) is not None)
            overhead = _median(cells, "overhead_seconds")
            lines.append(f"| {command} | {shown} | "
                         f"{_median(cells, 'wall_seconds'):.1f} | "
                         f"{'-' if overhead is None else f'{overhead:.1f}'} | "
                         f"{_median(cells, 'peak_mb'):.0f} | {went} | {accuracy} |")
    if "baseline" in trees:
        ratios = []
        for command in COMMANDS:
            walls = {label: _median([r for r in results["runs"] if r["command"] == command
                                   and r["tree"] == label], "wall_seconds") for label in trees}
            if walls.get("baseline") and walls.get("current"):
                ratios.append(f"{command} {walls['current'] / walls['baseline']:.2f}x")
        recipe = _median([r for r in results["runs"] if r["command"] == "recipe"], "wall_seconds")
        train = _median([r for r in results["runs"] if r["command"] == "train"
                       and r["tree"] == "current"], "wall_seconds")
        lines += ["", "Wall time, current over baseline: " + ", ".join(ratios) + "."
                  + (f" The recipe's frozen run over train --freeze (current): "
                     f"{recipe / train:.2f}x." if recipe and train else "")]
    lines += [""] + per_base_overheads()
    return lines


def per_base_overheads():
    """Every bundled base's cold extract on DATASET: wall, forward pass, the rest."""
    rows = []
    for base in default_base.BUNDLED:
        cell = default_base.cell(default_base.load(), base, DATASET, "extract")
        if cell and (cell.get("timings") or {}).get("base"):
            forward = cell["timings"]["base"]
            rows.append(f"| {base} | {cell['wall_seconds']:.1f} | {forward:.1f} | "
                        f"{cell['wall_seconds'] - forward:.1f} | {cell['date']} |")
    if not rows:
        return []
    return [f"Every bundled base, cold extract of {DATASET} (bench/bases.py):", "",
            "| base | wall s | forward pass s | overhead s | measured |", "|---|---|---|---|---|",
            *rows, ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout of smallcnn to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--summarize", action="store_true", help="print the tables; run nothing")
    args = parser.parse_args()
    if not args.summarize:
        trees = {"current": ROOT}
        if args.baseline is not None:
            trees = {"baseline": args.baseline.resolve(), **trees}
        results = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
                   "trees": {label: {"path": str(tree), "commit": commit(tree)}
                             for label, tree in trees.items()}, "runs": []}
        for round_number in range(1, args.rounds + 1):
            for label, tree in trees.items():
                work = Path(tempfile.mkdtemp(prefix=f"smallcnn-overheads-{label}-"))
                for command in COMMANDS:
                    record(results, {"command": command, "tree": label, "round": round_number,
                                     **measure(command, tree, work)})
                shutil.rmtree(work, ignore_errors=True)
            work = Path(tempfile.mkdtemp(prefix="smallcnn-overheads-recipe-"))
            record(results, {"command": "recipe", "tree": "recipe", "round": round_number,
                             **measure_recipe(work)})
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(summary(load())))


if __name__ == "__main__":
    main()
