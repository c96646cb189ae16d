"""Looking inside a trained convnet: Grad-CAM heatmaps, intermediate activations and
the input patterns that maximise a filter.

    smallcnn visualize gradcam IMAGE... --model RUN [--class NAME]
    smallcnn visualize activations IMAGE --model RUN [--layer NAME]...
    smallcnn visualize filters --model RUN --layer NAME

Grad-CAM (Selvaraju et al., 2017) weights each channel of the base's last conv layer
(the registry's `last_conv_layer`) by the mean gradient of the class score (the logit,
before the softmax, so it does not vanish for confident predictions) and keeps the
positive part of the weighted sum.
"""

import dataclasses
from pathlib import Path

import numpy as np

from smallcnn.bases import get_base
from smallcnn.errors import ModelError, UsageError

VISUALIZE_DIR = "visualize"


def _parts(model, config):
    """(preprocess, base, pool, head) layers of a smallcnn model."""
    from smallcnn.models import HEAD_NAME

    try:
        return (model.get_layer("preprocess"), model.get_layer(config["base_layer"]),
                model.get_layer("pool"), model.get_layer(HEAD_NAME))
    except (KeyError, ValueError):
        raise ModelError("The model has no preprocess, base, pool and head layers; "
                         "it was not made by this smallcnn version.") from None


def _logits(head, features):
    """The head's output before its softmax: hidden layers, then the last Dense's matmul."""
    from keras import ops

    x = features
    for layer in head.layers[:-1]:
        x = layer(x, training=False)
    last = head.layers[-1]
    return ops.matmul(x, last.kernel) + last.bias


class GradCam:
    """Class-activation heatmaps from the base's last conv layer.

    Example:

        cam = GradCam(classifier.model, classifier.config)
        heatmaps, probabilities = cam(pixels)   # (n, h, w) in [0, 1], (n, classes)
    """

    def __init__(self, model, config):
        import keras

        self.preprocess, base, self.pool, self.head = _parts(model, config)
        layer_name = get_base(config["base"]).last_conv_layer
        try:
            conv = base.get_layer(layer_name)
        except ValueError:
            raise ModelError(f"The base has no layer {layer_name!r} for Grad-CAM.") from None
        self.layer_name = layer_name
        self._inner = keras.Model(base.inputs, [conv.output, base.output])

    def __call__(self, images, class_index=None):
        """Heatmaps for a `(n, size, size, 3)` batch of RGB pixels in [0, 255].

        Args:
            class_index: the class to explain (an int, or one per image); default the
                predicted class of each image.

        Returns:
            `(heatmaps, probabilities)`: `(n, h, w)` float arrays in [0, 1] at the conv
            layer's resolution, and the model's class probabilities.
        """
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        with tf.GradientTape() as tape:
            conv, features = self._inner(self.preprocess(x), training=False)
            logits = _logits(self.head, self.pool(features))
            if class_index is None:
                chosen = tf.argmax(logits, axis=1)
            else:
                chosen = tf.broadcast_to(tf.constant(class_index, dtype=tf.int64),
                                         [tf.shape(logits)[0]])
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        gradients = tape.gradient(score, conv)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()
        peak = cam.max(axis=(1, 2), keepdims=True)
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        return cam, tf.nn.softmax(logits).numpy()


def upsample(heatmap, size):
    """A heatmap resized (bilinear) to `size` x `size`."""
    from PIL import Image

    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32)


@dataclasses.dataclass
class Picture:
    path: str  # the PNG written
    source: str  # the image (or layer) it shows
    label: str = None
    probability: float = None


def _out_dir(classifier, out):
    folder = Path(out) if out is not None else Path(classifier.run_dir) / VISUALIZE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _class_index(classifier, name):
    if name is None:
        return None
    if name not in classifier.class_names:
        raise UsageError(f"--class {name!r} is not one of the model's classes: "
                         f"{', '.join(classifier.class_names)}.")
    return classifier.class_names.index(name)


def _decode(classifier, paths):
    from smallcnn.images import load_images
    from smallcnn.predict import expand_paths

    paths = expand_paths(paths)
    pixels, failures = load_images(paths, classifier.image_size)
    if failures:
        raise failures[0]
    return paths, pixels


def gradcam_overlays(classifier, pixels, class_index=None, batch_size=16):
    """Overlays (RGB uint8), heatmaps and probabilities for a batch of pixels."""
    from smallcnn.plots import overlay

    cam = GradCam(classifier.model, classifier.config)
    heatmaps, probabilities = [], []
    for start in range(0, len(pixels), batch_size):
        h, p = cam(pixels[start : start + batch_size], class_index)
        heatmaps.append(h)
        probabilities.append(p)
    heatmaps, probabilities = np.concatenate(heatmaps), np.concatenate(probabilities)
    overlays = [overlay(image, h) for image, h in zip(pixels, heatmaps)]
    return overlays, heatmaps, probabilities


def gradcam(paths, model=None, class_name=None, out=None):
    """Writes one Grad-CAM picture per image: the image and the heatmap over it.

    Returns:
        A list of `Picture`, in input order.
    """
    from smallcnn.plots import grid_figure, save_figure
    from smallcnn.predict import load_run

    classifier = load_run(model)
    index = _class_index(classifier, class_name)
    paths, pixels = _decode(classifier, paths)
    overlays, _, probabilities = gradcam_overlays(classifier, pixels, index)
    folder = _out_dir(classifier, out)
    pictures = []
    for path, image, picture, row in zip(paths, pixels, overlays, probabilities):
        shown = int(np.argmax(row)) if index is None else index
        name = classifier.class_names[shown]
        target = folder / f"{Path(path).stem}-gradcam.png"
        title = (f"{Path(path).name}: {'predicted' if index is None else 'class'} "
                 f"{name} ({row[shown]:.1%})")
        save_figure(grid_figure([image, picture], ["image", f"Grad-CAM: {name}"], columns=2,
                                title=title, tile_inches=3.2), target)
        pictures.append(Picture(str(target), path, name, float(row[shown])))
    return pictures


def _conv_layers(base):
    """The base's layers with a 4-D output, in order (convolutions, activations, pools...)."""
    found = []
    for layer in base.layers[1:]:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and type(layer).__name__ in ("Conv2D", "DepthwiseConv2D",
                                                         "SeparableConv2D", "ReLU", "Activation"):
            found.append(layer)
    return found


def default_layers(base, count=4):
    """`count` conv layers spread evenly from the first to the last."""
    layers = [l for l in _conv_layers(base) if type(l).__name__ != "Activation"] or \
        _conv_layers(base)
    if len(layers) <= count:
        return [l.name for l in layers]
    picks = np.linspace(0, len(layers) - 1, count).round().astype(int)
    return [layers[i].name for i in picks]


def _get_layer(base, name):
    try:
        layer = base.get_layer(name)
    except ValueError:
        names = [l.name for l in _conv_layers(base)]
        raise UsageError(
            f"The base has no layer {name!r}. Some of its conv layers: "
            f"{', '.join(names[:3] + ['...'] + names[-3:]) if len(names) > 6 else ', '.join(names)}"
        ) from None
    if len(layer.output.shape) != 4:
        raise UsageError(f"Layer {name!r} has no feature maps (output shape {layer.output.shape}).")
    return layer


def activations(path, model=None, layers=None, channels=32, out=None):
    """Writes one grid per layer of the feature maps of one image (each map scaled alone).

    Returns:
        A list of `Picture`, one per layer.
    """
    import keras

    from smallcnn.plots import grid_figure, save_figure
    from smallcnn.predict import load_run

    classifier = load_run(model)
    preprocess, base, _, _ = _parts(classifier.model, classifier.config)
    names = list(layers) if layers else default_layers(base)
    chosen = [_get_layer(base, name) for name in names]
    paths, pixels = _decode(classifier, [path])
    probe = keras.Model(base.inputs, [layer.output for layer in chosen])
    outputs = probe(preprocess(pixels[:1].astype("float32")), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    folder = _out_dir(classifier, out)
    pictures = []
    for layer, maps in zip(chosen, outputs):
        maps = np.asarray(maps)[0]
        shown = min(channels, maps.shape[-1])
        tiles = []
        for c in range(shown):
            channel = maps[..., c]
            spread = channel.max() - channel.min()
            tiles.append((channel - channel.min()) / spread if spread > 0 else np.zeros_like(channel))
        target = folder / f"{Path(paths[0]).stem}-activations-{layer.name}.png"
        save_figure(grid_figure(tiles, [str(c) for c in range(shown)], columns=8,
                                title=f"{layer.name} {tuple(maps.shape)}: the first {shown} "
                                      f"of {maps.shape[-1]} channels for {Path(paths[0]).name}"),
                    target)
        pictures.append(Picture(str(target), layer.name))
    return pictures


def filter_patterns(classifier, layer_name, filters=16, steps=30, seed=0):
    """Input patterns that maximise each of the first `filters` filters of a layer, found
    by gradient ascent on the pixels (all filters at once, one image each).

    Returns:
        `(patterns, activations)`: `(filters, size, size, 3)` uint8 images, contrast
        stretched for display, and the mean activation each reached.
    """
    import keras
    import tensorflow as tf

    preprocess, base, _, _ = _parts(classifier.model, classifier.config)
    layer = _get_layer(base, layer_name)
    count = min(filters, layer.output.shape[-1])
    probe = keras.Model(base.inputs, layer.output)
    size = classifier.image_size
    rng = np.random.default_rng(seed)
    pixels = tf.Variable(128 + rng.normal(0, 20, (count, size, size, 3)).astype("float32"))
    index = tf.range(count)
    step_size = 0.02 * 255 * np.sqrt(size * size * 3) / 10  # ~2 pixel levels per entry

    @tf.function
    def ascend():
        with tf.GradientTape() as tape:
            x = tf.identity(pixels)
            tape.watch(x)
            maps = probe(preprocess(x), training=False)
            border = max(1, maps.shape[1] // 10)
            inner = maps[:, border:-border, border:-border, :] if maps.shape[1] > 2 * border \
                else maps
            mean = tf.reduce_mean(inner, axis=(1, 2))  # (count, channels)
            score = tf.gather(mean, index, axis=1, batch_dims=1)
            total = tf.reduce_sum(score)
        gradient = tape.gradient(total, x)
        gradient = tf.math.l2_normalize(gradient, axis=(1, 2, 3))
        pixels.assign(tf.clip_by_value(pixels + step_size * gradient, 0.0, 255.0))
        return score

    for _ in range(steps):
        reached = ascend()
    images = pixels.numpy()
    images -= images.mean(axis=(1, 2, 3), keepdims=True)
    images /= images.std(axis=(1, 2, 3), keepdims=True) + 1e-5
    images = np.clip(images * 64 + 128, 0, 255).astype(np.uint8)
    return images, reached.numpy()


def filters(model=None, layer=None, count=16, steps=30, out=None):
    """Writes a grid of the patterns that maximise the first `count` filters of a layer."""
    from smallcnn.plots import grid_figure, save_figure
    from smallcnn.predict import load_run

    if not layer:
        raise UsageError("Pass --layer NAME, a conv layer of the base "
                         "(smallcnn visualize activations IMAGE lists some).")
    if count < 1 or steps < 1:
        raise UsageError("--filters and --steps must be at least 1.")
    classifier = load_run(model)
    patterns, reached = filter_patterns(classifier, layer, count, steps)
    folder = _out_dir(classifier, out)
    target = folder / f"filters-{layer}.png"
    save_figure(grid_figure(list(patterns), [f"{i}: {a:.2f}" for i, a in enumerate(reached)],
                            columns=8, title=f"{layer}: inputs that maximise filters 0-"
                                             f"{len(patterns) - 1} (mean activation reached)"),
                target)
    return [Picture(str(target), layer)]
