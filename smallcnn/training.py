"""The three ways to train: `extract`, `train` and `finetune`.

Each function checks its inputs, trains, writes a run folder and returns a
`RunResult`; none of them prints (progress goes to a `Reporter`).
"""

import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from smallcnn import __version__, runs
from smallcnn.augment import DEFAULT_PRESET, Augmentation, resolve_augmentation
from smallcnn.bases import DEFAULT_BASE, build_base, get_base, resolve_weights, weights_label
from smallcnn.data import find_dataset
from smallcnn.errors import DataError, UsageError
from smallcnn.head import check_optimizer
from smallcnn.reporting import Reporter
from smallcnn.signals import StopRequest

# Global defaults per command; a command-line value wins, then the base's own default
# (image size, weights), then these.
COMMAND_DEFAULTS = {
    "extract": dict(epochs=100, learning_rate=1e-3, patience=10, augment="none", heads=5),
    "train": dict(epochs=50, patience=8, augment=DEFAULT_PRESET),
    "finetune": dict(
        epochs=15,
        learning_rate=1e-5,
        patience=5,
        augment=DEFAULT_PRESET,
        head_epochs=30,
        head_learning_rate=1e-2,
    ),
}


@dataclasses.dataclass
class Settings:
    """Everything a training command can be told. None means: use the default."""

    base: str = None
    weights: str = None
    image_size: int = None
    batch_size: int = 32
    epochs: int = None
    learning_rate: float = None
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "constant"
    dropout: float = 0.5
    hidden: int = 0
    patience: int = None
    seed: int = 42
    val_split: float = 0.2
    augment: str = None
    rotation: float = None
    shift: float = None
    shear: float = None
    zoom: float = None
    flip: str = None
    brightness: float = None
    contrast: float = None
    freeze: bool = None
    unfreeze: int = 4
    head_epochs: int = None
    head_learning_rate: float = None
    engine: str = "auto"
    tensorboard: bool = False  # also log to RUN/tensorboard/<phase>
    class_weight: str = "none"
    views: int = 0  # extract: also the features of this many augmented copies of each train image
    heads: int = None  # extract: heads trained from different seeds and merged into one

    def resolve(self, command, spec=None):
        """A copy with every None replaced by the command's or the base's default."""
        values = dataclasses.asdict(self)
        if command == "extract" and values.get("views") and values.get("augment") is None:
            values["augment"] = DEFAULT_PRESET  # augmented views need an augmentation
        for key, value in COMMAND_DEFAULTS[command].items():
            if values.get(key) is None:
                values[key] = value
        if values["base"] is None:
            values["base"] = DEFAULT_BASE
        spec = spec or get_base(values["base"])
        if values["image_size"] is None:
            values["image_size"] = spec.default_size
        if values["freeze"] is None:
            values["freeze"] = spec.has_imagenet or values["weights"] not in (None, "none")
        if values["learning_rate"] is None:
            # A frozen base leaves a linear head to train: a high rate reaches the same
            # accuracy in a third of the epochs (ants-bees: 93.46% either way, best epoch
            # 10 against 30 at 1e-3); every layer training needs the usual 1e-3.
            values["learning_rate"] = 1e-2 if values["freeze"] else 1e-3
        resolved = Settings(**values)
        resolved.check()
        return resolved

    def check(self):
        for name in ("batch_size", "epochs", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1. Received: {value}")
        if self.learning_rate is not None:  # refused before any image is decoded
            check_optimizer(self.optimizer, self.learning_rate, self.lr_schedule)
        if self.class_weight not in ("none", "balanced"):
            raise UsageError(
                f"--class-weight must be 'balanced' or 'none'. Received: {self.class_weight!r}"
            )
        if self.views is not None and not 0 <= self.views <= 100:
            raise UsageError(f"--views must be between 0 and 100. Received: {self.views}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1). Received: {self.dropout}")
        if self.hidden is not None and self.hidden < 0:
            raise UsageError(f"--hidden must be 0 (no hidden layer) or more. Received: {self.hidden}")
        if self.heads is not None and not 1 <= self.heads <= 32:
            raise UsageError(f"--heads must be between 1 and 32. Received: {self.heads}")
        if self.patience is not None and self.patience < 0:
            raise UsageError(f"--patience must be 0 or more. Received: {self.patience}")
        if self.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise UsageError("--tensorboard needs the tensorboard package: "
                                 "pip install tensorboard (or pip install 'smallcnn[tensorboard]').")

    def augmentation(self):
        return resolve_augmentation(
            self.augment,
            rotation=self.rotation,
            shift=self.shift,
            shear=self.shear,
            zoom=self.zoom,
            flip=self.flip,
            brightness=self.brightness,
            contrast=self.contrast,
        )


@dataclasses.dataclass
class RunResult:
    command: str
    run_dir: Path
    class_names: list
    metrics: dict
    history: list
    skipped: list  # [path, reason] of unreadable images left out
    unfrozen: list = dataclasses.field(default_factory=list)
    trainable_params: int = None
    interrupted: str = None  # the signal that stopped training early (SIGINT, SIGTERM)


def run_check(dataset, reporter):
    """Checks a data set (cached per file), shows what is wrong, refuses what cannot train."""
    from smallcnn.check import check_dataset, require_trainable

    report = check_dataset(dataset, reporter)
    reporter.check(report)
    require_trainable(report)
    return report


class _Context:
    """What every training command starts from: settings, base entry, data set.

    It also holds the decoded images and the base's features, so that no image is
    decoded twice and no feature computed twice in one run.
    """

    def __init__(self, command, data_dir, settings, reporter, command_line=None):
        self.command = command
        self.command_line = command_line or shlex.join(["smallcnn", *sys.argv[1:]])
        self.reporter = reporter
        self.started = time.time()
        self.spec = get_base(settings.base or DEFAULT_BASE)
        self.settings = settings.resolve(command, self.spec)
        self.weights = resolve_weights(self.spec, self.settings.weights)
        self.settings.weights = self.weights
        self.weights_source = weights_label(self.weights)
        self.settings.augmentation()  # checks the augmentation options up front
        self.dataset = find_dataset(data_dir, self.settings.val_split, self.settings.seed)
        reporter.dataset(self.dataset)
        self.check = run_check(self.dataset, reporter)
        if command != "extract":  # extract needs TensorFlow only to compute features
            _seed_keras(self.settings.seed)
        # Unreadable files are left out before anything is decoded.
        self.skipped = {bad["path"]: bad["reason"] for bad in self.check.unreadable}
        for name, split in self.dataset.splits.items():
            self.dataset.splits[name] = split.without(self.skipped)
        self._decoded = {}
        self._features = {}
        self._engine = None
        self._stop = None
        self.base = self.extractor = None
        self.base_seconds = 0.0  # time in the base's forward pass for feature extraction
        self.base_images = 0

    def decoded(self, name):
        """The decoded images of one split (decoded on first use only)."""
        from smallcnn.pipeline import decode_split

        if name not in self._decoded:
            split = self.dataset.splits[name]
            decoded = decode_split(split, self.settings.image_size, self.reporter)
            self.skipped.update((f.path, f.reason) for f in decoded.skipped)
            self._decoded[name] = decoded
        return self._decoded[name]

    def build_base(self):
        s = self.settings
        _seed_keras(s.seed)  # before Keras is first imported, to import TensorFlow quietly
        from smallcnn.models import feature_extractor

        self.base = build_base(self.spec, s.image_size, self.weights)
        self.extractor = feature_extractor(self.spec, self.base, s.image_size)
        return self.base

    def engine(self):
        """The inference engine for the frozen base (see `smallcnn.engine`)."""
        from smallcnn.engine import feature_engine

        if self._engine is None:
            if self.extractor is None:
                self.build_base()
            self._engine = feature_engine(self.spec, self.weights, self.settings.image_size,
                                          self.extractor, self.settings.engine, self.reporter)
        return self._engine

    def features(self, name):
        """Pooled base features and labels of one split, from the cache when possible."""
        from smallcnn import features as cache
        from smallcnn.engine import compute_features

        if name in self._features:
            return self._features[name]
        split = self.dataset.splits[name]
        key = cache.cache_key(self.spec, self.weights, self.settings.image_size, split.paths)
        cached = cache.load_cached(key)
        if cached is not None:
            values, labels, _, skipped = cached
            self.skipped.update((path, reason) for path, reason in skipped)
            self.reporter.note(f"{name}: {len(values)} feature vectors from the cache")
        else:
            decoded = self.decoded(name)
            engine = self.engine()
            started = time.perf_counter()
            with self.reporter.progress(f"Extracting {name} features ({engine.name})",
                                        len(decoded)) as advance:
                values = compute_features(engine, decoded.images, progress=advance)
            self.base_seconds += time.perf_counter() - started
            self.base_images += len(decoded)
            labels = decoded.labels
            skipped = [[f.path, f.reason] for f in decoded.skipped]
            cache.store(key, values, labels, decoded.paths, skipped)
        self._features[name] = (values, np.asarray(labels, dtype=np.int32))
        return self._features[name]

    def augmented_views(self, count):
        """Base features of `count` augmented copies of each training image (cached).

        Each view is one pass over the training images with the run's augmentation and
        its own seed, so the same settings give the same views, and a cache hit.
        """
        import tensorflow as tf

        from smallcnn import features as cache
        from smallcnn.augment import build_augmenter

        s = self.settings
        augmentation = s.augmentation()
        split = self.dataset.train
        base_key = cache.cache_key(self.spec, self.weights, s.image_size, split.paths)
        views = []
        for view in range(count):
            key = None if base_key is None else hashlib.sha256(json.dumps(
                [base_key, dataclasses.asdict(augmentation), s.seed, view]).encode()).hexdigest()
            cached = cache.load_cached(key)
            if cached is not None:
                views.append(cached[0])
                self.reporter.note(f"train: augmented view {view + 1} from the cache")
                continue
            decoded = self.decoded("train")
            engine = self.engine()
            augmenter = build_augmenter(augmentation, seed=s.seed * 1000 + view)
            started = time.perf_counter()
            with self.reporter.progress(f"Extracting augmented view {view + 1}/{count} "
                                        f"({engine.name})", len(decoded)) as advance:
                values = []
                for start in range(0, len(decoded), 32):
                    batch = tf.cast(decoded.images[start : start + 32], tf.float32)
                    values.append(engine(augmenter(batch).numpy()))
                    advance(start + len(values[-1]))
                values = np.concatenate(values)
            self.base_seconds += time.perf_counter() - started
            self.base_images += len(decoded)
            cache.store(key, values, decoded.labels, decoded.paths, [])
            views.append(values)
        return views

    def cached_engine_file(self):
        """The base's cached LiteRT conversion for this run's weights and size, or None."""
        from smallcnn.engine import chosen_engine, litert_path

        if self.weights == "none" or chosen_engine(self.settings.engine) == "tf":
            return None
        path = litert_path(self.spec, self.weights, self.settings.image_size)
        return path if path.is_file() else None

    def classifier(self, head_weights):
        """`(model, base layer name)`: the whole classifier with these head weights.

        With pretrained weights, the model is assembled from a cached template without
        TensorFlow (see `smallcnn.modelfile`); the first run saves the template.
        """
        from smallcnn import modelfile

        s = self.settings
        feature_width, num_classes = head_weights[0].shape[0], head_weights[-1].shape[0]
        # Merged heads (--heads K --hidden N) have K x N hidden units.
        hidden = head_weights[0].shape[1] if len(head_weights) == 4 else 0
        key = modelfile.template_key(self.spec, self.weights, s.image_size, feature_width,
                                     num_classes, hidden, s.dropout)
        template = modelfile.load_template(key)
        if template is not None:
            return modelfile.AssembledClassifier(template, head_weights), template.base_layer
        base = self.base or self.build_base()
        from smallcnn.models import build_classifier

        head = _new_head(self, feature_width, hidden)
        model = build_classifier(self.spec, base, head, s.image_size)
        if key is None:  # random base weights: this model is the only one
            head.set_weights(head_weights)
            return model, base.name
        template = modelfile.save_template(model, head, base.name, key)
        return modelfile.AssembledClassifier(template, head_weights), base.name

    def config(self, base_layer, extra=None):
        settings = dataclasses.asdict(self.settings)
        settings["augmentation"] = dataclasses.asdict(self.settings.augmentation())
        return {
            "format": 1,
            "smallcnn_version": __version__,
            "command": self.command,
            "command_line": self.command_line,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "class_names": self.dataset.class_names,
            "base": self.spec.name,
            "base_layer": base_layer,
            "weights": self.weights_source,
            "image_size": self.settings.image_size,
            "preprocessing": self.spec.preprocessing,
            "data": self.dataset.root,
            "data_counts": self.dataset.counts(),
            "settings": settings,
            **(extra or {}),
        }

    def optimizer(self, learning_rate, steps, epochs):
        from smallcnn.models import make_optimizer

        s = self.settings
        return make_optimizer(s.optimizer, learning_rate, s.momentum, s.nesterov, s.lr_schedule,
                              steps, epochs)

    def _new_report(self, phase, epochs, steps):
        from smallcnn.callbacks import ReportEpochs

        self.epoch_report = ReportEpochs(self.reporter, phase, epochs, steps)
        return self.epoch_report

    @property
    def interrupted(self):
        """The signal that asked training to stop, if one did."""
        return self._stop.received if self._stop is not None else None

    def class_weights(self):
        """{class index: weight} for --class-weight balanced, else None."""
        if self.settings.class_weight != "balanced":
            return None
        counts = np.bincount(self.dataset.train.labels, minlength=len(self.dataset.class_names))
        return {i: float(counts.sum() / (len(counts) * c)) for i, c in enumerate(counts) if c}

    def callbacks(self, phase, epochs, steps, checkpoint=None, run_dir=None):
        import keras

        from smallcnn.callbacks import AtomicCheckpoint, StopOnSignal

        s = self.settings
        if self._stop is None:
            self._stop = StopOnSignal()
        callbacks = [
            self._stop,
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=s.patience, restore_best_weights=True
            ),
            self._new_report(phase, epochs, steps),
        ]
        if s.lr_schedule == "plateau":
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=0.2, patience=max(1, s.patience // 2), min_lr=1e-7
                )
            )
        if checkpoint is not None:
            callbacks.append(AtomicCheckpoint(*checkpoint))
            run_dir = run_dir or checkpoint[0].parent
        if s.tensorboard and run_dir is not None:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard" / phase)))
        return callbacks

    def finish(self, run_dir, model, config, rows, evaluations, extra_metrics=None):
        """Writes the run folder; returns the metrics.

        `model` is the Keras model to save, or anything with Keras' `save(path)`.
        """
        metrics = {"val_accuracy": evaluations["val"][1], "val_loss": evaluations["val"][0]}
        if "test" in evaluations:
            metrics["test_accuracy"] = evaluations["test"][1]
            metrics["test_loss"] = evaluations["test"][0]
        metrics.update(
            {
                "epochs": len(rows),
                "best_epoch": _best_epoch(rows),
                "seconds": round(time.time() - self.started, 2),
                "train_images": len(self.dataset.train),
                "skipped_images": len(self.skipped),
                "class_weights": self.class_weights(),
                "class_imbalance": _imbalance(self.dataset),
                "engine": self._engine.name if self._engine is not None else None,
                "base_images_per_second": (round(self.base_images / self.base_seconds, 1)
                                           if self.base_seconds else None),
                **(extra_metrics or {}),
            }
        )
        if self.interrupted:
            metrics["interrupted"] = self.interrupted
        runs.save_model(model, run_dir / runs.MODEL_FILE)
        # The model file as written: `predict` can tell it is the one described here.
        config["model_sha256"] = runs.file_sha256(run_dir / runs.MODEL_FILE)
        runs.write_json(run_dir / runs.CONFIG_FILE, config)
        runs.write_json(run_dir / runs.METRICS_FILE, metrics)
        runs.write_history(run_dir / runs.HISTORY_FILE, rows)
        self.plot_curves(run_dir, rows, metrics["best_epoch"])
        if self.command != "extract":  # extract runs predict without a conversion
            self.convert_for_predict(run_dir, model)
        return metrics

    def convert_for_predict(self, run_dir, model):
        """Caches the saved model's LiteRT conversion (about 2 s for MobileNetV2), so that
        `predict` runs it without TensorFlow from the first image on."""
        import importlib.util

        from smallcnn.predict import converted_model_path

        path = converted_model_path(run_dir)
        if path is None or self.settings.engine == "tf" or path.exists() or \
                os.environ.get("SMALLCNN_CONVERT_RUNS") == "0" or \
                importlib.util.find_spec("ai_edge_litert") is None:
            return
        from smallcnn.engine import convert_to_litert

        try:
            convert_to_litert(model, path)
        except Exception as error:  # predict converts or uses TensorFlow instead
            self.reporter.warning(f"Could not convert the model to LiteRT for predict: {error}")

    def plot_curves(self, run_dir, rows, best_epoch):
        """RUN/curves.png; a picture that cannot be drawn costs a warning, not the run."""
        from smallcnn.plots import curves_figure, save_figure

        try:
            save_figure(curves_figure(rows, best_epoch, f"{self.command}: {run_dir.name}"),
                        run_dir / runs.CURVES_FILE)
        except Exception as error:
            self.reporter.warning(f"Could not draw {runs.CURVES_FILE}: {error}")

    def result(self, run_dir, metrics, rows, **extra):
        return RunResult(self.command, run_dir, self.dataset.class_names, metrics, rows,
                         [[p, r] for p, r in self.skipped.items()],
                         interrupted=self.interrupted, **extra)


def _seed_keras(seed):
    """Imports TensorFlow (quietly) and seeds Keras, NumPy and Python."""
    from smallcnn.quiet import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)


def _imbalance(dataset):
    """Largest over smallest class in the training split."""
    counts = [c for c in dataset.counts()["train"] if c]
    return round(max(counts) / min(counts), 2) if counts else None


def _history_rows(history, phase, first_epoch=1, seconds=()):
    rows = []
    for i in range(len(history.history.get("loss", []))):
        row = {"epoch": first_epoch + i, "phase": phase}
        for key, values in history.history.items():
            row[key] = float(values[i])
        if i < len(seconds):
            row["seconds"] = round(seconds[i], 3)
        rows.append(row)
    return rows


def _best_epoch(rows):
    scored = [r for r in rows if "val_loss" in r]
    return min(scored, key=lambda r: r["val_loss"])["epoch"] if scored else None


def _evaluate_head(head, context, names):
    return {
        name: [float(v) for v in head.evaluate(*context.features(name), batch_size=256, verbose=0)]
        for name in names
    }


def _a(word):
    """'a train', 'an extract'."""
    return f"{'an' if str(word)[:1].lower() in tuple('aeiou') else 'a'} {word}"


def _eval_splits(context):
    return [name for name in context.dataset.splits if name != "train"]


def _new_head(context, feature_width=None, hidden=None):
    from smallcnn.models import build_head

    s = context.settings
    return build_head(feature_width or context.spec.feature_width,
                      len(context.dataset.class_names), s.dropout,
                      s.hidden if hidden is None else hidden)


def extract(data_dir, settings=None, out=None, overwrite=False, reporter=None,
            command_line=None):
    """Feature extraction: run the base once, cache the features, train a dense head.

    Args:
        data_dir: a data folder (see `smallcnn.data.find_dataset`).
        settings: a `Settings`; unset values take the `extract` defaults.
        out: the run folder to write; default `runs/extract-<time>`.
        overwrite: replace a run already in `out`.
        reporter: receives progress; default silent.
        command_line: recorded in the run's smallcnn.json; default `sys.argv`.

    Returns:
        A `RunResult`. The saved model takes raw images (base + head).
    """
    from smallcnn import head as numpy_head
    from smallcnn import modelfile

    reporter = reporter or Reporter()
    context = _Context("extract", data_dir, settings or Settings(), reporter, command_line)
    s = context.settings
    if out is not None:  # refused now, before the work; the folder is made at the end
        runs.check_out(out, overwrite)
    train_x, train_y = context.features("train")
    if s.views:  # the head also trains on features of augmented copies
        if context.settings.augmentation() == Augmentation():
            raise UsageError("--views needs an augmentation; drop --augment none, or pass "
                             "--augment light|standard|strong.")
        views = context.augmented_views(s.views)
        train_x = np.concatenate([train_x, *views])
        train_y = np.tile(train_y, s.views + 1)
    # The head trains in NumPy (see smallcnn.head): with the features cached, the whole
    # run needs no TensorFlow.
    steps = int(np.ceil(len(train_x) / s.batch_size))
    stop = context._stop = StopRequest()  # Ctrl-C ends training; context.interrupted says so
    with stop:
        weights, history = numpy_head.train(
            train_x, train_y, context.features("val"), s, len(context.dataset.class_names),
            class_weights=context.class_weights(), members=s.heads, stop=stop,
            on_epoch=lambda epoch, logs: reporter.epoch("head", epoch, s.epochs, logs),
            progress=lambda epoch: reporter.progress(f"head epoch {epoch}/{s.epochs}", steps))
    rows = [{"epoch": i + 1, "phase": "head",
             **{k: (round(v, 3) if k == "seconds" else v) for k, v in logs.items()}}
            for i, logs in enumerate(history)]
    evaluations = {name: list(numpy_head.evaluate(weights, *context.features(name)))
                   for name in _eval_splits(context)}
    model, base_layer = context.classifier(weights)
    run_dir = runs.new_run_dir("extract", out, overwrite=overwrite)
    config = context.config(base_layer)
    engine_file = context.cached_engine_file()
    if engine_file is not None and isinstance(model, modelfile.AssembledClassifier):
        # The saved model is this base (cached in LiteRT) and this head: predict can run
        # them without TensorFlow (see smallcnn.predict).
        config["prediction"] = {"feature_engine": engine_file.name,
                                "head_datasets": model.template.head_datasets}
    if s.tensorboard:
        _write_tensorboard(run_dir / "tensorboard" / "head", rows)
    extra = {"views": s.views, "heads": s.heads, "head_training_rows": len(train_x)}
    if s.heads > 1:  # each head kept its own best epoch; the ensemble is final as of the last
        improved = [r["epoch"] for r in rows if r.get("heads_improved")]
        extra["best_epoch"] = improved[-1] if improved else 1
    metrics = context.finish(run_dir, model, config, rows, evaluations, extra)
    return context.result(run_dir, metrics, rows)


def _write_tensorboard(folder, rows):
    """TensorBoard logs of the epochs in `rows`, as Keras' TensorBoard callback names them."""
    import tensorflow as tf

    for split, tags in (("train", {"loss": "epoch_loss", "accuracy": "epoch_accuracy",
                                   "learning_rate": "epoch_learning_rate"}),
                        ("validation", {"val_loss": "epoch_loss",
                                        "val_accuracy": "epoch_accuracy"})):
        writer = tf.summary.create_file_writer(str(folder / split))
        with writer.as_default():
            for row in rows:
                for key, tag in tags.items():
                    if key in row:
                        tf.summary.scalar(tag, row[key], step=row["epoch"] - 1)
        writer.close()


def _augmented_features(context):
    """An endless stream of (features, labels) batches of augmented training images.

    The frozen base needs no gradients, so each augmented batch goes through the
    inference engine and only the head trains: the same training as end to end with
    `trainable=False`, at the speed of inference.
    """
    from smallcnn.augment import build_augmenter
    from smallcnn.engine import TensorFlowEngine
    from smallcnn.pipeline import batches

    s = context.settings
    train = context.decoded("train")
    augmenter = build_augmenter(s.augmentation(), seed=s.seed)
    engine = context.engine()
    dataset = batches(train.images, train.labels, s.batch_size, shuffle=True, seed=s.seed,
                      augmenter=augmenter, background=isinstance(engine, TensorFlowEngine))
    weights = context.class_weights()
    lookup = np.array([weights.get(i, 0.0) for i in range(len(context.dataset.class_names))],
                      dtype=np.float32) if weights else None
    # One iterator for the whole run: destroying a tf.data iterator at each epoch's end
    # stalled for 8-10 s in about one epoch in two (measured here on cats-dogs-small).
    for x, y in dataset.repeat():
        y = y.numpy()
        if lookup is None:
            yield engine(x.numpy()), y
        else:  # Keras takes no class_weight with a generator: per-sample weights instead
            yield engine(x.numpy()), y, lookup[y]


def _train_head_frozen(context, model, head, run_dir, phase, epochs, learning_rate,
                       initial_epoch=0):
    """Trains the head on augmented images with the base frozen; returns history rows."""
    from smallcnn.models import compile_model

    s = context.settings
    val = context.features("val")
    steps = int(np.ceil(len(context.decoded("train")) / s.batch_size))
    compile_model(head, context.optimizer(learning_rate, steps, epochs))
    history = head.fit(
        _augmented_features(context),
        steps_per_epoch=steps,
        shuffle=False,  # the stream is shuffled
        validation_data=val,
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        verbose=0,
        callbacks=context.callbacks(phase, epochs, steps,
                                    checkpoint=(run_dir / runs.MODEL_FILE, model)),
    )
    return _history_rows(history, phase, first_epoch=initial_epoch + 1,
                         seconds=context.epoch_report.seconds)


def _image_datasets(context):
    from smallcnn.augment import build_augmenter
    from smallcnn.pipeline import batches

    s = context.settings
    augmenter = build_augmenter(s.augmentation(), seed=s.seed)
    train = context.decoded("train")
    train_ds = batches(train.images, train.labels, s.batch_size, shuffle=True, seed=s.seed,
                       augmenter=augmenter)
    eval_ds = {}
    for name in _eval_splits(context):
        split = context.decoded(name)
        eval_ds[name] = batches(split.images, split.labels, s.batch_size)
    steps = int(np.ceil(len(train) / s.batch_size))
    return train_ds, eval_ds, steps


def _train_end_to_end(context, model, run_dir, phase, epochs, learning_rate, initial_epoch=0):
    """Trains every trainable layer of the model on augmented images; returns history rows."""
    from smallcnn.models import compile_model

    train_ds, eval_ds, steps = _image_datasets(context)
    compile_model(model, context.optimizer(learning_rate, steps, epochs))
    history = model.fit(
        train_ds.repeat(),  # one iterator for the run (see _augmented_features)
        steps_per_epoch=steps,
        validation_data=eval_ds["val"],
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # the tf.data pipeline shuffles
        class_weight=context.class_weights(),
        verbose=0,
        callbacks=context.callbacks(phase, epochs, steps,
                                    checkpoint=(run_dir / runs.MODEL_FILE, model)),
    )
    rows = _history_rows(history, phase, first_epoch=initial_epoch + 1,
                         seconds=context.epoch_report.seconds)
    return rows, _evaluate_model(model, context)


def train(data_dir=None, settings=None, out=None, overwrite=False, reporter=None,
          command_line=None, resume=None):
    """Trains the classifier on augmented images, with early stopping.

    With `settings.freeze` (the default for pretrained bases) the base stays frozen and
    only the head learns; without it (the default for `--base small` or
    `--weights none`) every layer trains.

    Returns:
        A `RunResult`.
    """
    from smallcnn.models import build_classifier

    reporter = reporter or Reporter()
    if resume is not None:
        return _resume("train", resume, reporter, command_line)
    if data_dir is None:
        raise UsageError("train needs DATA, or a run to continue: --resume RUN.")
    context = _Context("train", data_dir, settings or Settings(), reporter, command_line)
    s = context.settings
    base = context.build_base()
    base.trainable = not s.freeze
    run_dir = runs.new_run_dir("train", out, overwrite=overwrite)
    head = _new_head(context)
    model = build_classifier(context.spec, base, head, s.image_size)
    config = context.config(base.name)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)  # the checkpoint is usable at once
    if s.freeze:
        rows = _train_head_frozen(context, model, head, run_dir, "frozen", s.epochs,
                                  s.learning_rate)
        evaluations = _evaluate_head(head, context, _eval_splits(context))
    else:
        rows, evaluations = _train_end_to_end(context, model, run_dir, "full", s.epochs,
                                              s.learning_rate)
    metrics = context.finish(run_dir, model, config, rows, evaluations)
    return context.result(run_dir, metrics, rows)


def finetune(data_dir=None, from_run=None, settings=None, out=None, overwrite=False,
             reporter=None, command_line=None, resume=None):
    """Fine-tunes the top layers of the base together with the head, at a low learning rate.

    Starts from a run folder (`from_run`) or, without one, first trains the head with
    the base frozen, as `train` does. Then the top `settings.unfreeze` layers of the base
    that have weights (BatchNormalization layers excepted) are made trainable.

    Returns:
        A `RunResult` whose `unfrozen` lists the unfrozen layers.
    """
    from smallcnn.models import (HEAD_NAME, build_classifier, count_params, find_base,
                                 unfreeze_top)

    reporter = reporter or Reporter()
    if resume is not None:
        return _resume("finetune", resume, reporter, command_line)
    settings = settings or Settings()
    source_config = None
    if from_run is not None:
        from_run = runs.resolve_run(from_run)
        source_config = runs.read_config(from_run)
        if settings.base is not None and settings.base != source_config["base"]:
            raise UsageError(
                f"--base {settings.base} does not match the run {str(from_run)!r}, "
                f"which uses {source_config['base']}; leave --base out."
            )
        # The base comes with the run's model: nothing is built, so no weights are loaded.
        settings = dataclasses.replace(
            settings, base=source_config["base"], image_size=source_config["image_size"],
            weights="none",
        )
        data_dir = data_dir or source_config.get("data")
    if data_dir is None:
        raise UsageError("finetune needs DATA, or a run to start from: --from RUN.")
    context = _Context("finetune", data_dir, settings, reporter, command_line)
    s = context.settings
    rows = []
    if source_config is not None:
        if source_config["class_names"] != context.dataset.class_names:
            raise DataError(
                f"The run {str(from_run)!r} was trained on classes "
                f"{source_config['class_names']}, but the data has {context.dataset.class_names}."
            )
        model = runs.load_model(from_run)
        base = find_base(model, source_config["base_layer"])
        context.weights_source = source_config["weights"]
        run_dir = runs.new_run_dir("finetune", out, overwrite=overwrite)
        config = context.config(base.name, {"from_run": str(from_run)})
    else:
        base = context.build_base()
        base.trainable = False
        run_dir = runs.new_run_dir("finetune", out, overwrite=overwrite)
        head = _new_head(context)
        model = build_classifier(context.spec, base, head, s.image_size)
        config = context.config(base.name)
        runs.write_json(run_dir / runs.CONFIG_FILE, config)
        rows = _train_head_frozen(context, model, head, run_dir, "frozen", s.head_epochs,
                                  s.head_learning_rate)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)
    if context.interrupted:  # stopped while training the head: save that, tune nothing
        evaluations = _evaluate_head(model.get_layer(HEAD_NAME), context, _eval_splits(context))
        metrics = context.finish(run_dir, model, config, rows, evaluations)
        return context.result(run_dir, metrics, rows)

    unfrozen = unfreeze_top(base, s.unfreeze)
    trainable = count_params(model.trainable_weights)
    reporter.note(
        f"Unfroze {len(unfrozen)} base layer(s): {', '.join(unfrozen)}; "
        f"{trainable:,} parameters now train (head included)."
    )
    before = model.get_weights()
    before_loss = min((r["val_loss"] for r in rows if "val_loss" in r), default=None)
    if source_config is not None:
        try:
            before_loss = json.loads((from_run / runs.METRICS_FILE).read_text())["val_loss"]
        except (OSError, ValueError, KeyError):
            pass
    tuned, evaluations = _train_end_to_end(context, model, run_dir, "finetune", s.epochs,
                                           s.learning_rate, initial_epoch=len(rows))
    rows += tuned
    # Fine-tuning that leaves val_loss clearly worse (not just within noise) is undone.
    if before_loss is not None and evaluations["val"][0] > before_loss + 1e-3:
        model.set_weights(before)
        evaluations = _evaluate_model(model, context)
        reporter.note(f"Fine-tuning did not lower val_loss below {before_loss:.4f}; "
                      "kept the model from before it.")
    metrics = context.finish(run_dir, model, config, rows, evaluations,
                             {"finetune_start_epoch": len(rows) - len(tuned) + 1,
                              "unfrozen_layers": unfrozen, "trainable_params": trainable})
    return context.result(run_dir, metrics, rows, unfrozen=unfrozen, trainable_params=trainable)


def _resume(command, run, reporter, command_line):
    """Continues an interrupted `train` or `finetune` run in its own folder.

    The run's recorded settings are used; training starts from its saved (best) model
    and epoch count, and the better of the old and the new model is kept.
    """
    from smallcnn.models import HEAD_NAME, count_params, feature_extractor, find_base, unfreeze_top

    run_dir = runs.resolve_run(run)
    config = runs.read_config(run_dir)
    if config.get("command") != command:
        raise UsageError(
            f"{str(run_dir)!r} is {_a(config.get('command'))} run; resume it with "
            f"smallcnn {config.get('command')} --resume {run_dir}."
        )
    known = {f.name for f in dataclasses.fields(Settings)}
    recorded = {k: v for k, v in config["settings"].items() if k in known}
    # The base comes with the saved model; "none" keeps the engine from reusing a
    # conversion of the original weights (fine-tuning changed them).
    settings = dataclasses.replace(Settings(**recorded), weights="none")
    context = _Context(command, config["data"], settings, reporter, command_line)
    context.weights_source = config["weights"]
    if config["class_names"] != context.dataset.class_names:
        raise DataError(
            f"The data now has classes {context.dataset.class_names}, but the run "
            f"{str(run_dir)!r} was trained on {config['class_names']}."
        )
    s = context.settings
    model = runs.load_model(run_dir)
    base = find_base(model, config["base_layer"])
    head = model.get_layer(HEAD_NAME)
    context.base = base
    context.extractor = feature_extractor(context.spec, base, s.image_size)

    rows = runs.read_history(run_dir)
    try:
        previous_loss = json.loads((run_dir / runs.METRICS_FILE).read_text())["val_loss"]
    except (OSError, ValueError, KeyError):
        previous_loss = None
    previous_weights = model.get_weights()
    done = len(rows)
    phases = [r["phase"] for r in rows]
    reporter.note(f"Resuming {run_dir} after {done} epoch(s).")

    extra = {}
    if command == "train" and s.freeze:
        left = s.epochs - done
        if left > 0:
            rows += _train_head_frozen(context, model, head, run_dir, "frozen", left,
                                       s.learning_rate, initial_epoch=done)
    elif command == "train":
        left = s.epochs - done
        if left > 0:
            rows += _train_end_to_end(context, model, run_dir, "full", left, s.learning_rate,
                                      initial_epoch=done)[0]
    else:
        head_done = phases.count("frozen")
        if "finetune" not in phases and head_done < s.head_epochs and not config.get("from_run"):
            rows += _train_head_frozen(context, model, head, run_dir, "frozen",
                                       s.head_epochs - head_done, s.head_learning_rate,
                                       initial_epoch=done)
        if not context.interrupted:
            unfrozen = unfreeze_top(base, s.unfreeze)
            extra = {"unfrozen_layers": unfrozen,
                     "trainable_params": count_params(model.trainable_weights)}
            left = s.epochs - (len(rows) - [r["phase"] for r in rows].count("frozen"))
            start = len(rows)
            if left > 0:
                rows += _train_end_to_end(context, model, run_dir, "finetune", left,
                                          s.learning_rate, initial_epoch=start)[0]
            extra["finetune_start_epoch"] = next(
                (r["epoch"] for r in rows if r["phase"] == "finetune"), start + 1)

    evaluations = _evaluate_model(model, context)
    if previous_loss is not None and evaluations["val"][0] > previous_loss:
        model.set_weights(previous_weights)  # the run before the interruption was better
        evaluations = _evaluate_model(model, context)
    config["resumed"] = config.get("resumed", []) + [context.command_line]
    metrics = context.finish(run_dir, model, config, rows, evaluations, extra)
    return context.result(run_dir, metrics, rows, unfrozen=extra.get("unfrozen_layers", []),
                          trainable_params=extra.get("trainable_params"))


def _evaluate_model(model, context):
    """Loss and accuracy of the whole model on each evaluation split's images."""
    from smallcnn.models import compile_model
    from smallcnn.pipeline import batches

    if model.optimizer is None:
        compile_model(model, "adam")
    evaluations = {}
    for name in _eval_splits(context):
        split = context.decoded(name)
        dataset = batches(split.images, split.labels, context.settings.batch_size)
        evaluations[name] = [float(v) for v in model.evaluate(dataset, verbose=0)]
    return evaluations
