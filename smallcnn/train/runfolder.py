"""The writer of a run folder: `RunWriter`, and what a command returns: `RunResult`.

A run folder holds model.keras, smallcnn.json (the config), history.csv, metrics.json,
curves.png and, with --tensorboard, logs (see `smallcnn.model.runs`). On a cluster only
the chief writes one; another worker trains in a scratch folder deleted at the end.
"""

import dataclasses
import datetime
import os
import time
from pathlib import Path

from smallcnn import __version__
from smallcnn.errors import described
from smallcnn.model import runs


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


def best_epoch(rows):
    scored = [r for r in rows if "val_loss" in r]
    return min(scored, key=lambda r: r["val_loss"])["epoch"] if scored else None


def _imbalance(dataset):
    """Largest over smallest class in the training split."""
    counts = [c for c in dataset.counts()["train"] if c]
    return round(max(counts) / min(counts), 2) if counts else None


class RunWriter:
    """Writes the run folder of a `RunPlan` whose images and features come from `source`
    (a `FeatureSource`): its config, its checkpoint while training, and at the end the
    model, history, curves and metrics."""

    def __init__(self, plan, source, reporter, timings):
        self.plan, self.source, self.reporter, self.timings = plan, source, reporter, timings
        self._worker_dir = None  # a worker's scratch run folder (only the chief keeps one)
        self._checkpoint = None

    def new_run_dir(self, out=None, overwrite=False):
        """The run folder; on a worker other than the chief, a scratch folder that
        `finish` deletes (only the chief writes the run)."""
        if self.plan.placement.is_chief:
            return runs.new_run_dir(self.plan.command, out, overwrite=overwrite,
                                    data=self.plan.data_paths(), note=self.reporter.note,
                                    warn=self.reporter.warning)
        import tempfile

        self._worker_dir = Path(tempfile.mkdtemp(prefix="smallcnn-worker-"))
        return self._worker_dir

    def checkpoint(self, run_dir, model):
        """The run's checkpoint of `model` in `run_dir`, one for all its phases, made on
        first use (see `callbacks.AtomicCheckpoint`); None on a worker other than the
        chief (the chief writes the run)."""
        if not self.plan.placement.is_chief:
            return None
        if self._checkpoint is None:
            from smallcnn.train.callbacks import AtomicCheckpoint

            self._checkpoint = AtomicCheckpoint(run_dir / runs.MODEL_FILE, model)
        return self._checkpoint

    def start_checkpoint(self, run_dir, model, val, rows=(), saved=True):
        """Tells the run's checkpoint what training starts from: `model` as it is now, its
        `(val_loss, val_accuracy)` `val` (or None), after the epochs of `rows`; `saved`: it
        is the run's model.keras already (a resumed run), else it is written within the
        interval unless a better one comes (fine-tuning from another run)."""
        checkpoint = self.checkpoint(run_dir, model)
        if checkpoint is not None:
            checkpoint.start_from(val and val[0], rows, saved)

    def config(self, base_layer, extra=None):
        plan = self.plan
        settings = dataclasses.asdict(plan.settings)
        settings["augmentation"] = dataclasses.asdict(plan.settings.augmentation())
        return {
            "format": 1,
            "smallcnn_version": __version__,
            "command": plan.command,
            "command_line": plan.command_line,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "class_names": plan.dataset.class_names,
            "base": plan.spec.name,
            "base_layer": base_layer,
            "weights": plan.weights_source,
            "image_size": plan.settings.image_size,
            "preprocessing": plan.spec.preprocessing,
            # Absolute: evaluate, report, export and --resume work from any folder.
            "data": os.path.abspath(plan.dataset.data),
            "data_counts": plan.dataset.counts(),
            "settings": settings,
            "distribution": plan.placement.record(),
            **(extra or {}),
        }

    def metrics(self, rows, evaluations, extra_metrics=None, interrupted=None):
        """metrics.json's content, but for its timings."""
        plan, source = self.plan, self.source
        metrics = {"val_accuracy": evaluations["val"][1], "val_loss": evaluations["val"][0]}
        if "test" in evaluations:
            metrics["test_accuracy"] = evaluations["test"][1]
            metrics["test_loss"] = evaluations["test"][0]
        metrics.update({
            "epochs": len(rows),
            "best_epoch": best_epoch(rows),
            "seconds": round(time.time() - plan.started, 2),
            "train_images": len(plan.dataset.train),
            "skipped_images": len(source.skipped),
            "class_weights": plan.class_weights(),
            "class_imbalance": _imbalance(plan.dataset),
            "engine": source.engine_name(),
            "engine_precision": source.engine_precision(),
            "base_images_per_second": source.base_images_per_second(),
            "ran_on": plan.placement.describe(),
            **(extra_metrics or {}),
        })
        if interrupted:
            metrics["interrupted"] = interrupted
        return metrics

    def finish(self, run_dir, model, config, rows, evaluations, extra_metrics=None,
               head_weights=None, interrupted=None):
        """Writes the run folder; returns the metrics.

        `model` is the Keras model to save, or anything with Keras' `save(path)`.
        `head_weights` (Keras' order), given when the base kept its pretrained weights
        frozen, let `predict` run the model as the base's cached LiteRT conversion and the
        head in NumPy, without TensorFlow (see `prediction_route`). `interrupted`: the
        stop request that ended training early, if one did.
        """
        self.source.close()  # a helper still preparing the base is not needed after all
        metrics = self.metrics(rows, evaluations, extra_metrics, interrupted)
        if not self.plan.placement.is_chief:  # a cluster's worker: the chief writes the run
            import shutil

            if self._worker_dir is not None:
                shutil.rmtree(self._worker_dir, ignore_errors=True)
        else:
            self._write(run_dir, model, config, rows, metrics, head_weights)
        metrics["timings"] = self.timings.report()  # written last, so it covers the rest
        metrics["seconds"] = metrics["timings"]["total"]
        if self.plan.placement.is_chief:
            runs.write_json(run_dir / runs.METRICS_FILE, metrics)
        return metrics

    def _write(self, run_dir, model, config, rows, metrics, head_weights):
        """The model, config, history and curves (the model also converted for predict)."""
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
        if route is None and self.plan.command != "extract":  # predict would convert it
            with self.timings("convert_model"):
                self.convert_for_predict(run_dir, model)

    def prediction_route(self, model_file, head_weights):
        """How `predict` can run the saved model without TensorFlow: the base's cached
        LiteRT conversion, then the head in NumPy, its weights read from `model_file`.

        None where the model is not certainly that: no `head_weights` (the base trained),
        random base weights, no cached conversion, or the head's weights not found (each
        exactly once) in the file.
        """
        from smallcnn.model import modelfile
        from smallcnn.runtime import cache
        from smallcnn.runtime.engine import chosen_engine
        from smallcnn.runtime.litert import litert_name

        plan = self.plan
        if head_weights is None or plan.weights == "none" or \
                chosen_engine(plan.settings.engine, plan.placement) == "tensorflow":
            return None
        name = litert_name(plan.spec, plan.weights, plan.settings.image_size)
        if not cache.is_stored("engines", name):
            return None
        datasets = modelfile.find_datasets(model_file, head_weights)
        if datasets is None:
            return None
        engine, precision = self.source.engine_used()  # predict runs the base as they ran
        return {"feature_engine": name, "head_datasets": datasets, "engine": engine,
                "precision": precision, "head_input": self.source.head_input.to_dict()}

    def convert_for_predict(self, run_dir, model):
        """Caches the saved model's LiteRT conversion (about 2 s for MobileNetV2), so that
        `predict` runs it without TensorFlow from the first image on."""
        import importlib.util

        from smallcnn.runtime import cache
        from smallcnn.runtime.engine import canonical

        name = runs.converted_model_name(run_dir)
        if name is None or canonical(self.plan.settings.engine) == "tensorflow" or \
                os.environ.get("SMALLCNN_CONVERT_RUNS") == "0" or \
                importlib.util.find_spec("ai_edge_litert") is None:
            return
        from smallcnn.runtime.litert import convert_to_litert

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
            save_figure(curves_figure(rows, best, f"{self.plan.command}: {run_dir.name}"),
                        run_dir / runs.CURVES_FILE)
        except Exception as error:
            self.reporter.warning(f"Could not draw {runs.CURVES_FILE} "
                                  f"({described(error)}); the run is saved without it.")

    def result(self, run_dir, metrics, rows, interrupted=None, **extra):
        placement, worker = self.plan.placement, None
        if not placement.is_chief:
            run_dir, worker = None, f"worker {placement.worker_index} of {placement.workers}"
        return RunResult(self.plan.command, run_dir, self.plan.dataset.class_names, metrics,
                         rows, [[p, r] for p, r in self.source.skipped.items()],
                         interrupted=interrupted, worker=worker, **extra)
