"""From a checked list of files to batches for Keras: decode once, then tf.data.

Each image is decoded and resized once (in parallel threads) into a uint8 array that
stays in memory for every later epoch; above a memory budget the array lives in a
file on disk (a memmap) instead. tf.data then shuffles indices, gathers batches,
augments whole batches and prefetches.
"""

import dataclasses
import tempfile

import numpy as np

from smallcnn.errors import DataError
from smallcnn.runtime.ranges import Range, from_environment

# Decoded images above this many GiB ($SMALLCNN_MEMORY_BUDGET_GB) go to an on-disk array
# instead of memory.
DEFAULT_MEMORY_BUDGET_GB = 4
MEMORY_BUDGET_GB = Range(0, 2**20)


def default_memory_budget():
    """`$SMALLCNN_MEMORY_BUDGET_GB` (default 4) in bytes."""
    return int(from_environment("SMALLCNN_MEMORY_BUDGET_GB", DEFAULT_MEMORY_BUDGET_GB,
                                MEMORY_BUDGET_GB) * 2**30)


@dataclasses.dataclass
class DecodedSplit:
    name: str
    images: np.ndarray  # (n, size, size, 3) uint8, in memory or a memmap
    labels: np.ndarray  # (n,) int32
    paths: list
    skipped: list  # UnreadableImage errors for the files left out

    def __len__(self):
        return len(self.paths)


def decode_split(split, image_size, reporter, memory_budget=None):
    """Decodes every image of a `data.Split`, leaving out (and reporting) unreadable ones;
    beyond `memory_budget` bytes (default: the variable's), into a file on disk."""
    from smallcnn.data.images import load_images

    if memory_budget is None:
        memory_budget = default_memory_budget()
    n = len(split.paths)
    needed = n * image_size * image_size * 3
    out = None
    if needed > memory_budget:
        handle = tempfile.NamedTemporaryFile(prefix="smallcnn-images-", suffix=".u8")
        out = np.memmap(handle, dtype=np.uint8, mode="w+", shape=(n, image_size, image_size, 3))
        reporter.note(
            f"{split.name}: {needed / 2**30:.1f} GiB of decoded images exceed the memory "
            f"budget of {memory_budget / 2**30:.1f} GiB; caching them on disk instead."
        )
    with reporter.progress(f"Decoding {split.name} images", n) as advance:
        images, failures = load_images(split.paths, image_size, out=out, progress=advance)
    if failures:
        for failure in failures:
            reporter.warning(f"Skipping {failure.path}: {failure.reason}.")
        bad = {f.path for f in failures}
        keep = [i for i, p in enumerate(split.paths) if p not in bad]
        for row, index in enumerate(keep):  # compact in place: no copy of a large array
            images[row] = images[index]
        images = images[: len(keep)]
        split = split.without(bad)
        if len(split) == 0:
            raise DataError(f"No image in the {split.name} split could be read.")
    return DecodedSplit(split.name, images, split.labels, split.paths, failures)


def batches(images, labels, batch_size, shuffle=False, seed=None, augmenter=None,
            repeat=False):
    """A tf.data pipeline of `(float32 pixels in [0, 255], int32 labels)` batches,
    prepared in parallel threads ahead of use (for Keras' `fit` and `evaluate`; the frozen
    base's stream is `keras_loop._augmented_features`, which takes turns with the engine).

    Args:
        images: `(n, size, size, 3)` uint8 array, decoded once.
        labels: `(n,)` int class indices.
        batch_size: images per batch.
        shuffle: reshuffle the order every epoch.
        seed: seeds the shuffle.
        augmenter: an optional function applied to each training batch and its number
            (see `smallcnn.data.augment.build_augmenter`).
        repeat: go on forever, reshuffled each epoch (one iterator for a whole run:
            destroying a tf.data iterator at each epoch's end stalled for 8-10 s in
            about one epoch in two, measured on cats-dogs-small).
    """
    import tensorflow as tf

    n, height, width, channels = images.shape
    labels = np.asarray(labels, dtype=np.int32)

    def gather(index):
        index = np.asarray(index)
        return np.asarray(images[index]), labels[index]

    def load(index):
        x, y = tf.numpy_function(gather, [index], (tf.uint8, tf.int32), stateful=False)
        x.set_shape((None, height, width, channels))
        y.set_shape((None,))
        return tf.cast(x, tf.float32), y

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:  # numbered after repeat: each epoch draws anew
        ds = ds.enumerate().map(lambda i, batch: (augmenter(batch[0], i), batch[1]),
                                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
