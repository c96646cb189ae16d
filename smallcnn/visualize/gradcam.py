"""Where a trained model looked: Grad-CAM heatmaps.

    smallcnn visualize gradcam IMAGE... --model RUN [--class NAME]

Grad-CAM (Selvaraju et al., 2017) weights each channel of the base's last conv layer
(the registry's `last_conv_layer`) by the mean gradient of the class score (the logit,
before the softmax, so it does not vanish for confident predictions) and keeps the
positive part of the weighted sum.
"""

from pathlib import Path

import numpy as np

from smallcnn.errors import ModelError, UsageError
from smallcnn.model.bases import get_base
from smallcnn.visualize.common import Picture, decode, model_parts, out_dir


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

        self.preprocess, base, self.pool, self.head = model_parts(model, config)
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


def _class_index(classifier, name):
    if name is None:
        return None
    if name not in classifier.class_names:
        raise UsageError(f"--class {name!r} is not one of the model's classes: "
                         f"{', '.join(classifier.class_names)}.")
    return classifier.class_names.index(name)


def gradcam_overlays(classifier, pixels, class_index=None, batch_size=16):
    """Overlays (RGB uint8), heatmaps and probabilities for a batch of pixels."""
    from smallcnn.runtime.plots import overlay

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
    from smallcnn.inference.predict import load_run
    from smallcnn.runtime.plots import grid_figure, save_figure

    classifier = load_run(model)
    index = _class_index(classifier, class_name)
    paths, pixels = decode(classifier, paths)
    overlays, _, probabilities = gradcam_overlays(classifier, pixels, index)
    folder = out_dir(classifier, out)
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


