"""Makes the pictures in the README from the bundled sample (datasets/ants-bees).

    .venv/bin/python docs/make_pictures.py [--run RUN]

Trains `smallcnn extract` on the sample unless --run names a run, then writes into
docs/images/: curves.png, confusion.png, a Grad-CAM overlay, an activation grid, a
filter grid, and report.png, a screenshot of `smallcnn report` taken by headless
Chromium (Debian's chromium package).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smallcnn import train, visualize  # noqa: E402
from smallcnn.evaluate import evaluate  # noqa: E402
from smallcnn.report import build_report  # noqa: E402

IMAGES = ROOT / "docs" / "images"
SAMPLE = ROOT / "datasets" / "ants-bees"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run trained on the sample (default: train one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smallcnn-pictures-"))
    run = Path(args.run) if args.run else train.extract(SAMPLE, out=work / "run").run_dir
    IMAGES.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "curves.png", IMAGES / "curves.png")
    result = evaluate(run)
    shutil.copy(result.confusion_png, IMAGES / "confusion.png")
    wrong = Path(result.wrong[0]["path"])  # the most confidently wrong validation image
    right = SAMPLE / "val" / "bees" / "10870992_eebeeb3a12.jpg"
    for picture in visualize.gradcam([right, wrong], model=run, out=work / "cam"):
        name = "gradcam-right.png" if Path(picture.source) == right else "gradcam-wrong.png"
        shutil.copy(picture.path, IMAGES / name)
    for picture in visualize.activations(right, model=run, layers=["block_1_expand_relu",
                                                                   "block_13_expand_relu"],
                                         channels=16, out=work / "act"):
        shutil.copy(picture.path, IMAGES / f"activations-{picture.source}.png")
    for picture in visualize.filters(model=run, layer="block_6_expand", count=16,
                                     out=work / "filters"):
        shutil.copy(picture.path, IMAGES / "filters-block_6_expand.png")
    page = build_report(run, out=work / "report.html")
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,2300", f"--screenshot={IMAGES / 'report.png'}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    for path in sorted(IMAGES.iterdir()):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
