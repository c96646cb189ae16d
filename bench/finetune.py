"""finetune from cached activations at the cut against the Keras recipe and an earlier
smallcnn, end to end.

`finetune --unfreeze 4`, 2 head + 2 fine-tuning epochs, cats-dogs-small, MobileNetV2
(the peer's base, bench/peer.py, whose `finetune` is the same 2 + 2 epochs), each run
in a fresh process with an empty cache (nothing converted or cached before), the tools
alternating in each round: the peer, the earlier smallcnn (`--before`: a checkout of the
commit before the cut, run with this venv's Python), this one. Wall time and peak memory
from /usr/bin/time; val accuracy from each run.

    git clone /work/main /tmp/before && git -C /tmp/before checkout 7268c5a
    .venv/bin/python bench/finetune.py --before /tmp/before [--now CHECKOUT] [--rounds 2]
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (BASE, PYTHON, ROOT, SHARED, load_results, peer,  # noqa: E402
                          run_metrics, save_results, timed)

RESULTS = ROOT / "bench" / "results" / "finetune.json"
DATA = "cats-dogs-small"
EPOCHS = 2
UNFREEZE = 4


def smallcnn_finetune(checkout, data, work, name):
    """`smallcnn finetune` of `checkout` on DATA, timed, with an empty cache of its own."""
    cache, out = work / f"cache-{name}", work / name
    shutil.rmtree(cache, ignore_errors=True)
    run = timed([PYTHON, "-m", "smallcnn", "finetune", data, *BASE, "--head-epochs", EPOCHS,
                 "--epochs", EPOCHS, "--patience", EPOCHS, "--unfreeze", UNFREEZE,
                 "--batch-size", "20", "--out", out],  # the peer's batch size
                env={"SMALLCNN_CACHE": str(cache), "PYTHONPATH": str(checkout)}, cwd=checkout)
    metrics = run_metrics(out)
    shutil.rmtree(out)
    shutil.rmtree(cache, ignore_errors=True)
    said = " ".join(run["output"].split())
    return {"wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"],
            "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics.get("test_accuracy"),
            "epoch_seconds": [float(r["seconds"]) for r in metrics["history"]],
            "through_cut": "Fine-tuning from activations" in said,
            "engine": metrics.get("engine")}


def bench(rounds, before, now):
    data = SHARED / DATA
    result = {"data set": DATA, "epochs": EPOCHS, "unfreeze": UNFREEZE, "rounds": [],
              "before": _commit(before), "now": _commit(now),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as folder:
        work = Path(folder)
        for index in range(rounds):
            cells = {}
            cells["peer"] = {k: v for k, v in peer("finetune", data, EPOCHS, work).items()
                             if k != "output"}
            print(f"round {index + 1}: peer {cells['peer']['wall_seconds']:.1f} s", flush=True)
            cells["before"] = smallcnn_finetune(before, data, work, "before")
            print(f"round {index + 1}: before {cells['before']['wall_seconds']:.1f} s",
                  flush=True)
            cells["now"] = smallcnn_finetune(now, data, work, "now")
            print(f"round {index + 1}: now {cells['now']['wall_seconds']:.1f} s", flush=True)
            result["rounds"].append(cells)
            save_results(RESULTS, result, summary)  # after each round: a failure keeps them
    return result


def _commit(checkout):
    import subprocess

    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def load():
    return load_results(RESULTS)


def summary(results):
    """The section of docs/benchmarks.md."""
    if not results.get("rounds"):
        return []
    rounds = results["rounds"]

    def figures(tool, key):
        return [r[tool][key] for r in rounds]

    def cell(tool, key, form):
        values = figures(tool, key)
        return " / ".join(form(v) for v in values)

    peer_wall = figures("peer", "wall_seconds")
    lines = [f"## finetune from cached activations ({results['data set']}, "
             f"--unfreeze {results['unfreeze']}, {results['epochs']} + {results['epochs']} "
             "epochs)", "",
             "bench/finetune.py: the peer's recipe (bench/peer.py finetune), smallcnn before "
             f"the cut ({results['before']}) and with it ({results['now']}), MobileNetV2, "
             "alternating in each round, each from an empty cache; one figure per round. "
             "With the cut, the layers below the first unfrozen one run once per image view "
             "on the engine and only the top trains (docs/guide.md).", "",
             "| | peer (Keras recipe) | smallcnn before | smallcnn now |",
             "|---|---|---|---|",
             f"| wall s | {cell('peer', 'wall_seconds', '{:.1f}'.format)} | "
             f"{cell('before', 'wall_seconds', '{:.1f}'.format)} | "
             f"{cell('now', 'wall_seconds', '{:.1f}'.format)} |"]
    ratios = {tool: [p / w for p, w in zip(peer_wall, figures(tool, "wall_seconds"))]
              for tool in ("before", "now")}
    lines += [f"| x the peer (same round) | 1 | "
              f"{' / '.join(f'{r:.1f}x' for r in ratios['before'])} | "
              f"{' / '.join(f'{r:.1f}x' for r in ratios['now'])} |",
              f"| val accuracy | {cell('peer', 'val_accuracy', '{:.2%}'.format)} | "
              f"{cell('before', 'val_accuracy', '{:.2%}'.format)} | "
              f"{cell('now', 'val_accuracy', '{:.2%}'.format)} |",
              f"| test accuracy | | {cell('before', 'test_accuracy', '{:.2%}'.format)} | "
              f"{cell('now', 'test_accuracy', '{:.2%}'.format)} |",
              f"| peak MB | {cell('peer', 'peak_mb', '{:.0f}'.format)} | "
              f"{cell('before', 'peak_mb', '{:.0f}'.format)} | "
              f"{cell('now', 'peak_mb', '{:.0f}'.format)} |", "",
              f"Median: now {statistics.median(ratios['now']):.1f}x the peer's speed, before "
              f"{statistics.median(ratios['before']):.1f}x. Epoch seconds (head, head, tune, "
              f"tune), before: {_epochs(rounds, 'before')}; now: {_epochs(rounds, 'now')}.", ""]
    return lines


def _epochs(rounds, tool):
    return " / ".join(", ".join(f"{s:.1f}" for s in r[tool]["epoch_seconds"]) for r in rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path,
                        help="a checkout of the commit to compare with")
    parser.add_argument("--now", type=Path, default=ROOT,
                        help="the checkout to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--summarize", action="store_true",
                        help="print the recorded results' table, run nothing")
    args = parser.parse_args()
    if args.summarize:
        print("\n".join(summary(load())))
        return
    if args.before is None:
        parser.error("--before CHECKOUT is needed (see the usage above)")
    bench(args.rounds, args.before.resolve(), args.now.resolve())


if __name__ == "__main__":
    main()
