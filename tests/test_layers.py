import keras
import numpy as np
import pytest

from smallcnn.model.layers import LEGACY_MODES, PREPROCESSING_MODES, Preprocess, preprocessing_layer


@pytest.mark.parametrize("mode", ["tf", "caffe"])
def test_preprocessing_matches_keras_applications(mode):
    from keras.src.applications.imagenet_utils import preprocess_input

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = preprocess_input(pixels.copy(), mode=mode)
    got = keras.ops.convert_to_numpy(preprocessing_layer(mode)(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", PREPROCESSING_MODES)
def test_a_model_with_its_preprocessing_loads_in_plain_keras_safe_mode(tmp_path, mode):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, preprocessing_layer(mode)(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("preprocess").__class__.__module__.startswith("keras")
    x = np.random.default_rng(1).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("mode", LEGACY_MODES)
def test_old_runs_custom_layer_computes_the_same(mode):
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Preprocess(mode)(pixels)),
                               keras.ops.convert_to_numpy(preprocessing_layer(mode)(pixels)),
                               rtol=1e-5, atol=1e-4)
