"""EfficientNet-Lite, which `keras.applications` does not have.

EfficientNet without squeeze-and-excitation and with ReLU6 instead of swish, so that it
runs (and quantizes) well on mobile runtimes such as LiteRT (Tan and Le, 2019; Google's
`tensorflow/tpu` EfficientNet-Lite). The layer names follow
`keras.applications.EfficientNetB0` (`stem_conv`, `block2a_expand_conv`, `top_activation`...).

Every convolution pads "same", which TensorFlow resolves from the runtime shape: unlike
`keras.applications.EfficientNet`'s fixed `ZeroPadding2D`, the same model is exact at
every input size, odd feature maps included.
"""

import string

# (repeats, kernel, first stride, expand ratio, output channels) per stage.
STAGES = {
    "lite0": [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)],
    "lite2": [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
              (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)],
}
STEM_WIDTH = 32
HEAD_WIDTH = 1280
BN_EPSILON = 1e-3


def block_names(variant):
    """The Keras names of the blocks, in order: block1a, block2a, block2b, ..."""
    return [f"block{stage}{string.ascii_lowercase[r]}"
            for stage, (repeats, *_) in enumerate(STAGES[variant], start=1)
            for r in range(repeats)]


def build(variant, input_shape, name=None):
    """EfficientNet-Lite `variant` ('lite0' or 'lite2') without its top: preprocessed
    images -> the head's 1280-channel feature map (ReLU6), like
    `keras.applications.EfficientNetB0(include_top=False)`."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, prefix, activate=True, depthwise=False):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                       name=f"{prefix}dwconv")(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                              name=f"{prefix}conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}activation")(x) if activate else x

    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, STEM_WIDTH, 3, 2, "stem_")
    names = iter(block_names(variant))
    channels = STEM_WIDTH
    for repeats, kernel, first_stride, expand, out in STAGES[variant]:
        for r in range(repeats):
            block = next(names)
            stride = first_stride if r == 0 else 1
            shortcut = x
            if expand != 1:
                x = conv_bn(x, channels * expand, 1, 1, f"{block}_expand_")
            x = conv_bn(x, None, kernel, stride, f"{block}_", depthwise=True)
            x = conv_bn(x, out, 1, 1, f"{block}_project_", activate=False)
            if stride == 1 and channels == out:
                x = layers.Add(name=f"{block}_add")([x, shortcut])
            channels = out
    x = conv_bn(x, HEAD_WIDTH, 1, 1, "top_")
    return keras.Model(inputs, x, name=name or f"efficientnet{variant}")


def keras_weights(tensors, variant):
    """Maps the original (PyTorch-layout) tensors of EfficientNet-Lite to
    {Keras layer name: [its weights in Keras order and layout]}; the classifier is left out."""

    def bn(prefix):
        return [tensors[f"{prefix}.{part}"]
                for part in ("weight", "bias", "running_mean", "running_var")]

    def conv(key):  # OIHW -> HWIO
        return [tensors[key].transpose(2, 3, 1, 0)]

    mapped = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0"),
              "top_conv": conv("_conv_head.weight"), "top_bn": bn("_bn1")}
    for t, block in enumerate(block_names(variant)):
        source = f"_blocks.{t}"
        if f"{source}._expand_conv.weight" in tensors:
            mapped[f"{block}_expand_conv"] = conv(f"{source}._expand_conv.weight")
            mapped[f"{block}_expand_bn"] = bn(f"{source}._bn0")
        # (C, 1, kh, kw) -> (kh, kw, C, 1)
        mapped[f"{block}_dwconv"] = [tensors[f"{source}._depthwise_conv.weight"].transpose(2, 3, 0, 1)]
        mapped[f"{block}_bn"] = bn(f"{source}._bn1")
        mapped[f"{block}_project_conv"] = conv(f"{source}._project_conv.weight")
        mapped[f"{block}_project_bn"] = bn(f"{source}._bn2")
    return mapped


def set_original_weights(model, tensors, variant):
    """Gives each layer of `model` (from `build`) its weights from the original tensors
    (see `keras_weights`); a layer without weights in them, a wrong shape, or a weight
    left over raises."""
    weights = keras_weights(tensors, variant)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(weights.pop(layer.name))
    if weights:
        raise ValueError(f"weights left over for layers {sorted(weights)[:5]}")
