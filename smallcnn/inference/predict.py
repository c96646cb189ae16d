"""Using a trained model: `smallcnn.load(RUN).predict(images)`."""

import dataclasses
from pathlib import Path

import numpy as np

from smallcnn.data.images import UnreadableImage, is_image_file, load_readable
from smallcnn.errors import DataError, UsageError, described
from smallcnn.model import runs


@dataclasses.dataclass
class Prediction:
    path: str  # None for an array given directly
    label: str
    probability: float
    top: list  # [{"label": ..., "probability": ...}], most probable first
    engine: str = None  # what ran the model, and why a faster way was not usable

    def to_dict(self):
        # Not dataclasses.asdict: its deep copy was a third of printing 1,000 predictions.
        return {"path": self.path, "label": self.label, "probability": self.probability,
                "top": [dict(entry) for entry in self.top], "engine": self.engine}


class Classifier:
    """A trained model with its class names and input size, ready to predict."""

    # From this many images on, the model runs in LiteRT (converted once, cached):
    # about 2.5x TensorFlow's throughput on a CPU, for a conversion of ~1.5 s. Once
    # converted, LiteRT runs any number of images, and TensorFlow is not even imported.
    litert_min_images = 64

    def __init__(self, model, config, run_dir=None):
        self._model = model
        self.config = config
        self.run_dir = run_dir
        self.class_names = list(config["class_names"])
        self.image_size = int(config["image_size"])
        self._litert = None
        self._without_tensorflow = None
        self._without_tensorflow_engine = None
        self._not_litert = None  # why the model cannot run in LiteRT, once known
        self._on_gpus = None  # the model on the GPUs (False: none here), once known
        self.engine = None  # what ran the last predictions (see `_runner`)

    @property
    def model(self):
        """The Keras model (a run's is loaded on first use: predicting may not need it)."""
        if self._model is None and self.run_dir is not None:
            self._model = runs.load_model(self.run_dir)
        return self._model

    # Image files are decoded this many at a time (predict, evaluate): any number of them
    # runs in bounded memory (1,000 decoded images at 224 px are 150 MB), at the same speed.
    chunk_images = 256

    def probabilities(self, images, batch_size=32, tta_views=1):
        """Class probabilities for a `(n, size, size, 3)` array of RGB pixels in [0, 255],
        averaged over `tta_views` views of each image (see `smallcnn.inference.tta`)."""
        from smallcnn.inference.tta import averaged, check_views

        images = self._checked(images)
        run = self._runner(len(images) * check_views(tta_views), batch_size)
        return averaged(run, images, tta_views)

    def _runner(self, count, batch_size=32):
        """The fastest way here to run `count` images: a function of a pixel array.

        Chosen once for all of them, so that every chunk of a folder runs in the same
        engine (LiteRT and Keras differ in the last digits). `self.engine` then says
        which way it is, and why a faster one was not usable.
        """
        if count >= self.litert_min_images:  # many images: the GPUs, where there are some
            if self._on_gpus is None:
                self._on_gpus = self._gpu_engine() or False
            if self._on_gpus:
                from smallcnn.runtime.engine import compute_features

                engine, self.engine = self._on_gpus
                return lambda images: compute_features(engine, images, batch_size)
        if self._without_tensorflow is None:
            self._without_tensorflow = self._base_engine_and_head()
            if not self._without_tensorflow and self._litert_path_cached():
                self._without_tensorflow = self._litert_engine()
            self._without_tensorflow_engine = self.engine
        if self._without_tensorflow:
            self.engine = self._without_tensorflow_engine
            return self._without_tensorflow
        if count >= self.litert_min_images:
            engine = self._litert_engine()
            if engine is not None:
                return engine
        why = self._not_litert
        if why is None and count < self.litert_min_images:
            why = (f"{count} image(s), under the {self.litert_min_images} that pay for "
                   "converting the model to LiteRT")
        self.engine = f"keras ({why})" if why else "keras"
        return lambda images: self._keras_probabilities(images, batch_size)

    def _gpu_engine(self):
        """On a machine with GPUs (`SMALLCNN_ENGINE` left at auto), the Keras model on
        every GPU TensorFlow sees (`CUDA_VISIBLE_DEVICES` chooses), each batch split
        across them, and what to call it; None elsewhere (LiteRT on a CPU is faster)."""
        from smallcnn.runtime import devices
        from smallcnn.runtime.engine import TensorFlowEngine, chosen_engine

        if chosen_engine() != "auto" or not devices.has_gpu_driver():
            return None
        placement = devices.place("auto", "float32")
        if placement.kind != "gpu":
            return None
        return (TensorFlowEngine(placement.working_copy(self.model), placement.strategy()),
                f"keras on {placement.describe()}")

    def batch_runner(self, batch_size=32):
        """The engine for a stream of images (a server): a function of `(n, size, size, 3)`
        pixel arrays, chosen once as for a folder of many images (LiteRT where usable);
        `self.engine` says which."""
        return self._runner(self.litert_min_images, batch_size)

    def _keras_probabilities(self, images, batch_size):
        # A few images: eager calls, no predict() graph to trace (most of a cold start).
        images = images.astype("float32")
        return np.concatenate([
            np.asarray(self.model(images[i : i + batch_size], training=False))
            for i in range(0, len(images), batch_size)
        ])

    def _checked(self, images):
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise UsageError(
                f"Images must be an array of shape (n, {self.image_size}, {self.image_size}, 3). "
                f"Received: shape={images.shape}"
            )
        return images

    def _base_engine_and_head(self):
        """For a run whose base kept its pretrained weights (extract, train --freeze): the
        base's cached LiteRT conversion, then the head in NumPy, or None when that is not
        certain to be the saved model.

        The run records which conversion its base is and where the head's weights are in
        model.keras (`Session.prediction_route`); the model file's SHA-256 must still be
        the one it wrote.
        """
        from smallcnn.runtime.engine import chosen_engine

        route = self.config.get("prediction")
        if not route or self.run_dir is None:
            return None
        if chosen_engine() == "tf":
            self._not_litert = "SMALLCNN_ENGINE=tf"
            return None
        from smallcnn.model import head, modelfile
        from smallcnn.runtime import cache
        from smallcnn.runtime.engine import open_litert

        model_file = Path(self.run_dir) / runs.MODEL_FILE
        if runs.file_sha256(model_file) != self.config.get("model_sha256"):
            self._not_litert = "model.keras is no longer the file the run wrote"
            return None
        if not cache.path("engines", route["feature_engine"]).is_file():
            self._not_litert = "the base's LiteRT conversion is no longer in the cache"
            return None
        try:
            weights = modelfile.read_head_weights(model_file, route["head_datasets"])
            engine = open_litert(route["feature_engine"], warn=self._warn)
        except (ImportError, *cache.DAMAGE) as error:
            self._not_litert = f"LiteRT is not usable here ({described(error)})"
            return None
        if engine is None:
            self._not_litert = "the base's LiteRT conversion was damaged"
            return None
        self.engine = "litert base + numpy head (the run's cached base conversion)"
        return lambda images: head.probabilities(weights, engine(images))

    def _warn(self, message):
        import warnings

        from smallcnn.runtime.cache import CacheWarning

        warnings.warn(message, CacheWarning, stacklevel=2)

    def _litert_name(self):
        if self.run_dir is None:
            return None
        name = runs.converted_model_name(self.run_dir)
        if name is None:
            self._not_litert = "SMALLCNN_ENGINE=tf"
        return name

    def _litert_path_cached(self):
        from smallcnn.runtime import cache

        name = self._litert_name()
        return name is not None and cache.path("engines", name).is_file()

    def _litert_engine(self):
        """The whole model in LiteRT (converted on first use, then cached)."""
        from smallcnn.runtime import cache

        name = self._litert_name()
        if self._litert is None and name is not None:
            from smallcnn.runtime.engine import (
                LiteRTEngine,
                convert_to_litert,
                open_litert,
            )

            try:
                self._litert = open_litert(name, warn=self._warn)
                self.engine = "litert (the run's cached conversion)"
                if self._litert is None:
                    stored = cache.store("engines", name,
                                         lambda temp: convert_to_litert(self.model, Path(temp),
                                                                        warn=self._warn),
                                         warn=self._warn, checksum=True)
                    self._litert = LiteRTEngine(stored) if stored else False
                    self.engine = "litert (converted now, cached)"
            except (ImportError, *cache.DAMAGE) as error:  # no LiteRT here: Keras predicts
                self._not_litert = f"LiteRT is not usable here ({described(error)})"
                self._litert = False
        return self._litert or None

    def predict(self, images, top_k=3, batch_size=32, tta=False):
        """Predicts classes for image paths (files or folders) or for a pixel array.

        `tta`: average over test-time augmented views (True: `smallcnn.inference.tta.DEFAULT_VIEWS`,
        or a number of views).

        Returns:
            A list of `Prediction`, one per image, in input order (folders expanded in
            sorted order).

        Raises:
            DataError: a path does not exist, or an image cannot be read (see
                `predict_paths` to predict the readable ones and list the others).
        """
        check_counts(top_k, batch_size)
        from smallcnn.inference.tta import views_of

        views = views_of(tta)
        if isinstance(images, np.ndarray):
            probabilities = self.probabilities(images, batch_size, views)
            return [self.prediction(None, row, top_k) for row in probabilities]
        predictions, failures = self.predict_paths(images, top_k, batch_size, tta=views)
        if failures:
            raise failures[0]
        return predictions

    def predict_paths(self, paths, top_k=3, batch_size=32, tta=False):
        """Like `predict` for files and folders, without stopping at unreadable images.

        Returns:
            `(predictions, failures)`: a `Prediction` for each readable image, and an
            `UnreadableImage` error for each image that cannot be read.
        """
        check_counts(top_k, batch_size)
        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = expand_paths(paths)
        from smallcnn.inference.tta import views_of

        probabilities, kept, failures = self.probabilities_of_files(paths, batch_size,
                                                                    tta_views=views_of(tta))
        return [self.prediction(paths[i], row, top_k)
                for i, row in zip(kept, probabilities)], failures

    def probabilities_of_files(self, paths, batch_size=32, progress=None, tta_views=1):
        """Class probabilities for image files, decoded `chunk_images` at a time.

        Args:
            progress: an optional callable, called with the number of files done so far.
            tta_views: views of each image to average over (see `smallcnn.inference.tta`).

        Returns:
            `(probabilities, kept, failures)`: a row per readable image, the indices into
            `paths` the rows come from (in order), and an `UnreadableImage` error for each
            file that cannot be read.
        """
        rows, kept, failures = [], [], []
        for chunk_rows, chunk_kept, chunk_failures in self.iter_probabilities(
                paths, batch_size, progress, tta_views):
            rows.append(chunk_rows)
            kept.append(chunk_kept)
            failures += chunk_failures
        if not rows:
            return np.zeros((0, len(self.class_names)), np.float32), np.zeros(0, int), failures
        return np.concatenate(rows), np.concatenate(kept), failures

    def iter_probabilities(self, paths, batch_size=32, progress=None, tta_views=1):
        """`probabilities_of_files`, one chunk of files at a time: yields `(probabilities,
        kept, failures)` per chunk, `kept` indexing `paths`; memory stays that of a chunk."""
        from smallcnn.inference.tta import averaged, check_views

        paths = [str(p) for p in paths]
        run = None
        for start in range(0, len(paths), self.chunk_images):
            chunk = paths[start : start + self.chunk_images]
            pixels, chunk_kept, failed = load_readable(chunk, self.image_size)
            rows = np.zeros((0, len(self.class_names)), np.float32)
            if len(chunk_kept):
                run = run or self._runner(len(paths) * check_views(tta_views), batch_size)
                rows = averaged(run, pixels, tta_views)
            if progress is not None:
                progress(start + len(chunk))
            yield rows, chunk_kept + start, failed

    def prediction(self, path, row, top_k):
        """The `Prediction` of one row of probabilities."""
        order = np.argsort(row)[::-1][: max(1, top_k)]
        top = [{"label": self.class_names[i], "probability": float(row[i])} for i in order]
        return Prediction(path, top[0]["label"], top[0]["probability"], top, self.engine)


def check_counts(top_k, batch_size):
    """Refuses a --top-k or --batch-size below 1."""
    for name, value in (("top-k", top_k), ("batch-size", batch_size)):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1. Received: {value}")


def load_run(path=None):
    """Like `load`, for what needs the run itself (its Keras model, settings and data):
    evaluate, report, visualize. An exported file is refused with one line."""
    if path is not None and is_exported(path):
        raise UsageError(
            f"{str(path)!r} is an exported model; this command needs the run folder it was "
            "exported from (the folder with model.keras and smallcnn.json)."
        )
    return load(path)


def is_exported(path):
    """Whether `path` names an exported model rather than a run folder (or a run's model)."""
    from smallcnn.runtime.formats import format_of

    path = Path(path).expanduser()
    if format_of(path) is None:
        return False
    return not (path.parent / runs.CONFIG_FILE).is_file() or path.name != runs.MODEL_FILE


def expand_paths(paths):
    """Image files from a list of files and folders (searched recursively)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not files:
                raise DataError(f"No images (jpg, png, bmp, gif, webp) in the folder {str(path)!r}.")
            found.extend(str(p) for p in files)
        elif path.is_file():
            found.append(str(path))
        else:
            raise DataError(f"No such image file or folder: {str(path)!r}.")
    return found


def load(path=None):
    """Loads a trained model from a run folder (default: the most recent run in ./runs), or
    an exported model (.tflite, .onnx, .keras, SavedModel folder) made by `smallcnn export`.

    Example:

        import smallcnn
        classifier = smallcnn.load("runs/extract-20261128-101500")
        for p in classifier.predict(["cat.jpg", "photos/"]):
            print(p.path, p.label, p.probability)
    """
    if path is not None and is_exported(path):
        from smallcnn.inference.exported import load_exported

        return load_exported(path)
    run_dir = runs.resolve_run(path) if path is not None else runs.latest_run()
    config = runs.read_config(run_dir)
    return Classifier(None, config, run_dir)  # the model is loaded when first needed


__all__ = ["Classifier", "Prediction", "load_run", "UnreadableImage", "load", "expand_paths"]
