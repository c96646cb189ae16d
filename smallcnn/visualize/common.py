"""What the pictures share: the parts of a smallcnn model, a base that takes images of any
size, the layers worth showing, reading images and writing pictures."""

import dataclasses
from pathlib import Path

import numpy as np

from smallcnn.errors import ModelError, UsageError
from smallcnn.model.bases import build_base, get_base, resolve_weights
from smallcnn.runtime.files import atomic_write

VISUALIZE_DIR = "visualize"
# The base of `visualize dream` and `visualize style` when no run is given: its ImageNet
# weights ship in the package, so both work offline.
PICTURE_BASE = "mobilenet_v2"
PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclasses.dataclass
class Picture:
    path: str  # the picture written
    source: str  # the image (or layer) it shows
    label: str = None
    probability: float = None


def model_parts(model, config):
    """(preprocess, base, pool, head) layers of a smallcnn model."""
    from smallcnn.model.networks import HEAD_NAME

    try:
        return (model.get_layer("preprocess"), model.get_layer(config["base_layer"]),
                model.get_layer("pool"), model.get_layer(HEAD_NAME))
    except (KeyError, ValueError):
        raise ModelError("The model has no preprocess, base, pool and head layers; "
                         "it was not made by this smallcnn version.") from None


@dataclasses.dataclass
class Backbone:
    """A conv base that takes RGB pixels in [0, 255] of any size, and where it came from."""

    spec: object  # the registry's BaseSpec
    preprocess: object  # pixels -> what the base's weights expect
    base: object  # a keras.Model with input shape (None, None, 3)
    source: str  # "mobilenet_v2 (ImageNet)" or the run folder

    def outputs(self, names):
        """A keras.Model from preprocessed pixels to the outputs of the named layers."""
        import keras

        return keras.Model(self.base.inputs, [feature_layer(self.base, n).output for n in names])


def open_backbone(model=None, base=None, weights=None):
    """The base of a trained run (`model`: its fine-tuned weights), or a registry base
    (`base`, default `PICTURE_BASE`, with `weights`: 'imagenet' by default), rebuilt to
    take images of any size."""
    from smallcnn.model.layers import preprocessing_layer

    if model is not None and (base is not None or weights is not None):
        raise UsageError("Pass either --model RUN (its base and weights) or --base NAME "
                         "[--weights], not both.")
    if model is None:
        spec = get_base(base or PICTURE_BASE)
        resolved = resolve_weights(spec, weights)
        net = build_base(spec, None, resolved)
        label = "ImageNet" if resolved == "imagenet" else "random" if resolved == "none" else resolved
        return Backbone(spec, preprocessing_layer(spec.preprocessing), net,
                        f"{spec.name} ({label} weights)")
    from smallcnn.inference.predict import load_run

    classifier = load_run(model)
    preprocess, fixed, _, _ = model_parts(classifier.model, classifier.config)
    spec = get_base(classifier.config["base"])
    net = spec.constructor((None, None, 3), None)
    net.set_weights(fixed.get_weights())
    return Backbone(spec, preprocess, net, str(classifier.run_dir or model))


def feature_layers(base):
    """The base's layers with feature maps (a 4-D output), in order."""
    found = []
    for layer in base.layers[1:]:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4:
            found.append(layer)
    return found


def feature_layer(base, name):
    """The base's layer `name`; refused, with the names that would work, unless it has
    feature maps."""
    try:
        layer = base.get_layer(name)
    except ValueError:
        layer = None
    if layer is None or len(layer.output.shape) != 4:
        names = [l.name for l in feature_layers(base)]
        raise UsageError(f"The base {base.name!r} has no layer {name!r} with feature maps. "
                         f"Its {len(names)} layers with feature maps: {', '.join(names)}.")
    return layer


def out_dir(classifier, out):
    folder = Path(out) if out is not None else Path(classifier.run_dir) / VISUALIZE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def decode(classifier, paths):
    """Image files (or folders of them) decoded at the model's size, or the first
    `UnreadableImage` raised."""
    from smallcnn.data.images import load_images
    from smallcnn.inference.predict import expand_paths

    paths = expand_paths(paths)
    pixels, failures = load_images(paths, classifier.image_size)
    if failures:
        raise failures[0]
    return paths, pixels


def picture_of(image, max_side):
    """An image file (or an `(h, w, 3)` array) as float32 RGB pixels in [0, 255], resized
    so that its longer side is `max_side`, its aspect ratio kept."""
    from PIL import Image

    from smallcnn.data.images import load_picture

    if isinstance(image, (str, Path)):
        return load_picture(image, max_side).astype(np.float32)
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise UsageError(f"An image array must be (height, width, 3) RGB. Received: shape "
                         f"{pixels.shape}")
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    return np.asarray(resized, dtype=np.float32)


def to_uint8(pixels):
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def picture_target(out, default, inputs):
    """Where a picture goes: `out` or `default`, checked before any work is done: a known
    format, and never one of the input images."""
    target = Path(out) if out is not None else Path(default)
    if target.suffix.lower() not in PICTURE_FORMATS:
        raise UsageError(f"--out {str(target)!r} must end with one of "
                         f"{', '.join(PICTURE_FORMATS)}.")
    for source in inputs:
        if isinstance(source, (str, Path)) and Path(source).exists() and \
                target.exists() and target.resolve() == Path(source).resolve():
            raise UsageError(f"--out {str(target)!r} is an input image; smallcnn does not "
                             "overwrite it. Choose another file name.")
    return target


def save_picture(pixels, target):
    """Writes RGB pixels to `target` (format from its extension) through a temporary file,
    so an interrupted write never leaves half a picture."""
    from PIL import Image

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(to_uint8(pixels))
    atomic_write(target, lambda temp: picture.save(temp, format=PICTURE_FORMATS[
        target.suffix.lower()]))
    return str(target)
