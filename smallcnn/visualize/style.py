"""Neural style transfer (Gatys et al., 2016): one image's content rendered in another
image's style, by optimising the pixels of the result.

    smallcnn visualize style CONTENT STYLE [--base NAME] [--steps 300] [--size 384]

Content is the feature map of a deep layer (the registry's `content_layer`); style is the
correlations between the channels of several layers (`style_layers`): their Gram
matrices, averaged over positions, so the two images need not have the same size. The
result starts as the content image and minimises

    content_weight * content + style_weight * style + tv_weight * variation

where each term is relative, so that the weights mean the same for every base:
`content` is the squared distance of the content features over their own squared norm
(0 at the start), `style` the mean over the style layers of the squared distance of the
Gram matrices over the style image's (the content image starts near 1), and `variation`
the total variation (mean squared difference of neighbouring pixels) over the content
image's (1 at the start). The optimiser is Adam, one `tf.function` step traced once; it
does not move the pixels themselves but the Fourier coefficients of a change to the
content image, scaled so that coarse structure moves as readily as fine (see `render`).
On the pixels, a MobileNetV2 matched the style's Gram matrices with fine noise and the
painting's colours never came through; through the Fourier coefficients they do.

MobileNetV2's style layers are its batch-norm outputs, before ReLU6 clips them: on the
clipped outputs the result was washed with colours the painting lacks (magenta, red,
green), with halos at the corners (docs/images/style_compare.png). `--smoothing` applies
SWAG (`swag`: Wang, Li & Vasconcelos, CVPR 2021) before the losses; it is off by default,
as on MobileNetV2 and EfficientNet-B0 it faded the strokes and, on EfficientNet's large
activations, drew bursts of colour around a few hot spots. Without --model or --base the
base is VGG19 where Keras' cached weights are (`default_base`).
"""

import dataclasses
from pathlib import Path

import numpy as np

from smallcnn.errors import UsageError
from smallcnn.model.modern import weights_file
from smallcnn.progress import Reporter
from smallcnn.runtime.ranges import Range
from smallcnn.visualize.common import (
    PICTURE_BASE,
    Picture,
    open_backbone,
    picture_of,
    picture_target,
    save_picture,
    to_uint8,
)

# Without --model or --base: VGG19 (the base Gatys et al.'s method was made on) where
# Keras' cached file of its weights is (never downloaded here), else OFFLINE_BASE, whose
# weights ship in the package.
VGG19 = "vgg19"
VGG19_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
             "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
OFFLINE_BASE = PICTURE_BASE
LOSS_TERMS = ("content", "style", "variation")
MARGIN = 8  # the hidden margin of `render`: 1/8 of the longer side
# Adam's moment decay rates and the smallest step denominator
BETAS = (0.9, 0.999)
EPSILON = 1e-8
# The weight of a loss term: each term is relative (about 1 at the start), so a weight
# beyond this only drowns the others, and near float32's top the loss overflows.
WEIGHT = Range(0, 10_000)
WEIGHTS = ("content_weight", "style_weight", "tv_weight")
# SWAG's temperature over each layer's standard deviation (0: off). Below about 0.5 the
# softmax puts a layer's whole weight on its few largest activations.
SMOOTHING = Range(0, 100)


@dataclasses.dataclass(frozen=True)
class StyleSettings:
    """How a style transfer is made (weights: see the module's docstring)."""

    steps: int = 300
    size: int = 384  # the longer side of the result (and of the style image), in pixels
    content_weight: float = 1.0
    style_weight: float = 20.0
    tv_weight: float = 0.2
    learning_rate: float = 0.5  # Adam's step on the Fourier coefficients (see `render`)
    smoothing: float = 0.0  # SWAG's temperature, relative to each layer's spread; 0: off

    def __post_init__(self):
        if self.steps < 1 or self.size < 1:
            raise UsageError(f"--steps and --size must be at least 1. Received: "
                             f"steps={self.steps}, size={self.size}")
        for name in WEIGHTS:
            WEIGHT.check(f"--{name.replace('_', '-')}", getattr(self, name))
        SMOOTHING.check("--smoothing", self.smoothing)
        if self.learning_rate <= 0:
            raise UsageError(f"--learning-rate must be positive. Received: {self.learning_rate}")


@dataclasses.dataclass
class Styled:
    """A style transfer and how it went."""

    image: np.ndarray  # (h, w, 3) uint8: the result
    losses: dict  # "total" and each of LOSS_TERMS (unweighted): the value before each step
    content_layer: str
    style_layers: list

    @property
    def final(self):
        """The last value of each loss."""
        return {name: values[-1] for name, values in self.losses.items()}


def gram(maps):
    """The Gram matrix of `(1, h, w, c)` feature maps: `(c, c)` channel correlations,
    averaged over the h * w positions."""
    import tensorflow as tf

    maps = tf.cast(maps[0], tf.float32)
    flat = tf.reshape(maps, [-1, tf.shape(maps)[-1]])
    return tf.matmul(flat, flat, transpose_a=True) / tf.cast(tf.shape(flat)[0], tf.float32)


def swag(maps, temperature):
    """SWAG's activation smoothing (Wang, Li & Vasconcelos, CVPR 2021, "Rethinking and
    improving the robustness of image style transfer"): the softmax of all of a layer's
    activations (every position and channel together) over `temperature`, here times
    their number, so that its mean is 1 at any image size (the content and style images
    differ in size, and the losses compare their statistics)."""
    import tensorflow as tf

    logits = tf.cast(maps, tf.float32) / temperature
    count = tf.cast(tf.size(logits), tf.float32)
    return tf.exp(logits - tf.reduce_logsumexp(logits) + tf.math.log(count))


def smoothed(maps, temperature):
    """`swag(maps, temperature)` where the temperature is above 0, else `maps`."""
    import tensorflow as tf

    return tf.cond(temperature > 0, lambda: swag(maps, temperature), lambda: maps)


def variation(image):
    """Total variation: the mean squared difference between neighbouring pixels."""
    import tensorflow as tf

    rows = image[:, 1:, :, :] - image[:, :-1, :, :]
    cols = image[:, :, 1:, :] - image[:, :, :-1, :]
    return tf.reduce_mean(tf.square(rows)) + tf.reduce_mean(tf.square(cols))


def spectrum_shape(height, width):
    """The shape of the parameters `render` takes for an image of `height` x `width`."""
    margin = max(height, width) // MARGIN
    return [2, 3, height + 2 * margin, (width + 2 * margin) // 2 + 1]


def render(start, spectrum):
    """`start` plus the change that `spectrum` describes: the real and imaginary parts of
    its 2-D Fourier transform per channel, each frequency scaled by 1 / frequency so that
    a step moves coarse structure as readily as fine (Mordvintsev et al., 2018,
    "Differentiable Image Parameterizations"); clipped to [0, 255]. The transform covers a
    hidden margin around the image, so that the basis wrapping around does not tie
    opposite edges together."""
    import tensorflow as tf

    height, width = tf.shape(start)[1], tf.shape(start)[2]
    margin = tf.maximum(height, width) // MARGIN
    rows, cols = height + 2 * margin, width + 2 * margin
    fy = tf.cast(tf.range(rows), tf.float32)
    fy = tf.minimum(fy, tf.cast(rows, tf.float32) - fy) / tf.cast(rows, tf.float32)
    fx = tf.cast(tf.range(cols // 2 + 1), tf.float32) / tf.cast(cols, tf.float32)
    frequency = tf.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    longest = tf.cast(tf.maximum(rows, cols), tf.float32)
    # A unit coefficient at frequency 0 moves every pixel by one level.
    scale = tf.cast(rows * cols, tf.float32) / longest / tf.maximum(frequency, 1.0 / longest)
    change = tf.signal.irfft2d(tf.complex(spectrum[0] * scale, spectrum[1] * scale),
                               fft_length=[rows, cols])
    change = tf.transpose(change[:, margin:margin + height, margin:margin + width], [1, 2, 0])
    return tf.clip_by_value(start + change[None], 0.0, 255.0)


def _check_finite(values, what):
    """Refuses a style transfer that overflowed: its picture would be black."""
    if not np.all(np.isfinite(values)):
        raise UsageError(f"The style transfer overflowed ({what} is not finite), so its picture "
                         "would be black; use smaller weights or a smaller --learning-rate.")


class StyleTransfer:
    """Gatys et al.'s style transfer on the layers of a `Backbone` (see
    `smallcnn.visualize.common.open_backbone`).

    Example:

        transfer = StyleTransfer(open_backbone(base="mobilenet_v2"))
        styled = transfer(photo_pixels, painting_pixels, StyleSettings(steps=300))
        plt.imshow(styled.image); print(styled.final)

    `features(pixels)` gives the content layer's maps and the style layers' Gram matrices
    of a `(1, h, w, 3)` batch.
    """

    def __init__(self, backbone, content_layer=None, style_layers=None):
        import tensorflow as tf

        self.content_layer = content_layer or backbone.spec.content_layer
        self.style_layers = list(style_layers or backbone.spec.style_layers)
        if not self.content_layer or not self.style_layers:
            raise UsageError(f"The base {backbone.spec.name!r} has no default style and content "
                             "layers; pass --content-layer and --style-layer.")
        probe = backbone.outputs([self.content_layer, *self.style_layers])
        preprocess = backbone.preprocess

        def activations(image):
            return [tf.cast(o, tf.float32) for o in probe(preprocess(image), training=False)]

        def features(image, temperatures=None):
            """The content maps and the style Gram matrices; each layer smoothed (`swag`)
            where its temperature is above 0."""
            outputs = activations(image)
            if temperatures is not None:
                outputs = [smoothed(maps, t) for maps, t in zip(outputs, tf.unstack(temperatures))]
            return outputs[0], [gram(maps) for maps in outputs[1:]]

        self.activations = tf.function(activations)
        self.features = tf.function(features)
        temperatures = tf.TensorSpec([1 + len(self.style_layers)], tf.float32)
        pixels = tf.TensorSpec([1, None, None, 3], tf.float32)
        content_maps = tf.TensorSpec(probe.outputs[0].shape, tf.float32)
        grams = [tf.TensorSpec([maps.shape[-1]] * 2, tf.float32) for maps in probe.outputs[1:]]
        scalar = tf.TensorSpec([], tf.float32)
        spectra = tf.TensorSpec([2, 3, None, None], tf.float32)

        @tf.function(input_signature=[pixels, spectra, spectra, spectra, scalar, content_maps,
                                      grams, scalar, tf.TensorSpec([3], tf.float32), scalar,
                                      temperatures])
        def step(start, spectrum, first, second, count, content_target, style_targets,
                 content_variation, weights, learning_rate, temperatures):
            with tf.GradientTape() as tape:
                tape.watch(spectrum)
                image = render(start, spectrum)
                maps, image_grams = features(image, temperatures)
                content = tf.reduce_sum(tf.square(tf.cast(maps, tf.float32) - content_target)) / \
                    tf.maximum(tf.reduce_sum(tf.square(content_target)), 1e-12)
                style = tf.add_n([
                    tf.reduce_sum(tf.square(g - target)) /
                    tf.maximum(tf.reduce_sum(tf.square(target)), 1e-12)
                    for g, target in zip(image_grams, style_targets)]) / len(style_targets)
                tv = variation(image) / tf.maximum(content_variation, 1e-12)
                terms = tf.stack([content, style, tv])
                total = tf.reduce_sum(weights * terms)
            gradient = tape.gradient(total, spectrum)
            first = BETAS[0] * first + (1 - BETAS[0]) * gradient
            second = BETAS[1] * second + (1 - BETAS[1]) * tf.square(gradient)
            corrected = learning_rate * tf.sqrt(1 - BETAS[1] ** count) / (1 - BETAS[0] ** count)
            spectrum = spectrum - corrected * first / (tf.sqrt(second) + EPSILON)
            return total, terms, spectrum, first, second

        self.step = step
        self.render = tf.function(render, input_signature=[pixels, spectra])
        self.spec = backbone.spec

    def temperatures(self, content, style, smoothing):
        """Each layer's SWAG temperature: `smoothing` times the standard deviation of its
        activations (the content layer's on `content`, the style layers' on `style`), so
        that one setting means the same on every layer of every base; all 0 when off."""
        import tensorflow as tf

        spreads = [self.activations(content)[0], *self.activations(style)[1:]]
        return tf.stack([smoothing * tf.maximum(tf.math.reduce_std(maps), 1e-6)
                         for maps in spreads])

    def __call__(self, content, style, settings=StyleSettings(), progress=None):
        """Renders `content` in the style of `style`, both `(h, w, 3)` RGB pixels in
        [0, 255], at their sizes.

        Args:
            settings: a `StyleSettings` (its `size` is not used here).
            progress: an optional callable, called with the number of steps done.

        Returns:
            A `Styled`.
        """
        import tensorflow as tf

        for name, pixels in (("content", content), ("style", style)):
            if min(np.shape(pixels)[:2]) < self.spec.min_size:
                raise UsageError(
                    f"The {name} image is {np.shape(pixels)[1]}x{np.shape(pixels)[0]} pixels, "
                    f"smaller than {self.spec.name!r} takes ({self.spec.min_size}); use a "
                    "larger --size.")
        image = tf.convert_to_tensor(np.asarray(content, dtype=np.float32)[None])
        painting = tf.convert_to_tensor(np.asarray(style, dtype=np.float32)[None])
        temperatures = self.temperatures(image, painting, settings.smoothing)
        content_target, _ = self.features(image, temperatures)
        _, style_targets = self.features(painting, temperatures)
        content_variation = variation(image)
        weights = tf.constant([settings.content_weight, settings.style_weight,
                               settings.tv_weight], tf.float32)
        rate = tf.constant(settings.learning_rate, tf.float32)
        height, width = image.shape[1:3]
        spectrum = first = second = tf.zeros(spectrum_shape(height, width), tf.float32)
        losses = {name: [] for name in ("total", *LOSS_TERMS)}
        for count in range(1, settings.steps + 1):
            total, terms, spectrum, first, second = self.step(
                image, spectrum, first, second, tf.constant(count, tf.float32),
                tf.cast(content_target, tf.float32), style_targets, content_variation, weights,
                rate, temperatures)
            _check_finite(float(total), f"its loss at step {count}")
            losses["total"].append(float(total))
            for name, value in zip(LOSS_TERMS, terms.numpy()):
                losses[name].append(float(value))
            if progress is not None:
                progress(count)
        image = self.render(image, spectrum).numpy()[0]
        _check_finite(image, "its picture")
        return Styled(to_uint8(image), losses, self.content_layer, self.style_layers)


def default_base():
    """`(base, weights, line)`: the base of a style transfer given no --model, --base or
    --weights, its weights and one line that says which and why."""
    cached = weights_file(VGG19_URL).expanduser()
    if cached.is_file():
        return VGG19, str(cached), f"Style transfer on {VGG19}: Keras' cached weights {cached}."
    return OFFLINE_BASE, None, (f"Style transfer on {OFFLINE_BASE} (its weights ship in the "
                                f"package); put VGG19's weights at {cached} to use {VGG19}.")


def open_style_backbone(model=None, base=None, weights=None):
    """`(backbone, line)`: `open_backbone`'s, or `default_base()`'s with its line (None
    when a model, base or weights were given)."""
    if model is None and base is None and weights is None:
        base, weights, line = default_base()
        return open_backbone(base=base, weights=weights), line
    return open_backbone(model, base, weights), None


def style_transfer(content, style, model=None, base=None, weights=None, content_layer=None,
                   style_layers=None, **settings):
    """The content image rendered in the style of the style image (files, or `(h, w, 3)`
    RGB arrays).

    Args:
        model: a run folder whose (fine-tuned) base supplies the features; or
        base: a registry base, with `weights` ('imagenet', or a weights file); without
            either, `default_base()`'s.
        content_layer, style_layers: default the registry's, for the base.
        **settings: fields of `StyleSettings` (steps, size, content_weight,
            style_weight, tv_weight, learning_rate, smoothing).

    Returns:
        The result as an `(h, w, 3)` uint8 RGB array, the content image's shape.
    """
    settings = StyleSettings(**settings)
    backbone, _ = open_style_backbone(model, base, weights)
    transfer = StyleTransfer(backbone, content_layer, style_layers)
    return transfer(picture_of(content, settings.size), picture_of(style, settings.size),
                    settings).image


def write_style(content, style, out=None, model=None, base=None, weights=None,
                content_layer=None, style_layers=None, reporter=Reporter(), **settings):
    """`smallcnn visualize style`: writes the style transfer (default
    `<content>-in-<style>.png` in the current folder).

    Returns:
        `(pictures, styled)`: the `Picture` written and the `Styled`.
    """
    settings = StyleSettings(**settings)
    target = picture_target(out, f"{Path(content).stem}-in-{Path(style).stem}.png",
                            [content, style])
    content_pixels = picture_of(content, settings.size)
    style_pixels = picture_of(style, settings.size)
    backbone, line = open_style_backbone(model, base, weights)
    if line:
        reporter.note(line)
    transfer = StyleTransfer(backbone, content_layer, style_layers)
    with reporter.progress(f"style transfer ({backbone.source})", settings.steps) as advance:
        styled = transfer(content_pixels, style_pixels, settings, advance)
    return [Picture(save_picture(styled.image, target), str(content))], styled
