"""The images and the frozen base's features of a run's data set: `FeatureSource`.

Each image is decoded once and each split's pooled features computed once per run, and
the features are cached on disk. An entry is named by the base, its weights, the image
size, and the content (SHA-1, from the check that starts every run) and label of every
file of the split, so a second `extract` over the same images skips decoding and the
base entirely, even from a copy of the data in another folder; a file whose content
changed is never served stale features.
"""

import contextlib
import dataclasses
import json
import time

import numpy as np

from smallcnn.runtime import cache

AUGMENT_BATCH = 32  # images augmented and run through the base at a time, for a view


def seed_keras(seed):
    """Imports TensorFlow (quietly) and seeds Keras, NumPy and Python."""
    from smallcnn.runtime.quiet import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)


def features_key(plan, digests, split, view=None, engine=None, precision=None):
    """The cache key of a split's features (or of one augmented view), or None with
    random base weights (they differ each run: nothing to reuse). `digests`: {path:
    SHA-1} from the data check; `engine`: `(name, precision)` of the engine that computes
    them (default: the one the plan's settings choose in OpenVINO's `precision`,
    `engine.expected_engine`)."""
    from smallcnn.runtime.engine import expected_engine

    if plan.weights == "none":
        return None
    s = plan.settings
    files = [[digests.get(path), int(label)] for path, label in zip(split.paths, split.labels)]
    augmentation = None
    if view is not None:
        augmentation = [dataclasses.asdict(s.augmentation()), s.seed, view]
    # Features computed in mixed precision differ in the third digit: kept apart (float32's
    # keys are as they were before precisions existed).
    placed = plan.placement.precision
    mixed = {"precision": placed} if placed != "float32" else {}
    return files_key(plan.spec, plan.weights, s.image_size, files,
                     engine or expected_engine(s.engine, plan.placement, _conversion(plan),
                                               precision),
                     augmentation=augmentation, **mixed)


def _conversion(plan):
    """The base's cached LiteRT conversion, whose race record says what auto runs."""
    from smallcnn.runtime.litert import base_conversion

    return base_conversion(plan.spec, plan.weights, plan.settings.image_size)


def files_key(spec, weights, image_size, files, engine, **extra):
    """The cache key of the base's features of `files` ([[SHA-1, label]]) computed by
    `engine` `(name, precision)`, or None with random weights; `extra` describes more
    (a view's augmentation, a precision). A split's key (`features_key`) and a pool's
    (`suggest`) alike."""
    if weights == "none":
        return None
    # OpenVINO's features (bf16 differs in the third digit) are kept apart, by precision
    # and version; LiteRT's and TensorFlow's float32 keys are as they were before it.
    from smallcnn.runtime.engine import engine_identity

    return cache.key("features", base=spec.name, preprocessing=spec.preprocessing,
                     weights=cache.weights_identity(weights), image_size=image_size,
                     files=files, **extra, **engine_identity(*engine))


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


class FeatureSource:
    """Decoded images and base features of a run's splits, each made once; the base and
    its inference engine, prepared on first need (in a helper process where that
    overlaps reading the images: `start_warmup`).

    `skipped` is {path: reason} of the unreadable images left out so far. Besides the
    data set's splits, it serves images without labels (`add_unlabeled`) the same way.
    `features` are what a head reads (`head_input`: the last layer's features unless a
    run chose its intermediate taps too, `smallcnn.model.taps`); `raw_features` and
    `augmented_views` the extractor's whole output.
    """

    def __init__(self, plan, reporter, timings, precision=None):
        self.plan, self.reporter, self.timings = plan, reporter, timings
        self.precision = precision  # OpenVINO's, where it runs the base (None: the CPU's best)
        from smallcnn.model.taps import HeadInput

        self.skipped = {}
        self.head_input = HeadInput.of(plan.spec)
        self.base = self.extractor = None
        self._digests = {}
        self._decoded = {}
        self._features = {}
        self._unlabeled = {}  # name -> Split of images without labels (labels -1)
        self._engine = None
        self._float32 = None  # the base in float32 for close calls (`float32_features`)
        self._warmup = None  # a helper process preparing the base (see `start_warmup`)
        self._base_seconds = 0.0  # time in the base's forward pass
        self._base_images = 0

    def use_check(self, check):
        """The data check's findings: the files' digests (they name cached features) and
        the unreadable files (left out)."""
        self._digests = check.digests
        self.skipped.update((bad["path"], bad["reason"]) for bad in check.unreadable)

    def add_unlabeled(self, split, digests):
        """Images without labels, served as a split named `split.name` (its labels all -1):
        their features computed through the same engine, and cached under `digests`
        ({path: SHA-1}, from their check) as a split's are."""
        self._unlabeled[split.name] = split
        self._digests.update(digests)

    def split(self, name):
        """The split `name`: the data set's, or images added by `add_unlabeled`."""
        if name in self._unlabeled:
            return self._unlabeled[name]
        return self.plan.dataset.splits[name]

    def decoded(self, name, shard=None):
        """The decoded images of one split (decoded on first use only); with `shard`,
        `(index, count)`, of every count-th image from the index-th only (a worker's)."""
        from smallcnn.data.pipeline import decode_split

        key = name if shard is None else (name, *shard)
        if key not in self._decoded:
            split = self.split(name)
            if shard is not None:
                index, count = shard
                split = split.without(set(split.paths) - set(split.paths[index::count]))
            with self.timings("decode"):
                decoded = decode_split(split, self.plan.settings.image_size, self.reporter)
            self.skipped.update((f.path, f.reason) for f in decoded.skipped)
            self._decoded[key] = decoded
        return self._decoded[key]

    def key(self, name):
        """The cache key of split `name`'s features (see `features_key`)."""
        return features_key(self.plan, self._digests, self.split(name),
                            precision=self.precision)

    def is_cached(self, name):
        """Whether the features of split `name` are in the cache."""
        key = features_key(self.plan, self._digests, self.split(name),
                            precision=self.precision)
        return key is not None and cache.is_stored("features", f"{key}.npz")

    def features(self, name):
        """`(features, labels)` of one split as the head reads them (`head_input`)."""
        values, labels = self.raw_features(name)
        return self.head_input(values), labels

    def float32_features(self, name, rows):
        """The head's input for `rows` of split `name` (row indices of `features(name)`),
        from the base's cached conversion in float32 (`second_look.Float32Engine`, opened
        once): what `inference.second_look` runs a bf16 run's close calls on. Their images
        are the split's decoded ones where this run decoded it, else read again."""
        from smallcnn.data.images import load_images
        from smallcnn.inference.second_look import Float32Engine
        from smallcnn.runtime.litert import base_conversion

        decoded = self._decoded.get(name)  # its rows are the features' rows
        if decoded is not None:
            images = decoded.images[rows]
        else:
            skipped = set(self.skipped)
            paths = [path for path in self.split(name).paths if path not in skipped]
            images, _ = load_images([paths[row] for row in rows], self.plan.settings.image_size)
        if self._float32 is None:
            size = self.plan.settings.image_size
            self._float32 = Float32Engine(base_conversion(self.plan.spec, self.plan.weights,
                                                          size), self.reporter.warning)
        return self.head_input(self._float32(images))

    def raw_features(self, name):
        """`(features, labels)` of one split, the extractor's whole output: computed once,
        from the cache or the base."""
        if name not in self._features:
            self._features[name] = self._split_features(name)
        return self._features[name]

    def _split_features(self, name):
        from smallcnn.runtime.engine import compute_features

        key = features_key(self.plan, self._digests, self.split(name),
                            precision=self.precision)
        cached = load(key, self.reporter.warning)
        if cached is not None:
            values, labels, skipped = cached
            self.skipped.update((path, reason) for path, reason in skipped)
            self.reporter.note(f"{name}: {len(values)} feature vectors from the cache")
            return values, np.asarray(labels, dtype=np.int32)
        decoded = self.decoded(name)
        engine = self.engine()
        with self.reporter.progress(f"Extracting {name} features ({engine.name})",
                                    len(decoded)) as advance, self._through_base(len(decoded)):
            values = compute_features(engine, decoded.images, progress=advance)
        key = key and self._key_of_engine(key, lambda identity: features_key(
            self.plan, self._digests, self.split(name), engine=identity))
        store(key, values, decoded.labels, [[f.path, f.reason] for f in decoded.skipped],
              self.reporter.warning)
        return values, np.asarray(decoded.labels, dtype=np.int32)

    def augmented_views(self, count, engine=None, rekey=None):
        """Base features of `count` augmented copies of each training image (cached; the
        extractor's whole output, as `raw_features`).

        Each view is one pass over the training images with the run's augmentation and its
        own seed, so the same settings give the same views, and a cache hit. `engine`
        (default: the base's) computes them; `rekey` names their cache entries after the
        base's features' keys (another engine's outputs: fine-tuning's cut, `train.cut`).
        """
        views = []
        for view in range(count):
            key = features_key(self.plan, self._digests, self.plan.dataset.train, view,
                                   precision=self.precision)
            key = key if rekey is None else rekey(key)
            cached = load(key, self.reporter.warning)
            if cached is not None:
                views.append(cached[0])
                self.reporter.note(f"train: augmented view {view + 1} from the cache")
                continue
            decoded = self.decoded("train")
            values = self._augmented_view(decoded, view, count, engine)
            if rekey is None:  # (a rekeyed entry's key names its engine itself)
                key = key and self._key_of_engine(key, lambda identity: features_key(
                    self.plan, self._digests, self.plan.dataset.train, view, identity))
            store(key, values, decoded.labels, [], self.reporter.warning)
            views.append(values)
        return views

    def _augmented_view(self, decoded, view, count, engine=None):
        import tensorflow as tf

        from smallcnn.data.augment import build_augmenter

        s = self.plan.settings
        engine = engine or self.engine()
        augmenter = build_augmenter(s.augmentation(), seed=s.seed * 1000 + view)
        values = []
        with self.reporter.progress(f"Extracting augmented view {view + 1}/{count} "
                                    f"({engine.name})", len(decoded)) as advance, \
                self._through_base(len(decoded)):
            for batch, start in enumerate(range(0, len(decoded), AUGMENT_BATCH)):
                pixels = tf.cast(decoded.images[start : start + AUGMENT_BATCH], tf.float32)
                values.append(engine(augmenter(pixels, batch).numpy()))
                advance(start + len(values[-1]))
        return np.concatenate(values)

    @contextlib.contextmanager
    def _through_base(self, count):
        """Times the base's forward pass over `count` images (metrics' images per second)."""
        started = time.perf_counter()
        with self.timings("base"):
            yield
        self._base_seconds += time.perf_counter() - started
        self._base_images += count

    def base_images_per_second(self):
        return round(self._base_images / self._base_seconds, 1) if self._base_seconds else None

    def engine_name(self):
        return self._engine.name if self._engine is not None else None

    def engine_precision(self):
        return getattr(self._engine, "precision", None)

    def engine_used(self):
        """`(name, precision)` of the engine of the features: the one that ran, else the
        one the settings choose (all came from the cache)."""
        from smallcnn.runtime.engine import expected_engine

        if self._engine is not None:
            return self.engine_name(), self.engine_precision()
        return expected_engine(self.plan.settings.engine, self.plan.placement,
                               _conversion(self.plan), self.precision)

    def _key_of_engine(self, key, key_for):
        """The key of features computed now: `key_for((name, precision))` of the engine
        that ran, which `key` (the expected engine's, known before opening it) may not name
        (auto fell back, or its first race picked LiteRT), so no features are cached under
        another engine's name."""
        return key_for((self.engine_name(), self.engine_precision()))

    def build_base(self):
        """Builds the base (and its feature extractor) with the plan's weights."""
        from smallcnn.model.bases import build_base

        s = self.plan.settings
        with self.timings("import"):
            seed_keras(s.seed)  # before Keras is first imported, to import TensorFlow quietly
            from smallcnn.model.networks import feature_extractor
        with self.timings("build"):
            self.base = build_base(self.plan.spec, s.image_size, self.plan.weights)
            self.extractor = feature_extractor(self.plan.spec, self.base, s.image_size)
        return self.base

    def use_base(self, base):
        """Runs the features through `base` (a loaded model's) instead of building one."""
        from smallcnn.model.networks import feature_extractor

        self.base = base
        self.extractor = feature_extractor(self.plan.spec, base, self.plan.settings.image_size)

    def start_warmup(self, templates=()):
        """Starts preparing the base's LiteRT conversion (and, with `templates`, extract's
        model templates) in a helper process, if the cache lacks them: see
        `smallcnn.train.warmup`. Called before the images are read, to overlap them."""
        from smallcnn.runtime.engine import chosen_engine
        from smallcnn.train import warmup

        plan = self.plan
        # (A cluster's worker decodes only its shard: nothing to overlap.)
        if chosen_engine(plan.settings.engine, plan.placement) != "tensorflow" and \
                not plan.placement.multi_worker:
            self._warmup = warmup.start(plan.spec, plan.weights, plan.settings.image_size,
                                        plan.settings.seed, templates, self.reporter.warning)

    def wait_for_warmup(self, engine_only=False):
        """Waits for the helper process, if one runs (with `engine_only`, only until the
        base's conversion is cached); says in one line if it failed (the run then prepares
        the base itself)."""
        warmup = self._warmup
        if warmup is not None:
            for name in self.plan.dataset.splits:  # decode what the base will run on meanwhile
                if warmup.running() and not self.is_cached(name):
                    self.decoded(name)
            with self.timings("prepare"):
                failed = warmup.wait(engine_only)
            if failed or not warmup.running():
                self._warmup = None
            if failed:
                self.reporter.warning(f"Preparing the base in a helper process failed "
                                      f"({failed}); preparing it here instead.")

    def engine(self):
        """The inference engine for the frozen base (see `smallcnn.runtime.engine`)."""
        from smallcnn.runtime.engine import feature_engine

        def extractor():  # built only when needed: a cached conversion needs no TensorFlow
            if self.extractor is None:
                self.build_base()
            return self.extractor

        if self._engine is None:
            self.wait_for_warmup(engine_only=True)
            s = self.plan.settings
            with self.timings("convert"):
                self._engine = feature_engine(self.plan.spec, self.plan.weights, s.image_size,
                                              extractor, s.engine, self.reporter,
                                              self.plan.placement, self.precision)
        return self._engine

    def close(self):
        """Stops the helper process if it still runs (not needed after all)."""
        if self._warmup is not None:
            self._warmup.cancel()
            self._warmup = None
