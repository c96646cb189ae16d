"""The registry of convolutional bases.

Each entry carries its own defaults, the way timm's model registry does: the
constructor, the preprocessing its weights expect, its default image size, the width
of its pooled features, the name of its last convolutional layer (for Grad-CAM) and
where its ImageNet weights come from. Three bases ship their ImageNet weights in the
package (smallcnn/model/weights, provenance in the README) and work offline; the others'
are downloaded once by Keras (the modern ones: smallcnn.model.modern).
"""

import dataclasses
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from smallcnn.errors import UsageError, WeightsError, first_line
from smallcnn.model import dinov2, modern

PACKAGED_WEIGHTS = Path(__file__).parent / "weights"


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    name: str
    constructor: Callable  # (input_shape, weights) -> keras.Model without its top
    preprocessing: str  # a mode of smallcnn.model.layers.preprocessing_layer
    default_size: int
    feature_width: int
    last_conv_layer: str
    min_size: int = 32
    # Names the block of a layer (see smallcnn.model.networks.base_blocks): --unfreeze-blocks
    # unfreezes whole blocks. None: every layer with weights is a block of its own.
    block_pattern: Optional[str] = None
    # Measured to keep its predictions through an int8 export (docs/export.md; EfficientNet-B0's
    # swish and squeeze-excite do not: 92% top-1 agreement on ants-bees).
    int8_friendly: bool = False
    # A weights file shipped inside the package; None means Keras downloads it.
    packaged_imagenet: Optional[str] = None
    # The URL of the file Keras downloads (named in the message when the download fails).
    weights_url: Optional[str] = None
    has_imagenet: bool = True
    # --weights may name a folder (a KerasHub preset) as well as a file.
    weights_folder: bool = False
    # smallcnn.visualize: the layers whose activations DeepDream maximises, the layers whose
    # Gram matrices make a style, and the layer that holds an image's content.
    dream_layers: tuple = ()
    style_layers: tuple = ()
    content_layer: Optional[str] = None
    # Intermediate taps, ((layer, channels), ...): pooled beside the last layer's features,
    # used by a run's head where they gain on val (smallcnn.model.taps).
    taps: tuple = ()

    @property
    def default_weights(self):
        return "imagenet" if self.has_imagenet else "none"


def _applications(name):
    def build(input_shape, weights):
        import keras

        return getattr(keras.applications, name)(
            include_top=False, weights=weights, input_shape=input_shape
        )

    return build


def _efficientnet_lite(variant):
    def build(input_shape, weights):
        from smallcnn.model import efficientnet_lite

        if weights not in (None, "none"):
            raise WeightsError(f"EfficientNet-{variant.title()} has no downloadable weights; "
                               "use its packaged ImageNet weights or a weights file.")
        return efficientnet_lite.build(variant, input_shape, name=f"efficientnet_{variant}")

    return build


def _small_convnet(input_shape, weights):
    """The classic 4-block convnet (32-64-128-128 filters), trained from scratch."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = inputs
    for block, filters in enumerate((32, 64, 128, 128), start=1):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="relu",
            kernel_initializer="he_normal",
            name=f"block{block}_conv",
        )(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="small")


EFFICIENTNET_BLOCKS = r"block\d+[a-z]|stem|top"
# The ends of the last two stages below the top (14 x 14 and 7 x 7 at 224 pixels): the
# taps issue 28 measured on EfficientNet-B0 (+4.2 points on a leaf-disease set).
EFFICIENTNET_B0_TAPS = (("block5c_add", 112), ("block6d_add", 192))
# Gatys et al.'s choice: the first convolution of each block; content from block 5.
VGG_STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
EFFICIENTNET_STYLE_LAYERS = ("stem_activation", "block2a_expand_activation",
                             "block3a_expand_activation", "block4a_expand_activation",
                             "block6a_expand_activation")



def _convnext(size, width):
    name = f"convnext_{size}"
    dream, style, content = modern.convnext_layers(name)
    # Its stages end in an unnamed residual sum: the input of the next downsampling.
    taps = tuple((f"{name}_downsampling_block_{stage}:input", width // 8 * 2 ** stage)
                 for stage in (1, 2))
    return BaseSpec(name, modern.convnext(f"ConvNeXt{size.title()}", name), "none", 224, width,
                    f"{name}_{modern.FINAL_NORM}", block_pattern=modern.CONVNEXT_BLOCKS,
                    weights_url=f"{modern.CONVNEXT_URL}{name}_notop.h5", dream_layers=dream,
                    style_layers=style, content_layer=content, taps=taps)


def _efficientnet_v2(variant, size, width, taps):
    return BaseSpec(f"efficientnetv2_{variant}",
                    modern.efficientnet_v2(f"EfficientNetV2{variant.upper()}"), "none", size,
                    width, "top_activation", block_pattern=EFFICIENTNET_BLOCKS,
                    weights_url=f"{modern.EFFICIENTNET_V2_URL}efficientnetv2-{variant}_notop.h5",
                    dream_layers=("block4a_expand_activation", "block5a_expand_activation"),
                    style_layers=EFFICIENTNET_STYLE_LAYERS,
                    content_layer="block6a_expand_activation", taps=taps)


def _dinov2(name):
    """DINOv2 through KerasHub (an optional extra): smallcnn.model.dinov2."""
    return BaseSpec(name, dinov2.builder(name), "none", dinov2.DEFAULT_SIZE,
                    dinov2.feature_width(name), dinov2.PATCH_GRID, block_pattern=dinov2.BLOCKS,
                    weights_folder=True)


# Downloaded once by Keras (DINOv2: by KerasHub); sizes and widths as published.
MODERN_BASES = [_convnext("tiny", 768), _convnext("small", 768), _convnext("base", 1024),
                _efficientnet_v2("b0", 224, 1280, (("block5e_add", 112), ("block6h_add", 192))),
                _efficientnet_v2("b1", 240, 1280, (("block5f_add", 112), ("block6i_add", 192))),
                _efficientnet_v2("b2", 260, 1408, (("block5f_add", 120), ("block6j_add", 208))),
                _efficientnet_v2("b3", 300, 1536, (("block5g_add", 136), ("block6l_add", 232))),
                _efficientnet_v2("s", 384, 1280, (("block5i_add", 160), ("block6o_add", 256))),
                _dinov2("dinov2_vits14"), _dinov2("dinov2_vitb14")]

BASES = {
    spec.name: spec
    for spec in [
        BaseSpec(
            "mobilenet_v2",
            _applications("MobileNetV2"),
            "tf",
            224,
            1280,
            "out_relu",
            packaged_imagenet="mobilenet_v2_1.0_224_imagenet_notop.weights.h5",
            block_pattern=r"block_\d+|expanded_conv|Conv_?1",
            int8_friendly=True,
            dream_layers=("block_6_expand_relu", "block_9_expand_relu"),
            style_layers=("bn_Conv1", "block_1_expand_BN", "block_3_expand_BN",
                          "block_6_expand_BN", "block_13_expand_BN"),  # before ReLU6's clip
            content_layer="block_13_expand_relu",
            taps=(("block_12_add", 96), ("block_15_add", 160)),
        ),
        BaseSpec("mobilenet", _applications("MobileNet"), "tf", 224, 1024, "conv_pw_13_relu",
                 block_pattern=r"conv_(?:dw|pw)_(\d+)",
                 dream_layers=("conv_pw_6_relu", "conv_pw_9_relu"),
                 style_layers=("conv1_relu", "conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu",
                               "conv_pw_11_relu"),
                 content_layer="conv_pw_11_relu"),
        BaseSpec("vgg16", _applications("VGG16"), "caffe", 224, 512, "block5_conv3",
                 block_pattern=r"block\d+", dream_layers=("block4_conv3", "block5_conv1"),
                 style_layers=VGG_STYLE_LAYERS, content_layer="block5_conv2"),
        BaseSpec("vgg19", _applications("VGG19"), "caffe", 224, 512, "block5_conv4",
                 block_pattern=r"block\d+", dream_layers=("block4_conv4", "block5_conv2"),
                 style_layers=VGG_STYLE_LAYERS, content_layer="block5_conv2"),
        BaseSpec("resnet50", _applications("ResNet50"), "caffe", 224, 2048, "conv5_block3_out",
                 block_pattern=r"conv\d_block\d+|conv1",
                 dream_layers=("conv3_block4_out", "conv4_block3_out"),
                 style_layers=("conv1_relu", "conv2_block3_out", "conv3_block4_out",
                               "conv4_block6_out", "conv5_block3_out"),
                 content_layer="conv4_block6_out"),
        BaseSpec(
            "efficientnet_b0",
            _applications("EfficientNetB0"),
            "none",
            224,
            1280,
            "top_activation",
            packaged_imagenet="efficientnet_b0_imagenet_notop.f16.npz",
            block_pattern=EFFICIENTNET_BLOCKS,
            dream_layers=("block4a_expand_activation", "block5a_expand_activation"),
            style_layers=EFFICIENTNET_STYLE_LAYERS,
            content_layer="block6a_expand_activation",
            taps=EFFICIENTNET_B0_TAPS,
        ),
        BaseSpec(
            "efficientnet_lite2",
            _efficientnet_lite("lite2"),
            "lite",
            260,
            1280,
            "top_activation",
            packaged_imagenet="efficientnet_lite2_imagenet_notop.f16.npz",
            block_pattern=EFFICIENTNET_BLOCKS,
            int8_friendly=True,
            dream_layers=("block4a_expand_activation", "block5a_expand_activation"),
            style_layers=EFFICIENTNET_STYLE_LAYERS,
            content_layer="block6a_expand_activation",
            taps=(("block5d_add", 120), ("block6e_add", 208)),
        ),
        BaseSpec(
            "inception_v3", _applications("InceptionV3"), "tf", 299, 2048, "mixed10", min_size=75,
            dream_layers=("mixed4", "mixed5", "mixed6", "mixed7"),  # the Keras example's
            style_layers=("mixed0", "mixed1", "mixed2", "mixed4", "mixed7"), content_layer="mixed7",
        ),
        BaseSpec(
            "xception",
            _applications("Xception"),
            "tf",
            299,
            2048,
            "block14_sepconv2_act",
            min_size=71,
            block_pattern=r"block\d+",
            dream_layers=("block4_sepconv2_act", "block8_sepconv2_act"),
            style_layers=("block1_conv1_act", "block2_sepconv2_act", "block3_sepconv2_act",
                          "block4_sepconv2_act", "block8_sepconv2_act"),
            content_layer="block8_sepconv2_act",
        ),
        BaseSpec("small", _small_convnet, "scale", 150, 128, "block4_conv", has_imagenet=False,
                 block_pattern=r"block\d+", dream_layers=("block3_conv", "block4_conv"),
                 style_layers=("block1_conv", "block2_conv", "block3_conv"),
                 content_layer="block4_conv"),
        *MODERN_BASES,
    ]
}
DEFAULT_BASE = "efficientnet_b0"  # chosen by measurement: bench/bases.py, README


def get_base(name):
    """Returns the registry entry for a base name."""
    try:
        return BASES[name]
    except KeyError:
        raise UsageError(
            f"Unknown base: {name!r}. Choose one of: {', '.join(BASES)}."
        ) from None


def resolve_weights(spec, weights):
    """Turns `--weights` into 'imagenet', 'none' or an existing file path (as a str)."""
    if weights is None:
        return spec.default_weights
    lowered = weights.lower()
    if lowered in ("imagenet", "none"):
        if lowered == "imagenet" and not spec.has_imagenet:
            raise UsageError(
                f"The {spec.name!r} base has no pretrained weights; it trains from scratch. "
                "Use --weights none, or a pretrained base such as --base mobilenet_v2."
            )
        return lowered
    path = Path(weights).expanduser()
    if not (path.is_file() or (spec.weights_folder and path.is_dir())):
        kinds = "a weights file or a KerasHub preset folder" if spec.weights_folder \
            else "a weights file"
        raise UsageError(
            f"--weights must be 'imagenet', 'none' or {kinds}; no file at {weights!r}."
        )
    return str(path.resolve())


def build_base(spec, image_size, weights):
    """Builds the conv base (no top) for square images of `image_size` pixels.

    Args:
        spec: a `BaseSpec` from `BASES`.
        image_size: the side of the input images in pixels; None for images of any size
            (DeepDream and style transfer work on whole photos).
        weights: 'imagenet', 'none' or a path to a `.weights.h5` file (see `resolve_weights`).

    Returns:
        A `keras.Model` mapping images to the last convolutional feature map.
    """
    if image_size is not None and image_size < spec.min_size:
        raise UsageError(
            f"--image-size {image_size} is too small for {spec.name!r}; "
            f"it needs at least {spec.min_size} pixels."
        )
    input_shape = (image_size, image_size, 3)
    if weights == "none":
        return spec.constructor(input_shape, None)
    if weights == "imagenet" and spec.packaged_imagenet:
        return _load_file(spec, input_shape, PACKAGED_WEIGHTS / spec.packaged_imagenet)
    if weights == "imagenet":
        try:
            return spec.constructor(input_shape, "imagenet")
        except (UsageError, WeightsError):
            raise  # the constructor's own message (DINOv2's: which preset, from where)
        except Exception as error:  # the download failed: no network, proxy, full disk...
            raise _download_failed(spec, error) from error
    if spec.weights_folder and Path(weights).is_dir():
        return spec.constructor(input_shape, weights)  # a KerasHub preset folder
    return _load_file(spec, input_shape, Path(weights))


def _download_failed(spec, error):
    reason = first_line(error)
    if spec.weights_url is None:
        return WeightsError(
            f"Could not download the ImageNet weights for {spec.name!r} ({reason}). "
            "Pass a weights file with --weights PATH, or train without them: --weights none.")
    cached = modern.weights_file(spec.weights_url)
    return WeightsError(
        f"Could not download {cached.name} for {spec.name!r} from {spec.weights_url} "
        f"({reason}). Offline, fetch it elsewhere and pass it with --weights PATH, or put it "
        f"in Keras' cache as {cached}; or train without them: --weights none.")


def _load_file(spec, input_shape, path):
    base = spec.constructor(input_shape, None)
    try:
        if path.suffix == ".npz":
            _load_packed(base, path)
            return base
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base.load_weights(str(path))
        # Keras only warns when parts of a file match no layer; half-loaded weights are wrong.
        skipped = [w for w in caught if "Skipping" in str(w.message) or "mismatch" in str(w.message)]
        if skipped:
            raise ValueError(str(skipped[0].message).split(".")[0])
    except Exception as error:
        reason = first_line(error)
        raise WeightsError(
            f"The weights file {str(path)!r} does not fit the {spec.name!r} base ({reason}). "
            f"It must be a Keras .weights.h5 file of {spec.name} without its top"
            f"{_published_name(spec)}."
        ) from error
    return base


def _published_name(spec):
    return f", or Keras' {spec.weights_url.rsplit('/', 1)[-1]}" if spec.weights_url else ""


def _load_packed(base, path):
    """Loads weights packed as tools/pack_weights.py writes them: the `save_own_variables`
    arrays of each layer with weights under "<position>/<index>", floats as float16."""
    with np.load(path) as packed:
        arrays = dict(packed)
    for position, layer in enumerate(layer for layer in base.layers if layer.weights):
        store = {}
        for index in range(len(layer.weights)):
            value = arrays.pop(f"{position}/{index}", None)
            if value is None:
                raise ValueError(f"no weights for layer {layer.name!r}")
            store[str(index)] = value.astype("float32") if value.dtype == np.float16 else value
        layer.load_own_variables(store)  # checks the shapes; Normalization finalizes itself
    if arrays:
        raise ValueError(f"{len(arrays)} arrays match no layer, such as {next(iter(arrays))!r}")


def weights_label(weights):
    """How the weights are described in a run's metadata."""
    return weights if weights in ("imagenet", "none") else f"file:{weights}"
