"""The frozen base's engine: conversion to LiteRT, and what it says when it falls back."""

import numpy as np


def test_a_failed_fast_conversion_says_so_and_falls_back_to_keras_export(tmp_path, monkeypatch):
    import keras
    import tensorflow.python.framework.convert_to_constants as constants

    from smallcnn.runtime.litert import LiteRTEngine, convert_to_litert

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


def test_the_fast_conversion_writes_no_saved_model(tmp_path, monkeypatch):
    """Given the model as well, TensorFlow's converter saves and converts a SavedModel
    (10 s instead of 1 s for MobileNetV2 here): the fast route converts the frozen graph."""
    import importlib

    import keras

    from smallcnn.runtime.litert import LiteRTEngine, convert_to_litert

    saved = []

    def recorded(*args, **kwargs):  # the converter swallows what this raises, and goes on
        saved.append(args)
        raise RuntimeError("no SavedModel here")

    # What TensorFlow's converter (tensorflow/lite/python/lite.py) saves a SavedModel with.
    saving = importlib.import_module("tensorflow.python.saved_model.save")
    monkeypatch.setattr(saving, "save", recorded)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1),
                              keras.layers.GlobalAveragePooling2D()])
    said = []
    convert_to_litert(model, tmp_path / "m.tflite", warn=said.append)
    assert said == [] and saved == []  # no fallback, no SavedModel
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(LiteRTEngine(tmp_path / "m.tflite")(x), model(x).numpy(),
                               rtol=1e-4, atol=1e-4)
