"""How a model maps raw RGB pixels in [0, 255] to what its conv base's weights expect.

Models carry their own preprocessing, as one standard Keras layer named `preprocess`,
so every run's model.keras loads with plain `keras.saving.load_model(path,
safe_mode=True)`, where smallcnn is not installed. Modes follow
`keras.applications.imagenet_utils.preprocess_input`: `tf` scales to [-1, 1]; `lite`
computes (x - 127) / 128, the scaling EfficientNet-Lite was trained with; `caffe`
converts to BGR and subtracts the ImageNet mean; `scale` scales to [0, 1]; `none`
passes pixels through (for bases that rescale inside, like EfficientNet).
"""

import keras
import numpy as np
from keras import ops

# Per-channel ImageNet mean as keras.applications' preprocess_input (caffe mode) uses it.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

PREPROCESSING_MODES = ("tf", "lite", "caffe", "scale", "none")
# The modes that run folders made before smallcnn 0.2 can hold (see `Preprocess`).
LEGACY_MODES = ("tf", "caffe", "scale", "none")


def preprocessing_layer(mode, name="preprocess"):
    """The standard Keras layer that preprocesses float pixels for a base (see above)."""
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=name)
    if mode == "lite":
        return keras.layers.Rescaling(1 / 128, offset=-127 / 128, name=name)
    if mode == "scale":
        return keras.layers.Rescaling(1 / 255.0, name=name)
    if mode == "none":
        return keras.layers.Rescaling(1.0, name=name)
    if mode == "caffe":  # RGB -> BGR and minus the mean, as one fixed 1x1 convolution
        convert = keras.layers.Conv2D(3, 1, name=name, trainable=False)
        convert.build((None, None, None, 3))
        convert.set_weights([np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3),
                             -np.asarray(CAFFE_BGR_MEAN, dtype="float32")])
        return convert
    raise ValueError(f"Unknown preprocessing mode. Expected one of {PREPROCESSING_MODES}. "
                     f"Received: mode={mode!r}")


@keras.saving.register_keras_serializable(package="smallcnn")
class Preprocess(keras.layers.Layer):
    """The custom layer that run folders made before smallcnn 0.2 hold; registered so that
    they still load through smallcnn. New models use `preprocessing_layer`."""

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN)
        if self.mode == "scale":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
