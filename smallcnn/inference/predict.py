"""A run folder's model, ready to predict (`smallcnn.load(RUN).predict(images)`), in the
fastest engine here; `load` opens a run folder or an exported file."""

from pathlib import Path

import numpy as np

from smallcnn.data.images import UnreadableImage
from smallcnn.errors import UsageError, described
from smallcnn.inference.classifier import BATCH_SIZE, ImageClassifier, Prediction, expand_paths
from smallcnn.inference.exported import is_exported, load_exported
from smallcnn.model import runs


class Classifier(ImageClassifier):
    """A run folder's model, run in the fastest engine here: the base's cached LiteRT
    conversion and the head in NumPy, the whole model in LiteRT, Keras on the GPUs, or Keras."""

    # From this many images on, the model runs in LiteRT (converted once, cached):
    # about 2.5x TensorFlow's throughput on a CPU, for a conversion of ~1.5 s. Once
    # converted, LiteRT runs any number of images, and TensorFlow is not even imported.
    litert_min_images = 64

    def __init__(self, model, config, run_dir=None):
        super().__init__(config, run_dir)
        self._model = model
        self._litert = None
        self._without_tensorflow = None
        self._without_tensorflow_engine = None
        self._not_litert = None  # why the model cannot run in LiteRT, once known
        self._on_gpus = None  # the model on the GPUs (False: none here), once known
        self._said = []  # what opening an engine said (which one, and why)

    @property
    def model(self):
        """The Keras model (a run's is loaded on first use: predicting may not need it)."""
        if self._model is None and self.run_dir is not None:
            self._model = runs.load_model(self.run_dir)
        return self._model

    def _runner(self, count, batch_size=BATCH_SIZE):
        """The fastest way here to run `count` images (None: a stream of any number): a
        function of a pixel array.

        Chosen once for all of them, so that every chunk of a folder runs in the same
        engine (LiteRT and Keras differ in the last digits). `self.engine` then says
        which way it is, and why a faster one was not usable. A bf16 route's
        `second_look.SecondLook` is returned as it is: TTA (`tta.averaged`) lets it
        average the views before it looks again.
        """
        many = count is None or count >= self.litert_min_images
        if many:  # the GPUs, where there are some
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
        if many:
            engine = self._litert_engine()
            if engine is not None:
                return engine
        why = self._not_litert
        if why is None and not many:
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

    def _keras_probabilities(self, images, batch_size):
        # A few images: eager calls, no predict() graph to trace (most of a cold start).
        images = images.astype("float32")
        return np.concatenate([
            np.asarray(self.model(images[i : i + batch_size], training=False))
            for i in range(0, len(images), batch_size)
        ])

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
        if chosen_engine() == "tensorflow":
            self._not_litert = "SMALLCNN_ENGINE=tensorflow"
            return None
        from smallcnn.model import head, modelfile
        from smallcnn.model.taps import HeadInput
        from smallcnn.runtime import cache

        model_file = Path(self.run_dir) / runs.MODEL_FILE
        if runs.file_sha256(model_file) != self.config.get("model_sha256"):
            self._not_litert = "model.keras is no longer the file the run wrote"
            return None
        if not cache.path("engines", route["feature_engine"]).is_file():
            self._not_litert = "the base's LiteRT conversion is no longer in the cache"
            return None
        try:
            weights = modelfile.read_head_weights(model_file, route["head_datasets"])
            engine, why = self._base_engine(route)
        except (ImportError, *cache.DAMAGE) as error:
            self._not_litert = f"LiteRT is not usable here ({described(error)})"
            return None
        if engine is None:
            self._not_litert = "the base's LiteRT conversion was damaged"
            return None
        head_input = HeadInput.from_dict(route.get("head_input")) or (lambda features: features)

        def predicted(base):
            return lambda images: head.probabilities(weights, head_input(base(images)))

        predict, again = predicted(engine), ""
        if engine.precision == "bfloat16":
            from smallcnn.inference.second_look import SecondLook

            predict = SecondLook(predict, lambda: predicted(self._float32_base(route, engine)))
            again = ", close calls again in float32"
        self.engine = (f"{engine.name} {engine.precision} base + numpy head{again} "
                       f"(the run's cached base conversion{why})")
        return predict

    def _float32_base(self, route, fast):
        """The base's cached conversion in float32, for `second_look.SecondLook`
        (`second_look.Float32Engine`); where it cannot be opened, `fast` itself, said in
        one line."""
        from smallcnn.inference.second_look import Float32Engine
        from smallcnn.runtime import cache

        def opened(path):
            return Float32Engine(path, self._warn)

        try:
            exact = cache.load("engines", route["feature_engine"], opened, warn=self._warn,
                               checksum=True)
            why = "the base's conversion was damaged"
        except UsageError as error:
            exact, why = None, described(error)
        if exact is None:
            self._warn(f"Close calls stay as {fast.precision} gave them: float32 cannot run "
                       f"({why}).")
            return fast
        return exact

    def _base_engine(self, route):
        """The base's cached conversion opened in the engine and precision its features
        were computed in (a run before OpenVINO: LiteRT), unless $SMALLCNN_ENGINE forces
        another; and, where it is not that one, why (for `self.engine`)."""
        from smallcnn.runtime import cache
        from smallcnn.runtime.engine import chosen_engine, open_engine

        trained = (route.get("engine", "litert"), route.get("precision", "float32"))
        requested = chosen_engine()
        if requested == "auto":  # OpenVINO's, or LiteRT (saying why) where it cannot run
            requested = "auto" if trained[0] == "openvino" else trained[0]
        engine = requested
        opened = cache.load("engines", route["feature_engine"],
                            lambda path: open_engine(path, engine, _Lines(self._said),
                                                     precision=trained[1]),
                            warn=self._warn, checksum=True)
        why = ""
        if opened is not None and (opened.name, opened.precision) != trained:
            why = (f"; its features came from {' '.join(trained)}: "
                   f"{self._said[-1] if self._said else 'SMALLCNN_ENGINE=' + engine}")
        return opened, why

    def _said_why(self):
        """Why OpenVINO was not used, where the engine said so (for `self.engine`)."""
        return "".join(f"; {line}" for line in self._said[-1:] if "not used" in line)

    def _warn(self, message):
        import warnings

        from smallcnn.runtime.cache import CacheWarning

        warnings.warn(message, CacheWarning, stacklevel=2)

    def _litert_name(self):
        if self.run_dir is None:
            return None
        name = runs.converted_model_name(self.run_dir)
        if name is None:
            self._not_litert = "SMALLCNN_ENGINE=tensorflow"
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
            from smallcnn.runtime.engine import chosen_engine, open_engine
            from smallcnn.runtime.litert import convert_to_litert

            def opened(path):
                # A model trained whole in float32 runs in float32 (bf16 moves its
                # probabilities off Keras' ones): LiteRT, about as fast as OpenVINO's
                # float32 here (bench/engines.py), unless OpenVINO is asked for.
                engine = chosen_engine()
                return open_engine(path, "litert" if engine == "auto" else engine,
                                   _Lines(self._said), precision="float32")

            try:
                self._litert = cache.load("engines", name, opened, warn=self._warn,
                                          checksum=True)
                how = "the run's cached conversion"
                if self._litert is None:
                    stored = cache.store("engines", name,
                                         lambda temp: convert_to_litert(self.model, Path(temp),
                                                                        warn=self._warn),
                                         warn=self._warn, checksum=True)
                    self._litert = opened(stored) if stored else False
                    how = "converted now, cached"
                if self._litert:
                    self.engine = (f"{self._litert.name} {self._litert.precision} "
                                   f"({how}{self._said_why()})")
            except (ImportError, *cache.DAMAGE) as error:  # no LiteRT here: Keras predicts
                self._not_litert = f"LiteRT is not usable here ({described(error)})"
                self._litert = False
        return self._litert or None


class _Lines:
    """A reporter that keeps the lines an engine says, for the classifier's `engine`."""

    def __init__(self, lines):
        self._lines = lines

    def note(self, text):
        self._lines.append(text)

    warning = note


def load_run(path=None):
    """Like `load`, for what needs the run itself (its Keras model, settings and data):
    evaluate, report, visualize. An exported file is refused with one line."""
    if path is not None and is_exported(path):
        raise UsageError(
            f"{str(path)!r} is an exported model; this command needs the run folder it was "
            "exported from (the folder with model.keras and smallcnn.json)."
        )
    return load(path)


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
        return load_exported(path)
    run_dir = runs.resolve_run(path) if path is not None else runs.latest_run()
    config = runs.read_config(run_dir)
    return Classifier(None, config, run_dir)  # the model is loaded when first needed


# Prediction, UnreadableImage and expand_paths are here too: what a caller of `load` meets.
__all__ = ["Classifier", "Prediction", "load_run", "UnreadableImage", "load", "expand_paths"]
