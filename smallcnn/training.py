"""The three ways to train: `extract`, `train` and `finetune`.

Each function checks its inputs, trains, writes a run folder and returns a
`RunResult`; none of them prints (progress goes to a `Reporter`).
"""

import dataclasses
import datetime
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from smallcnn import __version__, runs
from smallcnn.augment import DEFAULT_PRESET, resolve_augmentation
from smallcnn.bases import DEFAULT_BASE, build_base, get_base, resolve_weights, weights_label
from smallcnn.data import find_dataset
from smallcnn.errors import DataError, UsageError
from smallcnn.reporting import Reporter

# Global defaults per command; a command-line value wins, then the base's own default
# (image size, weights), then these.
COMMAND_DEFAULTS = {
    "extract": dict(epochs=100, learning_rate=1e-3, patience=10, augment="none"),
    "train": dict(epochs=30, learning_rate=1e-3, patience=5, augment=DEFAULT_PRESET),
    "finetune": dict(
        epochs=15,
        learning_rate=1e-5,
        patience=5,
        augment=DEFAULT_PRESET,
        head_epochs=30,
        head_learning_rate=1e-3,
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

    def resolve(self, command, spec=None):
        """A copy with every None replaced by the command's or the base's default."""
        values = dataclasses.asdict(self)
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
        resolved = Settings(**values)
        resolved.check()
        return resolved

    def check(self):
        for name in ("batch_size", "epochs", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1. Received: {value}")
        if self.patience is not None and self.patience < 0:
            raise UsageError(f"--patience must be 0 or more. Received: {self.patience}")

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


class _Context:
    """What every training command starts from: settings, base entry, data set."""

    def __init__(self, command, data_dir, settings, reporter, command_line=None):
        import keras

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
        keras.utils.set_random_seed(self.settings.seed)
        self.skipped = []

    def decode(self):
        from smallcnn.pipeline import decode_split

        decoded = {}
        for name, split in self.dataset.splits.items():
            decoded[name] = decode_split(split, self.settings.image_size, self.reporter)
            self.skipped.extend([f.path, f.reason] for f in decoded[name].skipped)
        return decoded

    def config(self, run_dir, base_layer, extra=None):
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


def _callbacks(reporter, phase, patience, epochs, steps, checkpoint=None, plateau=False):
    import keras

    from smallcnn.callbacks import AtomicCheckpoint, ReportEpochs

    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
        ReportEpochs(reporter, phase, epochs, steps),
    ]
    if plateau:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.2, patience=max(1, patience // 2), min_lr=1e-7
            )
        )
    if checkpoint is not None:
        callbacks.append(AtomicCheckpoint(checkpoint))
    return callbacks


def _history_rows(history, phase, first_epoch=1):
    rows = []
    for i in range(len(history.history.get("loss", []))):
        row = {"epoch": first_epoch + i, "phase": phase}
        for key, values in history.history.items():
            row[key] = float(values[i])
        rows.append(row)
    return rows


def _best_epoch(rows):
    scored = [r for r in rows if "val_loss" in r]
    return min(scored, key=lambda r: r["val_loss"])["epoch"] if scored else None


def _finish(context, run_dir, model, config, rows, evaluations, extra_metrics=None):
    metrics = {
        "val_accuracy": evaluations["val"][1],
        "val_loss": evaluations["val"][0],
    }
    if "test" in evaluations:
        metrics["test_accuracy"] = evaluations["test"][1]
        metrics["test_loss"] = evaluations["test"][0]
    metrics.update(
        {
            "epochs": len(rows),
            "best_epoch": _best_epoch(rows),
            "seconds": round(time.time() - context.started, 2),
            "train_images": len(context.dataset.train),
            "skipped_images": len(context.skipped),
            **(extra_metrics or {}),
        }
    )
    runs.save_model(model, run_dir / runs.MODEL_FILE)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)
    runs.write_json(run_dir / runs.METRICS_FILE, metrics)
    runs.write_history(run_dir / runs.HISTORY_FILE, rows)
    return metrics


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
    from smallcnn import features as feature_cache
    from smallcnn.models import (build_classifier, build_head, compile_model,
                                 feature_extractor, make_optimizer)
    from smallcnn.pipeline import decode_split

    reporter = reporter or Reporter()
    context = _Context("extract", data_dir, settings or Settings(), reporter, command_line)
    s = context.settings
    base = build_base(context.spec, s.image_size, context.weights)
    extractor = feature_extractor(context.spec, base, s.image_size)
    run_dir = runs.new_run_dir("extract", out, overwrite=overwrite)

    features = {}
    for name, split in context.dataset.splits.items():
        key = feature_cache.cache_key(context.spec, context.weights, s.image_size, split.paths)
        cached = feature_cache.load_cached(key)
        if cached is not None:
            values, labels, _, skipped = cached
            reporter.note(f"{name}: {len(values)} feature vectors from the cache")
        else:
            decoded = decode_split(split, s.image_size, reporter)
            with reporter.progress(f"Extracting {name} features", len(decoded)) as advance:
                values = feature_cache.compute_features(extractor, decoded.images, progress=advance)
            labels = decoded.labels
            skipped = [[f.path, f.reason] for f in decoded.skipped]
            feature_cache.store(key, values, labels, decoded.paths, skipped)
        context.skipped.extend(skipped)
        features[name] = (values, np.asarray(labels, dtype=np.int32))

    head = build_head(
        features["train"][0].shape[1], len(context.dataset.class_names), s.dropout, s.hidden
    )
    steps = int(np.ceil(len(features["train"][0]) / s.batch_size))
    compile_model(
        head,
        make_optimizer(s.optimizer, s.learning_rate, s.momentum, s.nesterov, s.lr_schedule,
                       steps, s.epochs),
    )
    history = head.fit(
        *features["train"],
        validation_data=features["val"],
        batch_size=s.batch_size,
        epochs=s.epochs,
        shuffle=True,
        verbose=0,
        callbacks=_callbacks(reporter, "head", s.patience, s.epochs, steps,
                             plateau=s.lr_schedule == "plateau"),
    )
    rows = _history_rows(history, "head")
    evaluations = {
        name: [float(v) for v in head.evaluate(x, y, batch_size=256, verbose=0)]
        for name, (x, y) in features.items()
        if name != "train"
    }
    model = build_classifier(context.spec, base, head, s.image_size)
    config = context.config(run_dir, base.name)
    metrics = _finish(context, run_dir, model, config, rows, evaluations)
    return RunResult("extract", run_dir, context.dataset.class_names, metrics, rows, context.skipped)


def _image_datasets(context, decoded):
    from smallcnn.augment import build_augmenter
    from smallcnn.pipeline import batches

    s = context.settings
    augmenter = build_augmenter(s.augmentation(), seed=s.seed)
    train = decoded["train"]
    train_ds = batches(train.images, train.labels, s.batch_size, shuffle=True, seed=s.seed,
                       augmenter=augmenter)
    eval_ds = {
        name: batches(split.images, split.labels, s.batch_size)
        for name, split in decoded.items()
        if name != "train"
    }
    steps = int(np.ceil(len(train) / s.batch_size))
    return train_ds, eval_ds, steps


def _fit_images(context, model, train_ds, eval_ds, steps, phase, epochs, learning_rate, run_dir,
                initial_epoch=0):
    from smallcnn.models import compile_model, make_optimizer

    s = context.settings
    compile_model(
        model,
        make_optimizer(s.optimizer, learning_rate, s.momentum, s.nesterov, s.lr_schedule, steps,
                       epochs),
    )
    history = model.fit(
        train_ds,
        validation_data=eval_ds["val"],
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=0,
        callbacks=_callbacks(context.reporter, phase, s.patience, epochs, steps,
                             checkpoint=run_dir / runs.MODEL_FILE,
                             plateau=s.lr_schedule == "plateau"),
    )
    return _history_rows(history, phase, first_epoch=initial_epoch + 1)


def _evaluate(model, eval_ds):
    return {name: [float(v) for v in model.evaluate(ds, verbose=0)] for name, ds in eval_ds.items()}


def train(data_dir, settings=None, out=None, overwrite=False, reporter=None,
            command_line=None):
    """Trains the classifier end to end on augmented images.

    With `settings.freeze` (the default for pretrained bases) the base stays frozen and
    only the head learns; without it (the default for `--base small` or
    `--weights none`) every layer trains.

    Returns:
        A `RunResult`.
    """
    from smallcnn.models import build_classifier, build_head

    reporter = reporter or Reporter()
    context = _Context("train", data_dir, settings or Settings(), reporter, command_line)
    s = context.settings
    base = build_base(context.spec, s.image_size, context.weights)
    base.trainable = not s.freeze
    run_dir = runs.new_run_dir("train", out, overwrite=overwrite)
    decoded = context.decode()
    train_ds, eval_ds, steps = _image_datasets(context, decoded)
    head = build_head(context.spec.feature_width, len(context.dataset.class_names), s.dropout,
                      s.hidden)
    model = build_classifier(context.spec, base, head, s.image_size)
    config = context.config(run_dir, base.name)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)  # the checkpoint is usable at once
    rows = _fit_images(context, model, train_ds, eval_ds, steps, "frozen" if s.freeze else "full",
                       s.epochs, s.learning_rate, run_dir)
    metrics = _finish(context, run_dir, model, config, rows, _evaluate(model, eval_ds))
    return RunResult("train", run_dir, context.dataset.class_names, metrics, rows, context.skipped)


def finetune(data_dir=None, from_run=None, settings=None, out=None, overwrite=False,
             reporter=None, command_line=None):
    """Fine-tunes the top layers of the base together with the head, at a low learning rate.

    Starts from a run folder (`from_run`) or, without one, first trains the head with
    the base frozen, as `train` does. Then the top `settings.unfreeze` layers of the base
    that have weights (BatchNormalization layers excepted) are made trainable.

    Returns:
        A `RunResult` whose `unfrozen` lists the unfrozen layers.
    """
    from smallcnn.models import (build_classifier, build_head, count_params, find_base,
                                 unfreeze_top)

    reporter = reporter or Reporter()
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
    run_dir = runs.new_run_dir("finetune", out, overwrite=overwrite)
    decoded = context.decode()
    train_ds, eval_ds, steps = _image_datasets(context, decoded)
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
        config = context.config(run_dir, base.name, {"from_run": str(from_run)})
    else:
        base = build_base(context.spec, s.image_size, context.weights)
        base.trainable = False
        head = build_head(context.spec.feature_width, len(context.dataset.class_names),
                          s.dropout, s.hidden)
        model = build_classifier(context.spec, base, head, s.image_size)
        config = context.config(run_dir, base.name)
        runs.write_json(run_dir / runs.CONFIG_FILE, config)
        rows = _fit_images(context, model, train_ds, eval_ds, steps, "frozen", s.head_epochs,
                           s.head_learning_rate, run_dir)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)

    unfrozen = unfreeze_top(base, s.unfreeze)
    trainable = count_params(model.trainable_weights)
    reporter.note(
        f"Unfroze {len(unfrozen)} base layer(s): {', '.join(unfrozen)}; "
        f"{trainable:,} parameters now train (head included)."
    )
    rows += _fit_images(context, model, train_ds, eval_ds, steps, "finetune", s.epochs,
                        s.learning_rate, run_dir, initial_epoch=len(rows))
    finetune_start = next((r["epoch"] for r in rows if r["phase"] == "finetune"), None)
    metrics = _finish(context, run_dir, model, config, rows, _evaluate(model, eval_ds),
                      {"finetune_start_epoch": finetune_start, "unfrozen_layers": unfrozen,
                       "trainable_params": trainable})
    return RunResult("finetune", run_dir, context.dataset.class_names, metrics, rows,
                     context.skipped, unfrozen, trainable)
