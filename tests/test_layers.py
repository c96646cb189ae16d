import keras
import numpy as np
import pytest

from smallcnn.layers import Preprocess


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_preprocess_matches_keras_applications(mode):
    from keras.src.applications.imagenet_utils import preprocess_input

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = preprocess_input(pixels.copy(), mode=mode)
    got = keras.ops.convert_to_numpy(Preprocess(mode)(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_preprocess_survives_safe_mode_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, Preprocess("caffe", name="preprocess")(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.full((1, 4, 4, 3), 100.0, dtype="float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_layer("preprocess").mode == "caffe"
