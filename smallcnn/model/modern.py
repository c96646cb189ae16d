"""Builders and layer names of the modern keras.applications bases: ConvNeXt and
EfficientNetV2 (registered in smallcnn.model.bases).

Both include their preprocessing in the model in Keras 3 (`include_preprocessing=True`:
ConvNeXt normalises by the ImageNet mean and deviation, EfficientNetV2-B* rescales and
normalises, V2-S rescales to [-1, 1]), so they take raw pixels in [0, 255]: the registry's
preprocessing mode is 'none'. Their ImageNet weights are downloaded once by Keras into
its cache folder (`weights_file`).
"""

import os
from pathlib import Path

# Where keras.applications downloads these bases' weights (BASE_WEIGHTS_PATH in
# keras/src/applications/convnext.py and efficientnet_v2.py).
CONVNEXT_URL = "https://storage.googleapis.com/tensorflow/keras-applications/convnext/"
EFFICIENTNET_V2_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                       "efficientnet_v2/")
# ConvNeXt's last layer (a LayerNormalization) has no name of its own in Keras, so its
# automatic name changes with the models built before it; it is renamed to this (after
# the model's name), which Grad-CAM and .weights.h5 files rely on.
FINAL_NORM = "final_layernorm"
# The stages of each ConvNeXt: tiny has 3, 3, 9, 3 blocks; small and base 3, 3, 27, 3.
CONVNEXT_BLOCKS = r"stem|stage_\d+_block_\d+|downsampling_block_\d+|" + FINAL_NORM


def convnext(keras_name, model_name):
    """A (input_shape, weights) -> keras.Model builder of a ConvNeXt without its top."""

    def build(input_shape, weights):
        import keras

        base = getattr(keras.applications, keras_name)(
            include_top=False, weights=weights, input_shape=input_shape)
        base.layers[-1].name = f"{model_name}_{FINAL_NORM}"
        return base

    return build


def efficientnet_v2(keras_name):
    def build(input_shape, weights):
        import keras

        return getattr(keras.applications, keras_name)(
            include_top=False, weights=weights, input_shape=input_shape)

    return build


def convnext_layers(model_name):
    """`(dream, style, content)` layers of a ConvNeXt: the GELUs inside its blocks (the
    residual sums are operations, not layers), from each stage."""

    def gelu(stage, block):
        return f"{model_name}_stage_{stage}_block_{block}_gelu"

    return ((gelu(2, 2), gelu(2, 5)),
            (f"{model_name}_stem", gelu(0, 2), gelu(1, 2), gelu(2, 2), gelu(3, 0)),
            gelu(2, 5))


def weights_file(url):
    """Where Keras' `get_file` keeps a downloaded file of `url` ($KERAS_HOME or ~/.keras,
    then models/)."""
    home = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    return Path(home) / "models" / url.rsplit("/", 1)[-1]
