"""Makes the pictures in the README from the bundled sample (datasets/ants-bees).

    .venv/bin/python docs/make_pictures.py [--run RUN]

Trains `smallcnn extract` on the sample unless --run names a run, then writes into
docs/images/: curves.png, confusion.png, a Grad-CAM overlay, an activation grid, a
filter grid, and report.png, a screenshot of `smallcnn report` taken by headless
Chromium (Debian's chromium package); then dream.png and style.png, a sample photo next
to its DeepDream and its style transfer in the manner of the Van Gogh in docs/images
(the commands' defaults). --dream-style-only makes only these two.
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

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from smallcnn import train, visualize  # noqa: E402
from smallcnn.evaluate import evaluate  # noqa: E402
from smallcnn.images import load_picture  # noqa: E402
from smallcnn.plots import grid_figure, save_figure  # noqa: E402
from smallcnn.report import build_report  # noqa: E402

IMAGES = ROOT / "docs" / "images"
SAMPLE = ROOT / "datasets" / "ants-bees"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run trained on the sample (default: train one)")
    parser.add_argument("--dream-style-only", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smallcnn-pictures-"))
    IMAGES.mkdir(parents=True, exist_ok=True)
    dream_and_style(work)
    if not args.dream_style_only:
        run_pictures(args.run, work)
    for path in sorted(IMAGES.iterdir()):
        print(path.relative_to(ROOT))


def dream_and_style(work):
    photo = SAMPLE / "val" / "bees" / "10870992_eebeeb3a12.jpg"
    painting = IMAGES / "van-gogh-village-street-in-auvers-1890.jpg"
    [picture, *_], dream = visualize.write_dream(photo, out=work / "dream.png")
    inputs = [load_picture(photo, 512), np.asarray(Image.open(picture.path))]
    save_figure(grid_figure(inputs, ["a photo of the sample",
                                     f"its DeepDream ({', '.join(dream.layers)})"],
                            columns=2, tile_inches=4), IMAGES / "dream.png")
    [picture], _ = visualize.write_style(photo, painting, out=work / "style.png")
    tiles = [load_picture(photo, 384), load_picture(painting, 384),
             np.asarray(Image.open(picture.path))]
    save_figure(grid_figure(tiles, ["content: a photo of the sample",
                                    "style: Van Gogh, Village Street in Auvers (1890)",
                                    "the photo in that style"], columns=3, tile_inches=3.4),
                IMAGES / "style.png")


def run_pictures(run, work):
    run = Path(run) if run else train.extract(SAMPLE, out=work / "run").run_dir
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


if __name__ == "__main__":
    main()
