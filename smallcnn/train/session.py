"""What every training command starts from, and how it ends: a `Session`.

A session resolves and checks the settings, finds and checks the data set, and holds
the decoded images and the base's features, so that no image is decoded twice and no
feature computed twice in one run. At the end it writes the run folder.
"""

import contextlib
import dataclasses
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from smallcnn import __version__
from smallcnn.data.dataset import find_dataset
from smallcnn.data.table import TableOptions
from smallcnn.errors import described
from smallcnn.model import runs
from smallcnn.model.bases import (
    DEFAULT_BASE,
    build_base,
    get_base,
    resolve_weights,
    weights_label,
)
from smallcnn.progress import Reporter
from smallcnn.runtime.devices import needs_tensorflow, place
from smallcnn.runtime.timings import Timings
from smallcnn.train import feature_store


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
    worker: str = None  # 'worker 1 of 2' on a cluster's task that writes no run (run_dir None)


def run_check(dataset, reporter):
    """Checks a data set (cached per file), shows what is wrong, refuses what cannot train."""
    from smallcnn.data.check import check_dataset, require_trainable

    report = check_dataset(dataset, reporter)
    reporter.check(report)
    require_trainable(report)
    return report


def seed_keras(seed):
    """Imports TensorFlow (quietly) and seeds Keras, NumPy and Python."""
    from smallcnn.runtime.quiet import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)


class Session:
    """Settings, base entry and data set of one training command, and its run's end."""

    def __init__(self, command, data_dir, settings, reporter=None, command_line=None,
                 before_data=None):
        """`before_data`, if given, is called with the session once every option is
        checked and the data folder is found, before any image is read: for refusals
        and preparations that need no image (an existing --out, the model)."""
        self.command = command
        self.command_line = command_line or shlex.join(["smallcnn", *sys.argv[1:]])
        self.reporter = reporter or Reporter()
        self.started = time.time()
        self.timings = Timings()  # where the run's time goes (metrics.json "timings")
        self.spec = get_base(settings.base or DEFAULT_BASE)
        self.settings = settings.resolve(command, self.spec)  # every option checked here
        self.weights = resolve_weights(self.spec, self.settings.weights)
        self.settings.weights = self.weights
        self.weights_source = weights_label(self.weights)
        in_cluster = command != "extract"  # extract runs on one machine only
        timed = needs_tensorflow(self.settings.devices, in_cluster)  # else none is imported
        with self.timings("import") if timed else contextlib.nullcontext():
            self.placement = place(self.settings.devices, self.settings.precision,
                                   note=self.reporter.note, use_cluster=in_cluster)
        self._worker_dir = None  # a worker's scratch run folder (only the chief keeps one)
        self.base = self.extractor = None
        self._engine = None
        self._warmup = None  # a helper process preparing the base (see `start_warmup`)
        self._stop = None
        self.checkpoint = None  # the run's AtomicCheckpoint, for all its phases (keras_loop)
        self.peer_interrupted = None  # set when another worker of a cluster was stopped
        self.dataset = find_dataset(data_dir, self.settings.val_split, self.settings.seed,
                                    TableOptions.of(self.settings))
        if before_data is not None:
            before_data(self)
        self.reporter.dataset(self.dataset)
        with self.timings("scan"):
            try:
                self.check = run_check(self.dataset, self.reporter)
            except BaseException:  # a data set that cannot train: the helper is not needed
                if self._warmup is not None:
                    self._warmup.cancel()
                raise
        if command != "extract":  # extract needs TensorFlow only to compute features
            with self.timings("import"):
                seed_keras(self.settings.seed)
        # Unreadable files are left out before anything is decoded.
        self.skipped = {bad["path"]: bad["reason"] for bad in self.check.unreadable}
        for name, split in self.dataset.splits.items():
            self.dataset.splits[name] = split.without(self.skipped)
        self._decoded = {}
        self._features = {}
        self.base_seconds = 0.0  # time in the base's forward pass for feature extraction
        self.base_images = 0

    def decoded(self, name, shard=None):
        """The decoded images of one split (decoded on first use only); with `shard`,
        `(index, count)`, of every count-th image from the index-th only (a worker's)."""
        from smallcnn.data.pipeline import decode_split

        key = name if shard is None else (name, *shard)
        if key not in self._decoded:
            split = self.dataset.splits[name]
            if shard is not None:
                index, count = shard
                split = split.without(set(split.paths) - set(split.paths[index::count]))
            with self.timings("decode"):
                decoded = decode_split(split, self.settings.image_size, self.reporter)
            self.skipped.update((f.path, f.reason) for f in decoded.skipped)
            self._decoded[key] = decoded
        return self._decoded[key]

    def features(self, name):
        """Pooled base features and labels of one split (see `feature_store`)."""
        if name not in self._features:
            self._features[name] = feature_store.split_features(self, name)
        return self._features[name]

    def eval_splits(self):
        return [name for name in self.dataset.splits if name != "train"]

    def build_base(self):
        s = self.settings
        with self.timings("import"):
            seed_keras(s.seed)  # before Keras is first imported, to import TensorFlow quietly
            from smallcnn.model.networks import feature_extractor
        with self.timings("build"):
            self.base = build_base(self.spec, s.image_size, self.weights)
            self.extractor = feature_extractor(self.spec, self.base, s.image_size)
        return self.base

    def start_warmup(self, template=None):
        """Starts preparing the base's LiteRT conversion (and, with `template`, extract's
        model template) in a helper process, if the cache lacks them: see
        `smallcnn.train.warmup`. Called before the images are read, to overlap them."""
        from smallcnn.runtime.engine import chosen_engine
        from smallcnn.train import warmup

        # (A cluster's worker decodes only its shard: nothing to overlap.)
        if chosen_engine(self.settings.engine, self.placement) != "tf" and \
                not self.placement.multi_worker:
            self._warmup = warmup.start(self.spec, self.weights, self.settings.image_size,
                                        self.settings.seed, template, self.reporter.warning)

    def wait_for_warmup(self, engine_only=False):
        """Waits for the helper process, if one runs (with `engine_only`, only until the
        base's conversion is cached); says in one line if it failed (the run then prepares
        the base itself)."""
        warmup = self._warmup
        if warmup is not None:
            for name in self.dataset.splits:  # decode what the base will run on meanwhile
                if warmup.running() and not feature_store.is_cached(self, name):
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
            with self.timings("convert"):
                self._engine = feature_engine(self.spec, self.weights,
                                              self.settings.image_size, extractor,
                                              self.settings.engine, self.reporter,
                                              self.placement)
        return self._engine

    def class_weights(self):
        """{class index: weight} for --class-weight balanced, else None."""
        if self.settings.class_weight != "balanced":
            return None
        counts = np.bincount(self.dataset.train.labels, minlength=len(self.dataset.class_names))
        return {i: float(counts.sum() / (len(counts) * c)) for i, c in enumerate(counts) if c}

    @property
    def interrupted(self):
        """The signal that asked training to stop, if one did (on a cluster, on any worker)."""
        if self._stop is not None and self._stop.received:
            return self._stop.received
        return self.peer_interrupted

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
            # Absolute: evaluate, report, export and --resume work from any folder.
            "data": os.path.abspath(self.dataset.data),
            "data_counts": self.dataset.counts(),
            "settings": settings,
            "distribution": self.placement.record(),
            **(extra or {}),
        }

    def new_run_dir(self, out=None, overwrite=False):
        """The run folder; on a worker other than the chief, a scratch folder that
        `finish` deletes (only the chief writes the run)."""
        if self.placement.is_chief:
            return runs.new_run_dir(self.command, out, overwrite=overwrite)
        import tempfile

        self._worker_dir = Path(tempfile.mkdtemp(prefix="smallcnn-worker-"))
        return self._worker_dir

    def finish(self, run_dir, model, config, rows, evaluations, extra_metrics=None,
               head_weights=None):
        """Writes the run folder; returns the metrics.

        `model` is the Keras model to save, or anything with Keras' `save(path)`.
        `head_weights` (Keras' order), given when the base kept its pretrained weights
        frozen, let `predict` run the model as the base's cached LiteRT conversion and the
        head in NumPy, without TensorFlow (see `prediction_route`).
        """
        if self._warmup is not None:  # not needed after all (every feature was cached)
            self._warmup.cancel()
            self._warmup = None
        metrics = {"val_accuracy": evaluations["val"][1], "val_loss": evaluations["val"][0]}
        if "test" in evaluations:
            metrics["test_accuracy"] = evaluations["test"][1]
            metrics["test_loss"] = evaluations["test"][0]
        metrics.update(
            {
                "epochs": len(rows),
                "best_epoch": best_epoch(rows),
                "seconds": round(time.time() - self.started, 2),
                "train_images": len(self.dataset.train),
                "skipped_images": len(self.skipped),
                "class_weights": self.class_weights(),
                "class_imbalance": _imbalance(self.dataset),
                "engine": self._engine.name if self._engine is not None else None,
                "base_images_per_second": (round(self.base_images / self.base_seconds, 1)
                                           if self.base_seconds else None),
                "ran_on": self.placement.describe(),
                **(extra_metrics or {}),
            }
        )
        if self.interrupted:
            metrics["interrupted"] = self.interrupted
        if not self.placement.is_chief:  # a cluster's worker: the chief writes the run
            import shutil

            if self._worker_dir is not None:
                shutil.rmtree(self._worker_dir, ignore_errors=True)
            metrics["timings"] = self.timings.report()
            metrics["seconds"] = metrics["timings"]["total"]
            return metrics
        model_file = run_dir / runs.MODEL_FILE
        with self.timings("save"):
            runs.save_model(model, model_file)
            # The model file as written: `predict` can tell it is the one described here.
            config["model_sha256"] = runs.file_sha256(model_file)
            route = self.prediction_route(model_file, head_weights)
            if route is not None:
                config["prediction"] = route
            runs.write_json(run_dir / runs.CONFIG_FILE, config)
            runs.write_history(run_dir / runs.HISTORY_FILE, rows)
        with self.timings("pictures"):
            self.plot_curves(run_dir, rows, metrics["best_epoch"])
        if route is None and self.command != "extract":  # predict would convert the model
            with self.timings("convert_model"):
                self.convert_for_predict(run_dir, model)
        metrics["timings"] = self.timings.report()  # written last, so it covers the rest
        metrics["seconds"] = metrics["timings"]["total"]
        runs.write_json(run_dir / runs.METRICS_FILE, metrics)
        return metrics

    def prediction_route(self, model_file, head_weights):
        """How `predict` can run the saved model without TensorFlow: the base's cached
        LiteRT conversion, then the head in NumPy, its weights read from `model_file`.

        None where the model is not certainly that: no `head_weights` (the base trained),
        random base weights, no cached conversion, or the head's weights not found (each
        exactly once) in the file.
        """
        from smallcnn.model import modelfile
        from smallcnn.runtime import cache
        from smallcnn.runtime.engine import chosen_engine, litert_name

        if head_weights is None or self.weights == "none" or \
                chosen_engine(self.settings.engine, self.placement) == "tf":
            return None
        name = litert_name(self.spec, self.weights, self.settings.image_size)
        if not cache.is_stored("engines", name):
            return None
        datasets = modelfile.find_datasets(model_file, head_weights)
        return None if datasets is None else {"feature_engine": name, "head_datasets": datasets}

    def convert_for_predict(self, run_dir, model):
        """Caches the saved model's LiteRT conversion (about 2 s for MobileNetV2), so that
        `predict` runs it without TensorFlow from the first image on."""
        import importlib.util

        from smallcnn.runtime import cache

        name = runs.converted_model_name(run_dir)
        if name is None or self.settings.engine == "tf" or \
                os.environ.get("SMALLCNN_CONVERT_RUNS") == "0" or \
                importlib.util.find_spec("ai_edge_litert") is None:
            return
        from smallcnn.runtime.engine import convert_to_litert

        try:
            cache.store("engines", name,
                        lambda temp: convert_to_litert(model, Path(temp),
                                                       warn=self.reporter.warning),
                        warn=self.reporter.warning, checksum=True)
        except Exception as error:  # predict converts or uses TensorFlow instead
            self.reporter.warning(f"Could not convert the model to LiteRT for predict "
                                  f"({described(error)}); predict will run it "
                                  "through TensorFlow or convert it then.")

    def plot_curves(self, run_dir, rows, best):
        """RUN/curves.png; a picture that cannot be drawn costs a warning, not the run."""
        from smallcnn.runtime.plots import curves_figure, save_figure

        try:
            save_figure(curves_figure(rows, best, f"{self.command}: {run_dir.name}"),
                        run_dir / runs.CURVES_FILE)
        except Exception as error:
            self.reporter.warning(f"Could not draw {runs.CURVES_FILE} "
                                  f"({described(error)}); the run is saved without it.")

    def result(self, run_dir, metrics, rows, **extra):
        placement, worker = self.placement, None
        if not placement.is_chief:
            run_dir, worker = None, f"worker {placement.worker_index} of {placement.workers}"
        return RunResult(self.command, run_dir, self.dataset.class_names, metrics, rows,
                         [[p, r] for p, r in self.skipped.items()],
                         interrupted=self.interrupted, worker=worker, **extra)


def _imbalance(dataset):
    """Largest over smallest class in the training split."""
    counts = [c for c in dataset.counts()["train"] if c]
    return round(max(counts) / min(counts), 2) if counts else None


def best_epoch(rows):
    scored = [r for r in rows if "val_loss" in r]
    return min(scored, key=lambda r: r["val_loss"])["epoch"] if scored else None
