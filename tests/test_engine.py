"""The frozen base's engine: conversion to LiteRT, and what it says when it falls back."""

import numpy as np


def test_a_failed_fast_conversion_says_so_and_falls_back_to_keras_export(tmp_path, monkeypatch):
    import keras
    import tensorflow.python.framework.convert_to_constants as constants

    from smallcnn.engine import LiteRTEngine, convert_to_litert

    def broken(*args, **kwargs):
        raise RuntimeError("frozen graph not supported")

    monkeypatch.setattr(constants, "convert_variables_to_constants_v2", broken)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D()])
    said = []
    convert_to_litert(model, tmp_path / "m.tflite", warn=said.append)
    assert said == ["The fast LiteRT conversion failed (RuntimeError: frozen graph not "
                    "supported); converting through Keras' export instead (slower)."]
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(LiteRTEngine(tmp_path / "m.tflite")(x), x.mean(axis=(1, 2)),
                               rtol=1e-5)
