"""What the model learned: curves, evaluation, Grad-CAM, activations, filters, the report."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_picture, invoke, make_dataset
from PIL import Image, ImageDraw

OBJECT_COLORS = {"blue": (40, 70, 230), "red": (220, 40, 40)}


def clutter_image(rng, size, color):
    """Grey clutter, green distractors and one coloured square (the class) at a random place.

    Returns:
        The image and the square's box (left, top, right, bottom), right and bottom exclusive.
    """
    image = Image.fromarray(rng.integers(90, 170, (size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(3, size // 4, 2)
        grey = int(rng.integers(30, 230))
        draw.rectangle([x, y, x + w, y + h], fill=(grey, grey, grey))
    for _ in range(3):  # in both classes: the model has to learn to ignore them
        x, y = rng.integers(0, size - 8, 2)
        r = int(rng.integers(3, 7))
        draw.ellipse([x, y, x + 2 * r, y + 2 * r], fill=(40, 200, 60))
    side = int(rng.integers(size // 5, size // 4 + 1))
    left, top = (int(v) for v in rng.integers(0, size - side, 2))
    draw.rectangle([left, top, left + side - 1, top + side - 1], fill=color)
    return image, (left, top, left + side, top + side)


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """A model trained here on clutter images whose class is a coloured square's colour:
    (run folder, data folder, {validation image path: the square's box})."""
    from smallcnn import train as training
    from smallcnn.train import Settings

    root = tmp_path_factory.mktemp("objects")
    rng = np.random.default_rng(0)
    boxes = {}
    for split, count in (("train", 90), ("val", 30)):
        for name, color in OBJECT_COLORS.items():
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image, box = clutter_image(rng, 64, color)
                image.save(folder / f"{name}_{i:03d}.png")
                if split == "val":
                    boxes[str(folder / f"{name}_{i:03d}.png")] = box
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMALLCNN_CACHE", str(root / "cache"))
        result = training.train(root / "data", Settings(base="small", image_size=64, epochs=15,
                                                        augment="none", batch_size=16),
                                out=root / "run")
    assert result.metrics["val_accuracy"] >= 0.95
    return result.run_dir, root / "data", boxes


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    """Data the model of `objects` gets partly wrong: some images in each class folder
    carry the other class's square, a few a purple one between the two."""
    root = tmp_path_factory.mktemp("hard")
    rng = np.random.default_rng(5)
    others = {"blue": "red", "red": "blue"}
    for name in OBJECT_COLORS:
        for split in ("train", "val"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(20):
                color = (OBJECT_COLORS[others[name]] if i < (6 if name == "blue" else 3)
                         else (150, 50, 160) if i < 10 else OBJECT_COLORS[name])
                clutter_image(rng, 64, color)[0].save(folder / f"{name}_{i:03d}.png")
    return root


def test_gradcam_peak_falls_inside_the_object(objects):
    from smallcnn.data.images import load_images
    from smallcnn.inference.predict import load
    from smallcnn.visualize import GradCam, upsample

    run, _, boxes = objects
    classifier = load(run)
    paths = sorted(boxes)
    pixels, failures = load_images(paths, 64)
    assert not failures
    heatmaps, probabilities = GradCam(classifier.model, classifier.config)(pixels)
    assert heatmaps.shape == (len(paths), 8, 8)  # block4_conv of the small base at 64 px
    assert 0 <= heatmaps.min() and heatmaps.max() <= 1
    np.testing.assert_allclose(probabilities, classifier.probabilities(pixels), atol=1e-4)
    inside = 0
    for path, heatmap in zip(paths, heatmaps):
        full = upsample(heatmap, 64)
        row, column = np.unravel_index(np.argmax(full), full.shape)
        left, top, right, bottom = boxes[path]
        inside += left <= column < right and top <= row < bottom
    assert inside / len(paths) >= 0.8, f"peak inside the object for {inside} of {len(paths)}"


def test_gradcam_command_writes_an_overlay_per_image(objects, tmp_path):
    run, data, _ = objects
    images = sorted((data / "val" / "red").iterdir())[:2]
    result = invoke("visualize", "gradcam", *images, "--model", run, "--out", tmp_path / "cam")
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "cam").glob("*.png"))
    assert [p.name for p in written] == [f"{p.stem}-gradcam.png" for p in images]
    for path in written:
        assert_picture(path, 300, 150)
    assert "red" in result.output
    # A named class, and one the model does not have.
    named = invoke("visualize", "gradcam", images[0], "--model", run, "--class", "blue",
                   "--out", tmp_path / "cam2")
    assert named.exit_code == 0 and "blue" in named.output
    wrong = invoke("visualize", "gradcam", images[0], "--model", run, "--class", "cat")
    assert wrong.exit_code == 2 and "--class 'cat' is not one of" in wrong.output


def test_evaluate_matches_a_direct_count(objects, hard):
    run, _, _ = objects
    result = invoke("evaluate", run, hard, "--json", "--top", "50")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    predicted = json.loads(invoke("predict", hard / "val", "--model", run, "--json").stdout)
    classes = report["classes"]
    assert classes == ["blue", "red"]
    count = np.zeros((2, 2), dtype=int)
    for p in predicted:
        count[classes.index(Path(p["path"]).parent.name), classes.index(p["label"])] += 1
    assert report["confusion_matrix"] == count.tolist()
    assert report["accuracy"] == pytest.approx(np.trace(count) / count.sum())
    for i, row in enumerate(report["per_class"]):
        precision = count[i, i] / count[:, i].sum() if count[:, i].sum() else 0
        recall = count[i, i] / count[i].sum()
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["support"] == count[i].sum()
    wrong = [p for p in predicted if p["label"] != Path(p["path"]).parent.name]
    assert len(wrong) >= 9  # the 9 swapped squares at least
    assert len(report["wrong"]) == len(wrong)
    assert [w["probability"] for w in report["wrong"]] == \
        sorted((w["probability"] for w in report["wrong"]), reverse=True)
    assert_picture(report["confusion_png"], 200, 200)
    # The table view, and a split the data does not have.
    table = invoke("evaluate", run, hard)
    assert table.exit_code == 0 and "precision" in table.output and "true \\ predicted" in table.output
    missing = invoke("evaluate", run, hard, "--split", "test")
    assert missing.exit_code == 3 and "no test split" in missing.output


def test_scores_handle_a_class_never_predicted():
    from smallcnn.inference.evaluate import scores

    matrix, rows = scores([0, 0, 1, 1, 2], [0, 0, 0, 1, 1], 3)
    assert matrix.tolist() == [[2, 0, 0], [1, 1, 0], [0, 1, 0]]
    assert rows[0]["precision"] == pytest.approx(2 / 3) and rows[0]["recall"] == 1
    assert rows[2] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_every_run_gets_curves_marking_the_kept_epoch_and_fine_tuning(objects, tmp_path):
    from smallcnn.runtime.plots import curves_figure

    run, _, _ = objects
    assert_picture(run / "curves.png", 500, 200)
    rows = [{"epoch": e, "phase": "frozen" if e <= 3 else "finetune", "loss": 1 / e,
             "accuracy": 0.5 + e / 20, "val_loss": 1.2 / e + (0.1 if e == 5 else 0),
             "val_accuracy": 0.5 + e / 25} for e in range(1, 7)]
    figure = curves_figure(rows, best_epoch=4)
    labels = [text.get_text() for ax in figure.axes for text in ax.get_legend().get_texts()]
    assert labels.count("fine-tuning starts") == 2 and labels.count("kept: epoch 4") == 2
    assert [line.get_xdata()[0] for line in figure.axes[0].lines
            if line.get_label() == "fine-tuning starts"] == [3.5]


def test_activations_and_filters(objects, tmp_path):
    run, data, _ = objects
    image = sorted((data / "val" / "blue").iterdir())[0]
    result = invoke("visualize", "activations", image, "--model", run, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob("*-activations-*.png"))
    assert [p.name.split("-activations-")[1] for p in written] == \
        [f"block{i}_conv.png" for i in range(1, 5)]
    for path in written:
        assert_picture(path, 400, 150)
    one = invoke("visualize", "activations", image, "--model", run, "--layer", "block2_pool",
                 "--channels", "8", "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    assert_picture(next((tmp_path / "one").glob("*.png")), 300, 50)

    result = invoke("visualize", "filters", "--model", run, "--layer", "block2_conv",
                    "--filters", "8", "--steps", "10", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert_picture(tmp_path / "filters-block2_conv.png", 400, 100)

    missing = invoke("visualize", "filters", "--model", run, "--layer", "block9_conv")
    assert missing.exit_code == 2 and "no layer 'block9_conv'" in missing.output


def test_filter_patterns_raise_their_filter():
    """Gradient ascent finds inputs that excite each filter more than the starting noise."""
    import keras

    from smallcnn.model.bases import get_base
    from smallcnn.model.networks import build_classifier, build_head
    from smallcnn.inference.predict import Classifier
    from smallcnn.visualize import filter_patterns

    keras.utils.set_random_seed(1)
    spec = get_base("small")
    base = spec.constructor((32, 32, 3), None)
    model = build_classifier(spec, base, build_head(128, 2), 32)
    config = {"class_names": ["a", "b"], "image_size": 32, "base": "small", "base_layer": "small"}
    classifier = Classifier(model, config)
    start, _ = filter_patterns(classifier, "block2_conv", filters=6, steps=1)
    _, after_one = filter_patterns(classifier, "block2_conv", filters=6, steps=1)
    patterns, after_many = filter_patterns(classifier, "block2_conv", filters=6, steps=25)
    assert patterns.shape == (6, 32, 32, 3) and patterns.dtype == np.uint8
    assert np.all(after_many >= after_one) and after_many.mean() > after_one.mean()


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet", "vgg16", "resnet50",
                                  "efficientnet_b0", "efficientnet_lite2", "inception_v3",
                                  "xception", "small"])
def test_gradcam_works_for_every_base(name):
    import keras

    from smallcnn.model.bases import build_base, get_base
    from smallcnn.model.networks import build_classifier, build_head
    from smallcnn.visualize import GradCam

    keras.utils.set_random_seed(0)
    spec = get_base(name)
    size = max(spec.min_size, 75 if name in ("inception_v3", "xception") else 64)
    base = build_base(spec, size, "none")
    model = build_classifier(spec, base, build_head(spec.feature_width, 3), size)
    config = {"base": name, "base_layer": base.name}
    pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype("uint8")
    heatmaps, probabilities = GradCam(model, config)(pixels, class_index=1)
    assert heatmaps.ndim == 3 and heatmaps.shape[0] == 2 and heatmaps.shape[1] >= 1
    assert np.isfinite(heatmaps).all() and 0 <= heatmaps.min() and heatmaps.max() <= 1
    assert probabilities.shape == (2, 3)


def test_report_is_one_self_contained_page(objects, hard, tmp_path):
    run, _, _ = objects
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = invoke("report", copy, "--data", hard)
    assert result.exit_code == 0, result.output
    page = (copy / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for heading in ("Data", "Training curves", "Validation: per class",
                    "Misclassified validation images", "Settings"):
        assert f"<h2>{heading}" in page
    ran_on = json.loads((copy / "metrics.json").read_text())["ran_on"]
    assert f"ran on {ran_on}" in page  # the devices and precision it trained on
    # No external resource: every image is embedded, and each is a real picture.
    assert not re.search(r'(src|href)="(?!data:)', page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    wrong = json.loads(invoke("evaluate", copy, hard, "--json", "--top", "100").stdout)["wrong"]
    assert len(wrong) >= 9 and len(images) == 2 + 2 * len(wrong)
    for item in wrong:
        assert Path(item["path"]).name in page
    for encoded in images:
        assert_picture(base64.b64decode(encoded), 30, 30)


@pytest.mark.browser
@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium package")
def test_report_renders_in_headless_chromium(objects, hard, tmp_path):
    run, _, _ = objects
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert invoke("report", copy, "--data", hard, "--out", tmp_path / "page.html").exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--window-size=1000,1400", f"--screenshot={shot}",
                    (tmp_path / "page.html").as_uri()], capture_output=True, timeout=120)
    image = assert_picture(shot, 1000, 1400)
    pixels = np.asarray(image.convert("RGB"))
    # The curves and confusion matrix are drawn: many distinct colours, not text alone.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


def test_tensorboard_logs_on_request(tmp_path):
    pytest.importorskip("tensorboard")
    data = make_dataset(tmp_path / "data")
    result = invoke("extract", data, "--base", "small", "--image-size", "32", "--epochs", "2",
                    "--out", tmp_path / "run", "--tensorboard")
    assert result.exit_code == 0, result.output
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    plain = invoke("extract", data, "--base", "small", "--image-size", "32", "--epochs", "2",
                   "--out", tmp_path / "plain")
    assert plain.exit_code == 0 and not (tmp_path / "plain" / "tensorboard").exists()


def test_dream_and_style_with_a_runs_own_base(objects, tmp_path):
    """--model RUN dreams with the run's trained base (here the from-scratch `small` one),
    at any image size, though the run was trained at 64 px."""
    run, data, _ = objects
    image = sorted((data / "val" / "blue").iterdir())[0]
    result = invoke("visualize", "dream", image, "--model", run, "--size", "96", "--octaves", "2",
                    "--steps", "5", "--out", tmp_path / "dream.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "dream.png").size == (96, 96)
    assert "objective (block3_conv, block4_conv)" in result.output
    result = invoke("visualize", "style", image, sorted((data / "val" / "red").iterdir())[0],
                    "--model", run, "--size", "48", "--steps", "3", "--out", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "s.png").size == (48, 48)
