"""Test-time augmentation: the views, their average, and the commands that take it."""

import json

import numpy as np
import pytest
from conftest import invoke

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
    got = classifier.predict(paths, top_k=3, tta=True)
    for prediction, row in zip(got, expected):
        top = {entry["label"]: entry["probability"] for entry in prediction.top}
        assert top == pytest.approx({classifier.class_names[i]: float(row[i])
                                     for i in range(len(row))}, abs=1e-5)
    two = classifier.predict(pixels, tta=2)
    assert two[0].probability == pytest.approx(float(np.mean(
        [classifier.probabilities(view(pixels, i))[0] for i in range(2)], axis=0).max()), abs=1e-5)


def test_the_commands_take_tta(trained):
    run, data = trained
    images = sorted((data / "val" / "red").iterdir())[:2]
    result = invoke("predict", *images, "--model", run, "--json", "--tta")
    assert result.exit_code == 0, result.output
    assert [p["label"] for p in json.loads(result.stdout)] == ["red", "red"]
    evaluated = invoke("evaluate", run, "--tta-views", "8", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] >= 0.9
    refused = invoke("predict", *images, "--model", run, "--tta-views", "9")
    assert refused.exit_code == 2 and "--tta-views must be between 1 and 8" in refused.output
