"""What the layers of a trained model respond to: the feature maps of an image, and the
input patterns that maximise a layer's filters.

    smallcnn visualize activations IMAGE --model RUN [--layer NAME]...
    smallcnn visualize filters --model RUN --layer NAME
"""

from pathlib import Path

import numpy as np

from smallcnn.errors import UsageError
from smallcnn.visualize.common import (
    Picture,
    decode,
    feature_layer,
    feature_layers,
    model_parts,
    out_dir,
)

LAYERS = 4  # conv layers shown without --layer, spread from the first to the last
CHANNELS = 32  # feature maps shown per layer (visualize activations --channels)
FILTERS, FILTER_STEPS = 16, 30  # visualize filters --filters and --steps


def _conv_layers(base):
    """The base's convolutions and activations, in order."""
    return [layer for layer in feature_layers(base) if type(layer).__name__ in
            ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "ReLU", "Activation")]


def default_layers(base, count=LAYERS):
    """`count` conv layers spread evenly from the first to the last (a base without any,
    DINOv2: its layers with maps larger than 1 x 1, such as its patch grid)."""
    layers = [l for l in _conv_layers(base) if type(l).__name__ != "Activation"] or \
        _conv_layers(base) or [l for l in feature_layers(base) if l.output.shape[1] != 1]
    if len(layers) <= count:
        return [l.name for l in layers]
    picks = np.linspace(0, len(layers) - 1, count).round().astype(int)
    return [layers[i].name for i in picks]


def activations(path, model=None, layers=None, channels=CHANNELS, out=None):
    """Writes one grid per layer of the feature maps of one image (each map scaled alone).

    Returns:
        A list of `Picture`, one per layer.
    """
    import keras

    from smallcnn.inference.predict import load_run
    from smallcnn.runtime.plots import grid_figure, save_figure

    classifier = load_run(model)
    preprocess, base, _, _ = model_parts(classifier.model, classifier.config)
    names = list(layers) if layers else default_layers(base)
    chosen = [feature_layer(base, name) for name in names]
    paths, pixels = decode(classifier, [path])
    probe = keras.Model(base.inputs, [layer.output for layer in chosen])
    outputs = probe(preprocess(pixels[:1].astype("float32")), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    folder = out_dir(classifier, out)
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


def filter_patterns(classifier, layer_name, filters=FILTERS, steps=FILTER_STEPS, seed=0):
    """Input patterns that maximise each of the first `filters` filters of a layer, found
    by gradient ascent on the pixels (all filters at once, one image each).

    Returns:
        `(patterns, activations)`: `(filters, size, size, 3)` uint8 images, contrast
        stretched for display, and the mean activation each reached.
    """
    import keras
    import tensorflow as tf

    preprocess, base, _, _ = model_parts(classifier.model, classifier.config)
    layer = feature_layer(base, layer_name)
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


def filters(model=None, layer=None, count=FILTERS, steps=FILTER_STEPS, out=None):
    """Writes a grid of the patterns that maximise the first `count` filters of a layer."""
    from smallcnn.inference.predict import load_run
    from smallcnn.runtime.plots import grid_figure, save_figure

    if not layer:
        raise UsageError("Pass --layer NAME, a conv layer of the base "
                         "(smallcnn visualize activations IMAGE lists some).")
    if count < 1 or steps < 1:
        raise UsageError("--filters and --steps must be at least 1.")
    classifier = load_run(model)
    patterns, reached = filter_patterns(classifier, layer, count, steps)
    folder = out_dir(classifier, out)
    target = folder / f"filters-{layer}.png"
    save_figure(grid_figure(list(patterns), [f"{i}: {a:.2f}" for i, a in enumerate(reached)],
                            columns=8, title=f"{layer}: inputs that maximise filters 0-"
                                             f"{len(patterns) - 1} (mean activation reached)"),
                target)
    return [Picture(str(target), layer)]
