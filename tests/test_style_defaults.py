"""Style transfer's defaults: SWAG's smoothing, and VGG19 where Keras has its weights."""

import numpy as np
import pytest
from conftest import assert_picture, invoke
from PIL import Image
from test_dream_style import painting, photo

from smallcnn.model.modern import weights_file
from smallcnn.visualize.style import OFFLINE_BASE, VGG19, VGG19_URL, default_base


def test_swag_is_a_softmax_over_the_whole_layer_with_mean_one():
    import tensorflow as tf

    from smallcnn.visualize.style import smoothed, swag

    maps = np.random.default_rng(0).normal(0, 2, (1, 3, 4, 5)).astype(np.float32)
    temperature = 0.7
    exp = np.exp(maps / temperature)
    expected = exp / exp.sum() * maps.size  # every position and channel together
    got = swag(tf.constant(maps), tf.constant(temperature)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.mean() == pytest.approx(1.0, rel=1e-5)
    # large activations do not overflow: the softmax is taken in a stable way
    assert np.all(np.isfinite(swag(tf.constant(maps * 1000), tf.constant(1.0)).numpy()))
    np.testing.assert_array_equal(smoothed(tf.constant(maps), tf.constant(0.0)).numpy(), maps)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def test_the_default_base_is_vgg19_only_where_keras_has_its_weights(keras_home):
    cached = weights_file(VGG19_URL)
    assert cached.parent == keras_home / "models"

    base, weights, line = default_base()
    assert (base, weights) == (OFFLINE_BASE, None)
    assert f"Style transfer on {OFFLINE_BASE}" in line and str(cached) in line
    assert not keras_home.exists()  # nothing downloaded, nothing made

    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    base, weights, line = default_base()
    assert (base, weights) == (VGG19, str(cached))
    assert line == f"Style transfer on {VGG19}: Keras' cached weights {cached}."


@pytest.mark.heavy
def test_style_uses_a_cached_vgg19_and_says_so(keras_home, tmp_path, monkeypatch):
    import keras
    from keras.src.utils import file_utils

    def no_download(*args, **kwargs):
        raise AssertionError("style transfer tried to download a file")

    monkeypatch.setattr(file_utils, "get_file", no_download)
    Image.fromarray(photo(48)).save(tmp_path / "photo.png")
    Image.fromarray(painting(48)).save(tmp_path / "painting.png")
    args = ["visualize", "style", tmp_path / "photo.png", tmp_path / "painting.png",
            "--size", "48", "--steps", "2"]

    def printed(result):  # the terminal wraps the line with the long path
        assert result.exit_code == 0, result.output
        return "".join(result.output.split())

    assert f"Styletransferon{OFFLINE_BASE}(itsweightsship" in printed(
        invoke(*args, "--out", tmp_path / "offline.png"))

    # Keras' own file layout: a legacy .h5 of VGG19 without its top (here random weights)
    cached = weights_file(VGG19_URL)
    cached.parent.mkdir(parents=True)
    vgg = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    keras.saving.save_model(vgg, cached)
    output = printed(invoke(*args, "--out", tmp_path / "vgg.png"))
    assert "".join(f"Style transfer on {VGG19}: Keras' cached weights {cached}.".split()) in output
    assert_picture(tmp_path / "vgg.png", 48, 48)
