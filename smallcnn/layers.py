"""Keras layers that smallcnn puts into its models.

They are registered serializable classes, not Lambda layers, so a saved model loads
with `safe_mode=True` and carries its own preprocessing: a model takes raw RGB pixels
in [0, 255].
"""

import keras
from keras import ops

# Per-channel statistics of ImageNet as keras.applications' preprocess_input uses them.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

PREPROCESSING_MODES = ("tf", "caffe", "torch", "scale", "none")


@keras.saving.register_keras_serializable(package="smallcnn")
class Preprocess(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a conv base's weights expect.

    Modes follow `keras.applications.imagenet_utils.preprocess_input`:
    `tf` scales to [-1, 1]; `caffe` converts to BGR and subtracts the ImageNet mean;
    `torch` scales to [0, 1] and standardizes per channel; `scale` scales to [0, 1];
    `none` passes pixels through (for bases that rescale inside, like EfficientNet).
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown preprocessing mode. Expected one of {PREPROCESSING_MODES}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN)
            std = ops.convert_to_tensor(_TORCH_STD)
            return (x / 255.0 - mean) / std
        if self.mode == "scale":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
