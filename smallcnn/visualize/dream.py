"""DeepDream (Mordvintsev et al., 2015): what a convnet sees in a photo, made visible by
gradient ascent on the photo's pixels to maximise the activations of whole layers.

    smallcnn visualize dream IMAGE [--model RUN | --base NAME] [--layer NAME]...

The recipe is the Keras example's (keras-io examples/generative/deep_dream.py): the
objective is the mean squared activation of the chosen layers (borders left out); the
ascent runs octave by octave, from the photo shrunk by `octave_scale ** (octaves - 1)`
up to its full size, and the detail that shrinking lost is put back after each upscale.
Each step moves the pixels along the gradient normalised to a mean magnitude of one;
the photo is shifted by a random offset first (up to JITTER pixels and 1/8 of its sides;
shifted back after), so that the stride of the base does not print a grid on it (the
TensorFlow tutorial's random roll).
"""

import dataclasses
from pathlib import Path

import numpy as np

from smallcnn.errors import UsageError
from smallcnn.progress import Reporter
from smallcnn.visualize.common import (
    Picture,
    open_backbone,
    picture_of,
    picture_target,
    save_picture,
    to_uint8,
)

# Pixel units of `step_size`: the Keras example's step of 0.01 is in pixels scaled to
# [-1, 1]; here pixels are in [0, 255].
HALF_RANGE = 127.5
JITTER = 32  # the largest random shift, in pixels, before each step
BORDER = 2  # activations this close to the edge are left out of the objective


@dataclasses.dataclass(frozen=True)
class DreamSettings:
    """How a dream is made; the defaults are the Keras example's."""

    octaves: int = 3  # scales, each `octave_scale` times the one before
    octave_scale: float = 1.4
    steps: int = 20  # gradient ascent steps per octave
    step_size: float = 0.01  # the mean change of a pixel per step, in half pixel ranges
    size: int = 512  # the longer side of the image at the last octave, in pixels
    seed: int = 0  # of the random shifts

    def __post_init__(self):
        if self.octaves < 1 or self.steps < 1 or self.size < 1:
            raise UsageError(f"--octaves, --steps and --size must be at least 1. Received: "
                             f"octaves={self.octaves}, steps={self.steps}, size={self.size}")
        if self.octave_scale <= 1:
            raise UsageError(f"--octave-scale must be above 1 (each octave this much larger). "
                             f"Received: {self.octave_scale}")
        if self.step_size <= 0:
            raise UsageError(f"--step-size must be positive. Received: {self.step_size}")


@dataclasses.dataclass
class Dream:
    """A dream and how it came about."""

    image: np.ndarray  # (h, w, 3) uint8: the result
    octaves: list  # (h_i, w_i, 3) uint8: the image at the end of each octave, small to full
    objective: list  # per octave, the objective before each step
    layers: list  # the layers whose activations were maximised


class DeepDream:
    """Gradient ascent on an image's pixels to maximise the activations of `layers` of a
    `Backbone` (see `smallcnn.visualize.common.open_backbone`).

    The step is one `tf.function` traced once for images of any size.

    Example:

        dreamer = DeepDream(open_backbone(base="mobilenet_v2"))
        dream = dreamer(photo_pixels, DreamSettings(octaves=3))
        plt.imshow(dream.image)
    """

    def __init__(self, backbone, layers=None):
        import tensorflow as tf

        self.layers = list(layers or backbone.spec.dream_layers)
        if not self.layers:
            raise UsageError(f"The base {backbone.spec.name!r} has no default dream layers; "
                             "pass --layer NAME.")
        probe = backbone.outputs(self.layers)
        preprocess = backbone.preprocess
        pixels = tf.TensorSpec([1, None, None, 3], tf.float32)

        def objective(image):
            outputs = probe(preprocess(image), training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            total = 0.0
            for maps in outputs:
                height, width = tf.shape(maps)[1], tf.shape(maps)[2]
                rows = tf.minimum(BORDER, (height - 1) // 2)
                cols = tf.minimum(BORDER, (width - 1) // 2)
                inner = maps[:, rows:height - rows, cols:width - cols, :]
                total += tf.reduce_mean(tf.square(tf.cast(inner, tf.float32)))
            return total / len(outputs)

        @tf.function(input_signature=[pixels, tf.TensorSpec([], tf.float32),
                                      tf.TensorSpec([2], tf.int32)])
        def step(image, step_size, shift):
            shifted = tf.roll(image, shift, axis=[1, 2])
            with tf.GradientTape() as tape:
                tape.watch(shifted)
                value = objective(shifted)
            gradient = tf.roll(tape.gradient(value, shifted), -shift, axis=[1, 2])
            gradient /= tf.maximum(tf.reduce_mean(tf.abs(gradient)), 1e-8)
            return value, tf.clip_by_value(image + step_size * HALF_RANGE * gradient, 0.0, 255.0)

        self.step = step
        self.objective = tf.function(objective, input_signature=[pixels])
        self.spec = backbone.spec

    def __call__(self, pixels, settings=DreamSettings(), progress=None):
        """Dreams on `(h, w, 3)` RGB pixels in [0, 255] (float or uint8), at their size.

        Args:
            settings: a `DreamSettings` (its `size` is not used here).
            progress: an optional callable, called with the number of steps done.

        Returns:
            A `Dream`.
        """
        import tensorflow as tf

        rng = np.random.default_rng(settings.seed)
        step_size = tf.constant(settings.step_size, tf.float32)
        original = tf.convert_to_tensor(np.asarray(pixels, dtype=np.float32)[None])
        full = np.array(original.shape[1:3])
        shapes = [tuple(np.maximum(1, np.round(full / settings.octave_scale ** i)).astype(int))
                  for i in reversed(range(settings.octaves))]
        if min(shapes[0]) < self.spec.min_size:
            raise UsageError(
                f"The first octave would be {shapes[0][1]}x{shapes[0][0]} pixels, smaller than "
                f"{self.spec.name!r} takes ({self.spec.min_size}); use a larger --size or fewer "
                "--octaves.")
        image = shrunk = tf.image.resize(original, shapes[0])
        frames, traces, done = [], [], 0
        for index, shape in enumerate(shapes):
            if index:  # upscale, then put back what the smaller copy lost
                image = tf.image.resize(image, shape)
                same_size = tf.image.resize(original, shape)
                image += same_size - tf.image.resize(shrunk, shape)
                shrunk = same_size
            trace = []
            for _ in range(settings.steps):
                jitter = np.minimum(JITTER, np.array(shape) // 8)
                shift = tf.constant(rng.integers(-jitter, jitter + 1), tf.int32)
                value, image = self.step(image, step_size, shift)
                trace.append(float(value))
                done += 1
                if progress is not None:
                    progress(done)
            traces.append(trace)
            frames.append(to_uint8(image.numpy()[0]))
        return Dream(frames[-1], frames, traces, self.layers)


def dream(image, model=None, base=None, weights=None, layers=None, **settings):
    """DeepDream of an image file (or an `(h, w, 3)` RGB array).

    Args:
        model: a run folder whose (fine-tuned) base dreams; or
        base: a registry base (default mobilenet_v2, with its shipped ImageNet weights),
            with `weights` ('imagenet', or a weights file).
        layers: base layers whose activations are maximised; default the registry's
            `dream_layers` of the base.
        **settings: fields of `DreamSettings` (octaves, octave_scale, steps, step_size,
            size, seed).

    Returns:
        The dream as an `(h, w, 3)` uint8 RGB array.
    """
    settings = DreamSettings(**settings)
    pixels = picture_of(image, settings.size)
    return DeepDream(open_backbone(model, base, weights), layers)(pixels, settings).image


def write_dream(image, out=None, frames=False, model=None, base=None, weights=None,
                layers=None, reporter=Reporter(), **settings):
    """`smallcnn visualize dream`: writes the dream of an image file (default
    `<image>-dream.png` in the current folder) and, with `frames`, the image at the end of
    each octave beside it.

    Returns:
        `(pictures, dream)`: the `Picture`s written (the dream first) and the `Dream`.
    """
    settings = DreamSettings(**settings)
    target = picture_target(out, f"{Path(image).stem}-dream.png", [image])
    pixels = picture_of(image, settings.size)
    backbone = open_backbone(model, base, weights)
    dreamer = DeepDream(backbone, layers)
    with reporter.progress(f"dreaming ({backbone.source})",
                           settings.octaves * settings.steps) as advance:
        result = dreamer(pixels, settings, advance)
    pictures = [Picture(save_picture(result.image, target), str(image))]
    if frames:
        for index, frame in enumerate(result.octaves, start=1):
            path = target.with_name(f"{target.stem}-octave{index}{target.suffix}")
            pictures.append(Picture(save_picture(frame, path), str(image)))
    return pictures, result
