"""The frozen base's pooled features of each split, computed once and cached on disk.

An entry is named by the base, its weights, the image size, and the content (SHA-1,
from the check that starts every run) and label of every file of the split, so a
second `extract` over the same images skips decoding and the base entirely, even
from a copy of the data in another folder; a file whose content changed is never
served stale features.
"""

import json
import time

import numpy as np

from smallcnn.runtime import cache


def features_key(session, split, view=None):
    """The cache key of a split's features (or of one augmented view), or None with
    random base weights (they differ each run: nothing to reuse)."""
    if session.weights == "none":
        return None
    s = session.settings
    files = [[session.check.digests.get(path), int(label)]
             for path, label in zip(split.paths, split.labels)]
    augmentation = None
    if view is not None:
        import dataclasses

        augmentation = [dataclasses.asdict(s.augmentation()), s.seed, view]
    # Features computed in mixed precision differ in the third digit: kept apart (float32's
    # keys are as they were before precisions existed).
    precision = session.placement.precision
    mixed = {"precision": precision} if precision != "float32" else {}
    return cache.key("features", base=session.spec.name, preprocessing=session.spec.preprocessing,
                     weights=cache.weights_identity(session.weights), image_size=s.image_size,
                     files=files, augmentation=augmentation, **mixed)


def is_cached(session, name):
    """Whether the features of split `name` are in the cache."""
    key = features_key(session, session.dataset.splits[name])
    return key is not None and cache.is_stored("features", f"{key}.npz")


def _read(path):
    with np.load(path, allow_pickle=False) as data:
        return (data["features"], data["labels"], json.loads(str(data["skipped"])))


def load(key, warn=None):
    """`(features, labels, skipped)` from the cache, or None."""
    return None if key is None else cache.load("features", f"{key}.npz", _read, warn=warn)


def store(key, features, labels, skipped, warn=None):
    if key is None:
        return

    def write(temp):
        with open(temp, "wb") as f:
            np.savez(f, features=features, labels=labels,
                     skipped=np.asarray(json.dumps(skipped)))

    cache.store("features", f"{key}.npz", write, warn=warn)


def split_features(session, name):
    """`(features, labels)` of one split: from the cache, or through the base's engine."""
    from smallcnn.runtime.engine import compute_features

    split = session.dataset.splits[name]
    key = features_key(session, split)
    cached = load(key, session.reporter.warning)
    if cached is not None:
        values, labels, skipped = cached
        session.skipped.update((path, reason) for path, reason in skipped)
        session.reporter.note(f"{name}: {len(values)} feature vectors from the cache")
        return values, np.asarray(labels, dtype=np.int32)
    decoded = session.decoded(name)
    engine = session.engine()
    started = time.perf_counter()
    with session.reporter.progress(f"Extracting {name} features ({engine.name})",
                                   len(decoded)) as advance, session.timings("base"):
        values = compute_features(engine, decoded.images, progress=advance)
    session.base_seconds += time.perf_counter() - started
    session.base_images += len(decoded)
    store(key, values, decoded.labels, [[f.path, f.reason] for f in decoded.skipped],
          session.reporter.warning)
    return values, np.asarray(decoded.labels, dtype=np.int32)


def augmented_views(session, count):
    """Base features of `count` augmented copies of each training image (cached).

    Each view is one pass over the training images with the run's augmentation and its
    own seed, so the same settings give the same views, and a cache hit.
    """
    import tensorflow as tf

    from smallcnn.data.augment import build_augmenter

    s = session.settings
    views = []
    for view in range(count):
        key = features_key(session, session.dataset.train, view)
        cached = load(key, session.reporter.warning)
        if cached is not None:
            views.append(cached[0])
            session.reporter.note(f"train: augmented view {view + 1} from the cache")
            continue
        decoded = session.decoded("train")
        engine = session.engine()
        augmenter = build_augmenter(s.augmentation(), seed=s.seed * 1000 + view)
        started = time.perf_counter()
        with session.reporter.progress(f"Extracting augmented view {view + 1}/{count} "
                                       f"({engine.name})", len(decoded)) as advance, \
                session.timings("base"):
            values = []
            for batch, start in enumerate(range(0, len(decoded), 32)):
                pixels = tf.cast(decoded.images[start : start + 32], tf.float32)
                values.append(engine(augmenter(pixels, batch).numpy()))
                advance(start + len(values[-1]))
            values = np.concatenate(values)
        session.base_seconds += time.perf_counter() - started
        session.base_images += len(decoded)
        store(key, values, decoded.labels, [], session.reporter.warning)
        views.append(values)
    return views
