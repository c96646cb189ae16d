"""Writes docs/benchmarks.md from the recorded results (bench/results/*.json): the peer
comparison's table for each data set (bench/run.py), then each other bench's section, as
it last ran. Runs nothing, so the page can be rewritten after any one bench.

    .venv/bin/python bench/report.py [--datasets ants-bees cats-dogs-small]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (bases, devices, engines, finetune, finetune_recipe, ideas,  # noqa: E402
                   label_issues, label_less, label_page, overheads, pictures, precision,
                   predict_stream, run, self_training, serve, soak, taps, tta)
from bench.common import ROOT  # noqa: E402

PAGE = ROOT / "docs" / "benchmarks.md"
# The sections after the peer comparison, in the page's order: each module's summary of
# what its load() reads.
SECTIONS = (bases, ideas, overheads, pictures, serve, soak, label_issues, label_less,
            label_page, tta, predict_stream, precision, devices, engines, finetune,
            finetune_recipe, self_training, taps)


def peer_results(datasets):
    """bench/run.py's recorded result for each data set; refused in one line where missing."""
    results = []
    for name in datasets:
        path = run.results_path(name)
        if not path.exists():
            raise SystemExit(f"{path.relative_to(ROOT)} is missing: run "
                             f"bench/run.py --datasets {name} first, or leave {name} out")
        results.append(json.loads(path.read_text()))
    return results


def page(results, options):
    """The page's lines: a header (dated by the first data set's run), the peer tables,
    then every section."""
    date = results[0].get("date", "?") if results else "?"
    lines = ["# Benchmarks", "",
             f"`make bench` ({options or 'defaults'}), {date}, on this project's 2-core, "
             "no-GPU machine. Every figure comes from one run of bench/run.py; the tools "
             "alternate.", ""]
    for result in results:
        lines += run.summary(result) + [""]
    for section in SECTIONS:
        lines += section.summary(section.load())
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(run.DATASETS))
    args = parser.parse_args()
    lines = page(peer_results(args.datasets), " ".join(sys.argv[1:]))
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text("\n".join(lines) + "\n")
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
