"""Test-time augmentation: the views, their average, and the commands that take it."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, invoke, make_dataset, make_image

from smallcnn.inference.tta import DEFAULT_VIEWS, VIEWS, view


def test_the_views_are_what_they_say():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert view(images, 0) is images
    assert np.array_equal(view(images, 1), images[:, :, ::-1])
    centre = np.asarray(Image.fromarray(images[0][2:30, 2:30]).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(view(images, 2)[0], centre)
    assert np.array_equal(view(images, 3)[0], centre[:, ::-1])
    corner = np.asarray(Image.fromarray(images[1][4:32, 0:28]).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(view(images, 6)[1], corner)  # bottom-left
    assert all(view(images, i).shape == images.shape for i in range(len(VIEWS)))


def test_predict_averages_the_views(trained):
    from smallcnn.data.images import load_images
    from smallcnn.inference.predict import load

    run, data = trained
    paths = sorted(str(p) for p in (data / "val").rglob("*.png"))[:6]
    classifier = load(run)
    pixels = load_images(paths, classifier.image_size)[0]
    expected = np.mean([classifier.probabilities(view(pixels, i)) for i in range(DEFAULT_VIEWS)],
                       axis=0)
    got = classifier.predict(paths, top_k=len(classifier.class_names), tta=True)
    for prediction, row in zip(got, expected):
        top = {entry["label"]: entry["probability"] for entry in prediction.top}
        assert top == pytest.approx({classifier.class_names[i]: float(row[i])
                                     for i in range(len(row))}, abs=1e-5)
    two = classifier.predict(pixels, tta=2)
    assert two[0].probability == pytest.approx(float(np.mean(
        [classifier.probabilities(view(pixels, i))[0] for i in range(2)], axis=0).max()), abs=1e-5)


def mixed_pictures(root):
    """A data set of the run's classes whose val/red pictures are red on the left and blue
    on the right, split at a different column each: each view sees other shares of the two."""
    from PIL import Image

    make_dataset(root, per_class=2, classes=tuple(COLORS))
    rng = np.random.default_rng(1)
    for column in range(6, 34, 4):
        red, blue = (np.asarray(make_image(rng, COLORS[name], 40)) for name in ("red", "blue"))
        Image.fromarray(np.concatenate([red[:, :column], blue[:, column:]], axis=1)).save(
            root / "val" / "red" / f"mixed_{column:02d}.png")
    return sorted((root / "val" / "red").glob("mixed_*.png"))


def test_the_commands_take_tta(trained, tmp_path):
    """predict --tta and evaluate --tta-views give the views' average, which differs here
    from a single view's probabilities."""
    from smallcnn.inference.predict import load

    run, _ = trained
    mixed = mixed_pictures(tmp_path / "mixed")
    classifier = load(run)
    classes = classifier.class_names

    def predicted(*args):
        result = invoke("predict", *mixed, "--model", run, "--json", "--top-k", len(classes), *args)
        assert result.exit_code == 0, result.output
        tops = [{entry["label"]: entry["probability"] for entry in p["top"]}
                for p in json.loads(result.stdout)]
        return np.array([[top[name] for name in classes] for top in tops])

    def expected(views):
        tops = [{entry["label"]: entry["probability"] for entry in p.top}
                for p in classifier.predict(mixed, top_k=len(classes), tta=views)]
        return np.array([[top[name] for name in classes] for top in tops])

    plain, averaged = predicted(), predicted("--tta")
    np.testing.assert_allclose(plain, expected(False), atol=1e-5)
    np.testing.assert_allclose(averaged, expected(True), atol=1e-5)
    assert np.abs(averaged - plain).max() > 0.01  # so the views did run

    def wrong(*args):  # evaluate's wrong answers, by file name: (label, probability)
        evaluated = invoke("evaluate", run, tmp_path / "mixed", "--json", *args)
        assert evaluated.exit_code == 0, evaluated.output
        return {Path(w["path"]).name: (w["predicted"], w["probability"])
                for w in json.loads(evaluated.stdout)["wrong"]}

    by_name = {path.name: row for path, row in zip(mixed, expected(len(VIEWS)))}
    with_views = wrong("--tta-views", len(VIEWS))
    assert with_views and set(with_views) <= set(by_name)
    for name, (label, probability) in with_views.items():
        assert probability == pytest.approx(by_name[name][classes.index(label)], abs=1e-5)
    assert with_views != wrong()
    refused = invoke("predict", *mixed, "--model", run, "--tta-views", len(VIEWS) + 1)
    assert refused.exit_code == 2
    assert f"--tta-views must be between 1 and {len(VIEWS)}" in refused.output
