"""Running a frozen conv base for inference, in the fastest engine available.

A frozen base needs no gradients, so its forward pass can run outside TensorFlow's
training graph. On a CPU, LiteRT (the successor of tf.lite) with XNNPACK runs
MobileNetV2 about twice as fast as TensorFlow (measured here: ~220 vs ~115 images/s
on 2 cores at 224 px), and OpenVINO runs the same converted file faster again in
bfloat16 on CPUs that have it (`smallcnn.runtime.openvino`). Both read the base's
LiteRT conversion (`smallcnn.runtime.litert`), cached beside the feature cache, so the
conversion (several seconds) is paid once per base, weights and image size. This module
chooses the engine (`chosen_engine`, `expected_engine`) and opens it (`open_engine`,
`feature_engine`).
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from smallcnn.errors import UsageError, described
from smallcnn.runtime import cache, litert  # (called through the module: one place to patch)

ENGINES = ("auto", "openvino", "litert", "tensorflow")
ALIASES = {"tf": "tensorflow"}  # the name TensorFlow's engine had before OpenVINO's
CHOICES = ENGINES + tuple(ALIASES)  # what --engine and $SMALLCNN_ENGINE accept
RACED = ("litert", "openvino")  # what auto races on a .tflite in float32 (`race`)


class TensorFlowEngine:
    """The extractor in TensorFlow; with a `tf.distribute` strategy (the extractor built
    in its scope), each batch is split across the strategy's replicas."""

    name = "tensorflow"

    def __init__(self, extractor, strategy=None, precision="float32"):
        import tensorflow as tf

        self.precision = precision

        self._strategy = strategy if strategy and strategy.num_replicas_in_sync > 1 else None
        self._run = tf.function(lambda x: tf.cast(extractor(x, training=False), tf.float32),
                                reduce_retracing=True)

    def __call__(self, images):
        import tensorflow as tf

        if self._strategy is None:
            return self._run(tf.cast(images, tf.float32)).numpy()
        strategy = self._strategy
        parts = np.array_split(np.asarray(images), strategy.num_replicas_in_sync)
        shards = strategy.experimental_distribute_values_from_function(
            lambda context: tf.cast(parts[context.replica_id_in_sync_group], tf.float32))
        outputs = strategy.run(self._run, args=(shards,))
        return np.concatenate([t.numpy() for t in strategy.experimental_local_results(outputs)])


def canonical(engine):
    """An engine's name with its alias resolved ('tf' is 'tensorflow')."""
    return ALIASES.get(engine, engine)


def chosen_engine(requested="auto", placement=None):
    """The engine to use: the one requested; for 'auto', `$SMALLCNN_ENGINE` when set,
    else 'tensorflow' when the `devices.Placement` is on GPUs or several devices (LiteRT
    and OpenVINO run on one CPU) or in mixed precision (they run the float32
    conversion), else 'auto' (OpenVINO where it runs, else LiteRT: `open_engine`)."""
    engine = requested
    if requested == "auto":
        engine = os.environ.get("SMALLCNN_ENGINE") or "auto"
    if engine not in CHOICES:
        where = "SMALLCNN_ENGINE" if requested == "auto" else "--engine"
        raise UsageError(f"Unknown {where} {engine!r}. Choose one of: {', '.join(ENGINES)}.")
    if engine == "auto" and placement is not None and \
            (placement.kind == "gpu" or len(placement.devices) > 1 or
             placement.precision != "float32"):
        return "tensorflow"
    return canonical(engine)


def expected_engine(requested="auto", placement=None, model=None, precision=None):
    """`(engine, precision)` that `feature_engine` is to run, known without opening it (a
    feature cache key names them): OpenVINO's precision is `precision`, by default the
    CPU's best; in float32 under auto, LiteRT where auto's race on the .tflite `model`
    recorded LiteRT's win."""
    engine = chosen_engine(requested, placement)
    if engine == "tensorflow":
        return engine, placement.precision if placement is not None else "float32"
    if engine in ("auto", "openvino"):
        from smallcnn.runtime import openvino, race

        if openvino.unavailable() is None:
            precision = precision or openvino.best_precision()
            if engine == "auto" and precision == "float32" and model is not None and \
                    Path(model).is_file():
                result = race.recorded(openvino.race_name(model), RACED)
                if result is not None and result["winner"] == "litert":
                    return "litert", litert.LiteRTEngine.precision
            return openvino.NAME, precision
        if engine == "openvino":
            return engine, None  # opening it says why it cannot run
    return "litert", litert.LiteRTEngine.precision


def engine_identity(engine, precision):
    """What a feature cache key records of the engine that made the features: nothing for
    LiteRT and TensorFlow (their float32 agree to ~1e-5, and keys stay as they were);
    OpenVINO's name, precision and version."""
    if engine != "openvino":
        return {}
    import importlib.metadata

    return {"engine": [engine, precision, importlib.metadata.version("openvino")]}


def open_engine(tflite_path, engine="auto", reporter=None, placement=None, precision=None):
    """A .tflite model (a cached base conversion, or any other) opened in the engine
    chosen: a callable from a uint8/float batch to float32 outputs, with `.name` and
    `.precision`.

    'openvino' and 'auto' open it in OpenVINO, in `precision` (by default the CPU's best:
    `openvino.best_precision`). Where that is float32, 'auto' runs whichever of OpenVINO
    and LiteRT ran this model file faster here: raced once per file, OpenVINO version and
    settings, the winner recorded in the cache (`race`), saying which in one line. 'auto' falls back to
    LiteRT saying why in one line, a forced 'openvino' that cannot run raises UsageError.
    Any other engine gets LiteRT (a .tflite file has no TensorFlow form; TensorFlow's
    engine runs the Keras model), and never races.
    """
    from smallcnn.progress import Reporter

    reporter = reporter or Reporter()
    engine = chosen_engine(engine, placement)
    if engine in ("auto", "openvino"):
        from smallcnn.runtime import openvino

        why = openvino.unavailable()
        if why is None and precision == "bfloat16" and openvino.best_precision() != precision:
            reporter.note(f"OpenVINO runs in {openvino.best_precision()} on this CPU, "
                          f"not {precision}.")
            precision = None
        if why is None:
            precision = precision or openvino.best_precision()
            raced = engine == "auto" and precision == "float32"
            result = _recorded_race(tflite_path, reporter) if raced else None
            if result is not None and result["winner"] == "litert":
                reporter.note(_raced_line(result))
                return litert.LiteRTEngine(tflite_path)
            try:
                opened = openvino.OpenVINOEngine(tflite_path, precision, reporter.warning)
            except Exception as error:  # an op its TFLite reader lacks, a compile error
                why = f"it cannot compile this model ({described(error)})"
            else:
                if raced:
                    return _race_winner(tflite_path, opened, result, reporter)
                reporter.note(f"Frozen base engine: OpenVINO, {opened.precision} "
                              f"(--engine {engine}).")
                return opened
        if engine == "openvino":
            raise UsageError(f"--engine openvino: OpenVINO cannot run here: {why}; "
                             "use --engine auto or --engine litert.")
        reporter.note(f"Frozen base engine: LiteRT, float32 (OpenVINO not used: {why}).")
    return litert.LiteRTEngine(tflite_path)


def _recorded_race(tflite_path, reporter):
    from smallcnn.runtime import openvino, race

    return race.recorded(openvino.race_name(tflite_path), RACED, reporter.warning)


def _race_winner(tflite_path, opened, result, reporter):
    """auto's float32 engine for the model: `opened` (OpenVINO) where `result` (its race's
    record) says it won, else the winner of a race run now, and recorded, against LiteRT;
    LiteRT, saying why, where OpenVINO fails in the race."""
    from smallcnn.runtime import openvino, race

    if result is None:
        lite = litert.LiteRTEngine(tflite_path)
        try:
            result = race.race(dict(zip(RACED, (lite, opened))), lite.input_shape)
        except Exception as error:  # OpenVINO compiled the model but cannot run it
            reporter.note("Frozen base engine: LiteRT, float32 (OpenVINO not used: racing "
                          f"LiteRT it failed: {described(error)}).")
            return lite
        race.record(openvino.race_name(tflite_path), result, reporter.warning)
        opened = opened if result["winner"] == openvino.NAME else lite
    reporter.note(_raced_line(result))
    return opened


def _raced_line(result):
    names = dict(zip(RACED, ("LiteRT", "OpenVINO")))
    winner = names[result["winner"]]
    loser = next(names[name] for name in RACED if name != result["winner"])
    return (f"Frozen base engine: {winner}, float32 (auto: measured {result['speedup']:.2f}x "
            f"faster here than {loser} float32).")


def feature_engine(spec, weights, image_size, extractor, engine="auto", reporter=None,
                   placement=None, precision=None):
    """The engine that computes pooled features for uint8/float image batches.

    Args:
        extractor: a callable that returns the Keras feature extractor (raw pixels to
            pooled features); called only when it is needed, so a cached conversion is
            opened without building the base or importing TensorFlow.
        engine: 'openvino', 'litert', 'tensorflow' ('tf'), or 'auto' (`open_engine`'s
            choice on the base's LiteRT conversion, falling back to TensorFlow, with a
            warning that says why, when that cannot be used here; an explicit 'litert' or
            'openvino' that cannot be used is an error). Conversions of pretrained
            weights are cached.
        placement: the `devices.Placement` the command runs on: the TensorFlow engine
            runs the extractor in its precision on all its devices.
        precision: OpenVINO's (`open_engine`), by default the CPU's best.
    """
    from smallcnn.progress import Reporter

    reporter = reporter or Reporter()
    engine = chosen_engine(engine, placement)

    def tensorflow():
        if placement is None:
            return TensorFlowEngine(extractor())
        # Under several workers, each computes the features of its own shard on its own.
        local = None if placement.multi_worker else placement.strategy()
        return TensorFlowEngine(placement.working_copy(extractor(), local is not None), local,
                                placement.precision)

    if engine == "tensorflow":
        return tensorflow()

    def opened(path):
        return open_engine(path, engine, reporter, precision=precision)

    try:
        if weights == "none":  # random weights: a conversion of its own, not cached
            return _uncached_litert(extractor(), reporter.warning, opened)
        name = litert.litert_name(spec, weights, image_size)
        found = cache.load("engines", name, opened, warn=reporter.warning, checksum=True)
        if found is None:
            reporter.note(f"Converting the base to LiteRT for faster inference (once): {name}")
            model = extractor()
            stored = cache.store("engines", name,
                                 lambda temp: litert.convert_to_litert(model, Path(temp),
                                                                warn=reporter.warning),
                                 warn=reporter.warning, checksum=True)
            found = opened(stored) if stored else _uncached_litert(model, reporter.warning,
                                                                   opened)
        return found
    except UsageError:
        raise
    except Exception as error:  # no LiteRT wheel for this platform, or an op it lacks
        reason = described(error)
        if engine in ("litert", "openvino"):  # OpenVINO reads LiteRT's conversion
            raise UsageError(f"--engine {engine}: LiteRT cannot run this base here ({reason}); "
                             "use --engine auto or --engine tensorflow.") from error
        reporter.warning(f"LiteRT is not usable here ({reason}); using TensorFlow for the base.")
        return tensorflow()


def _uncached_litert(model, warn=None, opened=None):
    path = Path(tempfile.mkdtemp(prefix="smallcnn-engine-")) / "model.tflite"
    try:
        litert.convert_to_litert(model, path, warn=warn)
        return (opened or litert.LiteRTEngine)(path)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def compute_features(engine, images, batch_size=32, progress=None):
    """Runs the engine over a `(n, size, size, 3)` uint8 array in batches.

    Returns:
        float32 features, one row per image.
    """
    n = len(images)
    out = None
    for start in range(0, n, batch_size):
        values = engine(images[start : start + batch_size])
        if out is None:
            out = np.empty((n, values.shape[-1]), dtype=np.float32)
        out[start : start + len(values)] = values
        if progress is not None:
            progress(min(start + batch_size, n))
    return out
