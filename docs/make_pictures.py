"""Makes the pictures in the README from the bundled sample (datasets/ants-bees).

    .venv/bin/python docs/make_pictures.py [--run RUN]

Trains `smallcnn extract` on the sample unless --run names a run, then writes into
docs/images/: curves.png, confusion.png, a Grad-CAM overlay, an activation grid, a
filter grid, and report.png, a screenshot of `smallcnn report` taken by headless
Chromium (Debian's chromium package); then dream.png and style.png, a sample photo next
to its DeepDream and its style transfer in the manner of the Van Gogh in docs/images
(the commands' defaults); and serve.png, the page of `smallcnn serve` in headless
Chromium (Debian's chromium and chromium-driver, through selenium) after two uploads with
Grad-CAM on. --only makes some of them: run (the pictures of a run), dream-style, serve.
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
from smallcnn.inference.evaluate import evaluate  # noqa: E402
from smallcnn.data.images import load_picture  # noqa: E402
from smallcnn.runtime.plots import grid_figure, save_figure  # noqa: E402
from smallcnn.visualize.report import build_report  # noqa: E402

IMAGES = ROOT / "docs" / "images"
SAMPLE = ROOT / "datasets" / "ants-bees"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run trained on the sample (default: train one)")
    parser.add_argument("--only", nargs="+", choices=["run", "dream-style", "serve"],
                        default=["run", "dream-style", "serve"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smallcnn-pictures-"))
    IMAGES.mkdir(parents=True, exist_ok=True)
    if "dream-style" in args.only:
        dream_and_style(work)
    run = Path(args.run) if args.run else None
    if {"run", "serve"} & set(args.only) and run is None:
        run = train.extract(SAMPLE, out=work / "run").run_dir
    if "run" in args.only:
        run_pictures(run, work)
    if "serve" in args.only:
        serve_page(run)
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


def serve_page(run):
    import threading
    import time

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from smallcnn.serve import build_app

    app, _ = build_app(run)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=8765, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,720",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(
        executable_path=shutil.which("chromedriver")))
    try:
        while not server.started:
            time.sleep(0.1)
        browser.get("http://127.0.0.1:8765/")
        browser.find_element(By.ID, "gradcam").click()
        photos = [SAMPLE / "val" / "bees" / "10870992_eebeeb3a12.jpg",
                  SAMPLE / "val" / "ants" / "10308379_1b6c72e180.jpg"]
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in photos))
        WebDriverWait(browser, 120).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, ".cam")) == len(photos))
        time.sleep(0.5)  # the overlays' images decoded and drawn
        browser.save_screenshot(str(IMAGES / "serve.png"))
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)


def run_pictures(run, work):
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
