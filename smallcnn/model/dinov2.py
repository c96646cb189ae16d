"""DINOv2 ViT-S/14 and ViT-B/14 (Oquab et al. 2023, self-supervised; Apache-2.0 weights)
through KerasHub's `DINOV2Backbone`, an optional extra: `pip install "smallcnn[dinov2]"`
(registered in smallcnn.model.bases).

The base is a flat Keras model made of the backbone's own layers, so that every
transformer block is a layer of its own (`--unfreeze-blocks`, finetune's cut) and the
base keeps every base's contract, image -> feature map -> global average pooling: the
ImageNet normalisation (inside: the registry's preprocessing mode is 'none'), the patch
embedding, the blocks and the final LayerNorm; then the patch tokens as a grid
(`PATCH_GRID`, (B, h, w, hidden): Grad-CAM's layer) and the features, the CLS token beside
the mean patch token, as a 1x1 map (B, 1, 1, 2 x hidden), which the pooling passes through.

The image size is fixed when the base is built: the position embeddings, trained at
518 px (37 x 37 patches), are interpolated once (bicubic, by KerasHub) to size // 14
patches a side and kept at that size; a size that is not a multiple of 14 leaves its last
size % 14 rows and columns of pixels unseen. Its pretrained weights are KerasHub's presets, downloaded once from Kaggle
by kagglehub into its cache (`preset_folder`) and read from there without a network;
`--weights PATH` takes such a folder (`backbone.save_to_preset`'s layout).
"""

import os
from pathlib import Path

from smallcnn.errors import UsageError, WeightsError, described, first_line

PATCH = 14
DEFAULT_SIZE = 224  # 16 x 16 patches (1 CLS + 256 patch tokens: the model card's example)
# The architectures (DINOv2's model card: width, heads, an MLP 4 x as wide; 12 blocks) and
# KerasHub's preset of each.
ARCHITECTURES = {
    "dinov2_vits14": dict(patch_size=PATCH, num_layers=12, hidden_dim=384, num_heads=6,
                          intermediate_dim=1536),
    "dinov2_vitb14": dict(patch_size=PATCH, num_layers=12, hidden_dim=768, num_heads=12,
                          intermediate_dim=3072),
}
PRESETS = {"dinov2_vits14": "dinov2_small", "dinov2_vitb14": "dinov2_base"}
# The preset files KerasHub reads (keras_hub/src/utils/preset_utils.py).
PRESET_FILES = ("config.json", "model.weights.h5")
REASON_CHARS = 100  # of a failed download's error (requests' run to 400 on one line)
# DINOv2's input normalisation (ImageNet's mean and deviation), as pixels in [0, 255].
MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
STD = tuple(255 * s for s in (0.229, 0.224, 0.225))

EMBEDDINGS = "embeddings"
FINAL_NORM = "final_layernorm"
PATCH_GRID = "patch_grid"
# --unfreeze-blocks: the patch embedding, each transformer block, the final LayerNorm.
BLOCKS = rf"{EMBEDDINGS}|block_\d+|{FINAL_NORM}"


def feature_width(name):
    return 2 * ARCHITECTURES[name]["hidden_dim"]


def builder(name):
    """The registry's (input_shape, weights) -> keras.Model constructor of a DINOv2 base;
    `weights` is None (random), 'imagenet' (the published preset) or a preset folder."""

    def build(input_shape, weights):
        size = input_shape[0]
        if size is None:
            raise UsageError(
                f"The {name} base is built for one image size (its position embeddings are "
                "interpolated to it), so it cannot take pictures of any size; DeepDream and "
                "style transfer need another base, such as --base efficientnet_b0.")
        if weights is None:
            backbone = _keras_hub(name).models.DINOV2Backbone(
                **ARCHITECTURES[name], image_shape=(size, size, 3))
        elif weights == "imagenet":
            backbone = _pretrained(name, size)
        else:
            backbone = _from_folder(name, Path(weights), size)
        return wrap(name, backbone)

    return build


def _keras_hub(name):
    try:
        import keras_hub
    except ImportError as error:
        raise UsageError(f"The {name} base needs KerasHub ({first_line(error)}): "
                         'pip install "smallcnn[dinov2]".') from error
    return keras_hub


def kaggle_handle(name):
    """The Kaggle handle KerasHub downloads the preset of `name` from."""
    preset = PRESETS[name]
    return _keras_hub(name).models.DINOV2Backbone.presets[preset]["kaggle_handle"]


def preset_folder(name):
    """Where kagglehub keeps the downloaded preset of `name` ($KAGGLEHUB_CACHE, else
    ~/.cache/kagglehub; then models/<owner>/<model>/<framework>/<variation>/<version>)."""
    cache = os.environ.get("KAGGLEHUB_CACHE", os.path.join("~", ".cache", "kagglehub"))
    handle = kaggle_handle(name).removeprefix("kaggle://")
    return Path(cache).expanduser() / "models" / handle


def _pretrained(name, size):
    """The published preset: from kagglehub's cache where its files are (no network, and
    files placed there by hand count too), else downloaded there by KerasHub."""
    folder = preset_folder(name)
    if all((folder / file).is_file() for file in PRESET_FILES):
        return _from_folder(name, folder, size)
    keras_hub, preset = _keras_hub(name), PRESETS[name]
    try:
        backbone = keras_hub.models.DINOV2Backbone.from_preset(preset,
                                                               image_shape=(size, size, 3))
    except Exception as error:  # no network, proxy, Kaggle down, full disk...
        raise WeightsError(
            f"Could not download KerasHub's {preset} preset for {name!r} from Kaggle "
            f"({kaggle_handle(name)}: {_shortened(described(error))}). Offline, save it elsewhere "
            f"(keras_hub.models.DINOV2Backbone.from_preset({preset!r}).save_to_preset(DIR)) "
            f"and pass DIR with --weights PATH, or copy its {' and '.join(PRESET_FILES)} "
            f"into {folder}; or train without them: --weights none.") from error
    _check_architecture(name, backbone, preset)
    return backbone


def _shortened(reason):
    return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 3] + "..."


def _from_folder(name, folder, size):
    keras_hub = _keras_hub(name)
    try:
        backbone = keras_hub.models.DINOV2Backbone.from_preset(str(folder),
                                                               image_shape=(size, size, 3))
    except Exception as error:
        raise WeightsError(
            f"The folder {str(folder)!r} is not a KerasHub DINOv2 preset ({first_line(error)}). "
            f"It must hold {' and '.join(PRESET_FILES)} as backbone.save_to_preset writes "
            f"them, such as KerasHub's {PRESETS[name]}.") from error
    _check_architecture(name, backbone, str(folder))
    return backbone


def _check_architecture(name, backbone, source):
    """Refuses a preset of another size (its features would not fit the registry's)."""
    wanted = ARCHITECTURES[name]
    found = {key: getattr(backbone, key) for key in wanted}
    if found != wanted or backbone.num_register_tokens:
        shown = ", ".join(f"{key} {value}" for key, value in found.items())
        raise WeightsError(
            f"The preset {source!r} ({shown}, {backbone.num_register_tokens} registers) is not "
            f"{name}'s architecture; {name} takes KerasHub's {PRESETS[name]}.")


def wrap(name, backbone):
    """The flat base (see the module's docstring) around a `DINOV2Backbone`'s layers: its
    blocks themselves, its embedding and final norm copied (the backbone's own graph calls
    them too, and a layer called twice has no single output for finetune's cut)."""
    import keras
    from keras import layers

    size, hidden = backbone.image_shape[0], backbone.hidden_dim
    grid = size // backbone.patch_size
    images = keras.Input((size, size, 3), name="image")
    x = layers.Normalization(mean=MEAN, variance=[s * s for s in STD], name="normalize")(images)
    x = _embedding_at(backbone.embeddings, size, x)
    for index, block in enumerate(backbone.encoder.layers):
        block.name = f"block_{index}"
        x = block(x)
    norm = layers.LayerNormalization.from_config(
        {**backbone.layernorm.get_config(), "name": FINAL_NORM})
    tokens = norm(x)
    norm.set_weights(backbone.layernorm.get_weights())
    cls = layers.Cropping1D((0, grid * grid), name="cls_token")(tokens)
    patches = layers.Cropping1D((1, 0), name="patch_tokens")(tokens)
    patch_grid = layers.Reshape((grid, grid, hidden), name=PATCH_GRID)(patches)
    mean = layers.GlobalAveragePooling2D(keepdims=True, name="mean_patch_token")(patch_grid)
    cls = layers.Reshape((1, 1, hidden), name="cls_map")(cls)
    features = layers.Concatenate(name="token_features")([cls, mean])
    return keras.Model(images, features, name=name)


def _embedding_at(original, size, x):
    """A copy of the backbone's embedding layer, called on `x`, whose position embeddings
    are those interpolated to `size` (their own size: KerasHub interpolates nothing more).

    KerasHub saves position embeddings that were trained at another size interpolated back
    to it, only when their sum fell (`_is_interpolated_position_embeddings_updated`), and
    loads them interpolated again: trained ones did not come back. At their own size both
    are copies, and this layer's save copies the trained ones (a model.keras that Keras
    loads without smallcnn gets them back)."""
    import keras

    config = {**original.get_config(), "name": EMBEDDINGS,
              "position_embedding_shape": (size, size)}
    embedding = type(original).from_config(config)
    x = embedding(x)
    embedding.patch_embeddings.set_weights(original.patch_embeddings.get_weights())
    for variable in ("cls_token", "mask_token"):
        if hasattr(original, variable):
            getattr(embedding, variable).assign(getattr(original, variable))
    for variable in (embedding.position_embeddings, embedding.interpolated_position_embeddings):
        variable.assign(original.interpolated_position_embeddings)

    def save_own_variables(store):
        embedding.position_embeddings.assign(embedding.interpolated_position_embeddings)
        keras.layers.Layer.save_own_variables(embedding, store)

    embedding.save_own_variables = save_own_variables
    return x
