"""How long DeepDream and style transfer take: the two commands of the README, each in a
fresh process (TensorFlow's import and the base's build included), --rounds times.

  dream   smallcnn visualize dream PHOTO (512 px, 3 octaves of 20 steps, mobilenet_v2)
  style   smallcnn visualize style PHOTO PAINTING (384 px, 300 steps, mobilenet_v2)

PHOTO is a bee from the bundled sample, PAINTING the Van Gogh in docs/images. Records wall
seconds and peak memory (/usr/bin/time) and what the command printed at its end (the
objective, the losses). Results: bench/results/pictures.json; bench/report.py puts the table
in docs/benchmarks.md.

    .venv/bin/python bench/pictures.py [--rounds 2]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, load_results, save_results, smallcnn  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "pictures.json"
PHOTO = ROOT / "datasets" / "ants-bees" / "val" / "bees" / "10870992_eebeeb3a12.jpg"
PAINTING = ROOT / "docs" / "images" / "van-gogh-village-street-in-auvers-1890.jpg"
COMMANDS = {
    "dream": ["visualize", "dream", PHOTO],
    "style": ["visualize", "style", PHOTO, PAINTING],
}
TARGET_SECONDS = 120  # issue 18: each under 2 minutes on this machine


def measure(command, work):
    run = smallcnn(*COMMANDS[command], "--out", work / f"{command}.png")
    return {"command": command, "wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"],
            "printed": run["output"].strip().splitlines()[-1]}


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    lines = ["## DeepDream and style transfer", "",
             f"bench/pictures.py ({results['date']}, {results['rounds']} round(s)): the "
             "README's two commands, each in a fresh process (TensorFlow's import and the "
             f"base's build included), defaults (`--base mobilenet_v2`); target under "
             f"{TARGET_SECONDS} s each.", "",
             "| command | wall s (median) | every round | peak MB | printed at the end |",
             "|---|---|---|---|---|"]
    for command, args in COMMANDS.items():
        cells = [c for c in results["runs"] if c["command"] == command]
        if not cells:
            continue
        walls = [c["wall_seconds"] for c in cells]
        shown = " ".join(str(a.relative_to(ROOT)) if isinstance(a, Path) else a for a in args)
        lines.append(f"| `smallcnn {shown}` | {statistics.median(walls):.1f} | "
                     f"{', '.join(f'{w:.1f}' for w in walls)} | "
                     f"{max(c['peak_mb'] for c in cells):.0f} | {cells[-1]['printed']} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "runs": []}
    with tempfile.TemporaryDirectory(prefix="smallcnn-pictures-") as work:
        for _ in range(args.rounds):
            for command in COMMANDS:
                cell = measure(command, Path(work))
                results["runs"].append(cell)
                print(json.dumps(cell), flush=True)
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
