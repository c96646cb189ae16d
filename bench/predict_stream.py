"""`smallcnn predict --jsonl` over 2,000 and 20,000 images: does memory stay flat?

The images are cats-dogs-small's (train, validation and test: 4,000), linked under
distinct names as many times as needed, in a temporary folder; the model is an extract
run of cats-dogs-small (the default base). Each command runs in a fresh process under
/usr/bin/time: wall seconds, peak memory, images/s beyond start-up (from the two sizes).

    .venv/bin/python bench/predict_stream.py
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, load_results, save_results, smallcnn  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "predict_stream.json"
SIZES = (2_000, 20_000)


def folder_of(count, images, work):
    folder = work / f"images-{count}"
    folder.mkdir()
    for index in range(count):
        source = images[index % len(images)]
        (folder / f"{index:06d}-{source.name}").symlink_to(source)
    return folder


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    rows = results["rows"]
    lines = ["## Predicting into a JSON-lines file", "",
             f"bench/predict_stream.py ({results['date']}): `smallcnn predict FOLDER --jsonl "
             f"OUT` with a cats-dogs-small extract run ({results['engine']}), each in a fresh "
             "process; images/s beyond start-up "
             f"{results['images_per_second']:.1f}.", "",
             "| images | wall s | peak MB | lines written |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['images']:,} | {row['wall_seconds']:.1f} | {row['peak_mb']:.0f} | "
                     f"{row['lines']:,} |")
    return lines + [""]


def main():
    # No options; --help says what the bench does (and runs nothing).
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    data = SHARED / "cats-dogs-small"
    images = sorted(data.rglob("*.jpg"))
    results = {"date": time.strftime("%Y-%m-%d"), "rows": []}
    with tempfile.TemporaryDirectory(prefix="smallcnn-stream-") as folder:
        work = Path(folder)
        env = {"SMALLCNN_CACHE": str(work / "cache")}
        run = work / "run"
        smallcnn("extract", data, "--out", run, env=env)
        for count in SIZES:
            out = work / f"predictions-{count}.jsonl"
            cell = smallcnn("predict", folder_of(count, images, work), "--model", run,
                            "--jsonl", out, env=env)
            written = out.read_text().splitlines()
            row = {"images": count, "wall_seconds": cell["wall_seconds"],
                   "peak_mb": cell["peak_mb"], "lines": len(written)}
            results["rows"].append(row)
            results["engine"] = json.loads(written[0])["engine"]
            print(json.dumps(row), flush=True)
    small, large = results["rows"]
    results["images_per_second"] = (large["images"] - small["images"]) / (
        large["wall_seconds"] - small["wall_seconds"])
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
