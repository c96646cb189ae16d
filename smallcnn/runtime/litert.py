"""LiteRT (the successor of tf.lite) for a frozen base: a Keras model converted to a
.tflite file once (`convert_to_litert`, cached by `litert_name`), and its interpreter with
XNNPACK (`LiteRTEngine`), which runs MobileNetV2 about twice as fast as TensorFlow on
these 2 cores. OpenVINO reads the same file (`smallcnn.runtime.openvino`); which engine
runs it is `smallcnn.runtime.engine`'s choice.
"""

import contextlib
from pathlib import Path

import numpy as np

from smallcnn.errors import described
from smallcnn.runtime import cache
from smallcnn.runtime.formats import TFLiteRuntime


class LiteRTEngine(TFLiteRuntime):
    """A LiteRT interpreter (XNNPACK) that runs batches in micro-batches of 2 images.

    XNNPACK on 2 cores runs MobileNetV2 at 224 px at about 300 images/s one or two
    images at a time, and at about 225 images/s in batches of 32 (measured here).
    """

    name = "litert"
    precision = "float32"
    micro_batch = 2

    @staticmethod
    def _interpreter_class():
        from ai_edge_litert.interpreter import (
            Interpreter,  # no fallback: TensorFlow is faster
        )

        return Interpreter

    def __call__(self, images):
        if len(images) > self.micro_batch:  # converted to float one micro-batch at a time
            return np.concatenate([self(images[i : i + self.micro_batch])
                                   for i in range(0, len(images), self.micro_batch)])
        return super().__call__(images)


def litert_name(spec, weights, image_size):
    """The cache entry (in `engines`) of the base's LiteRT conversion for these weights
    and size."""
    key = cache.key("engines", base=spec.name, weights=cache.weights_identity(weights),
                    size=image_size, preprocessing=spec.preprocessing)
    return f"{spec.name}-{image_size}-{key[:32]}.tflite"


def base_conversion(spec, weights, image_size):
    """Where the base's LiteRT conversion lives in the cache (`litert_name`)."""
    return cache.path("engines", litert_name(spec, weights, image_size))


def convert_to_litert(model, path, quantize="none", calibration=None, warn=None):
    """Writes a Keras model (one image input) as a LiteRT model, its weights frozen into
    constants, at `path`: a temporary name of `files.atomic_write` (through `cache.store`
    or `export`), which gives the file its place and its permissions.

    Freezing a concrete function and converting its graph takes about 2 s for MobileNetV2
    (measured here with TensorFlow 2.21: trace 0.5 s, freeze 0.7 s, convert 1.1 s). Handing
    the converter the model as well (`from_concrete_functions([f], model)`) makes it save
    and convert a SavedModel instead, 10 s, as Keras' own `export(format="litert")` does;
    so the graph route is used (TensorFlow calls it deprecated, and logs so: that line is
    silenced), and Keras' export is only the fallback (for unquantized models).

    Args:
        quantize: 'none'; 'float16' (float16 weights); or 'int8' (int8 weights and
            activations, their ranges calibrated on `calibration`, an array of images).
            The input keeps the model's dtype and the output stays float.
        warn: called with one line when the fast conversion fails and Keras' export
            does the work instead (default: a Python warning).
    """
    import tensorflow as tf

    from smallcnn.runtime.quiet import native_stderr_silenced

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        dtype = tf.as_dtype(model.inputs[0].dtype)
        spec = tf.TensorSpec([None, *model.input_shape[1:]], dtype)
        function = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                               autograph=False)
        frozen = convert_variables_to_constants_v2(function.get_concrete_function())
        with _converter_notices_silenced():  # "...without the trackable_obj... deprecated"
            converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        with native_stderr_silenced(), _converter_notices_silenced():
            path.write_bytes(converter.convert())
    except Exception as error:
        if quantize != "none":
            raise
        message = (f"The fast LiteRT conversion failed ({described(error)}); "
                   "converting through Keras' export instead (slower).")
        if warn is None:
            import warnings

            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            warn(message)
        model.export(str(path), format="litert", verbose=False)


@contextlib.contextmanager
def _converter_notices_silenced():
    """The converter's Python notices are dropped: its `absl` log lines below errors, and
    the graph route's "Statistics for quantized inputs were expected" (int8 with float
    inputs, as intended: the input keeps the model's dtype)."""
    import logging
    import warnings

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            yield
    finally:
        logger.setLevel(level)
