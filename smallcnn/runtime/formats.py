"""Running an exported model in the runtime its format needs.

Every exported model takes a batch of raw RGB pixels, `uint8` of shape
`(n, size, size, 3)`, and returns class probabilities of shape `(n, classes)`.
Each runtime is imported only when its format is opened, so predicting with a
`.tflite` or OpenVINO `.xml` file never imports TensorFlow.
"""

import os
from pathlib import Path

import numpy as np

from smallcnn.errors import ModelError, UsageError, first_line

FORMATS = ("keras", "savedmodel", "tflite", "onnx", "openvino")
LABELS_FILE = "labels.txt"  # beside an exported model: one class per line, in output order
SUFFIXES = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}


def contract_path(path):
    """The input-contract JSON beside an exported model: model.tflite -> model.tflite.json."""
    path = Path(path)
    return path.parent / f"{path.name}.json"


def format_of(path):
    """The export format of a model file or folder, or None when it is not one."""
    path = Path(path)
    if path.is_dir():
        return "savedmodel" if (path / "saved_model.pb").is_file() else None
    return SUFFIXES.get(path.suffix.lower())


class TFLiteRuntime:
    """A LiteRT interpreter (the maintained successor of tf.lite.Interpreter)."""

    format = "tflite"

    @staticmethod
    def _interpreter_class():
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow ships the same interpreter (deprecated there)
            from tensorflow.lite.python.interpreter import Interpreter
        return Interpreter

    def __init__(self, path):
        from smallcnn.runtime.quiet import native_stderr_silenced

        with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            self._interpreter = self._interpreter_class()(model_path=str(path),
                                                          num_threads=os.cpu_count())
            self._interpreter.allocate_tensors()
        details = self._interpreter.get_input_details()[0]
        self.input_shape = tuple(int(d) for d in details["shape"])
        self.input_dtype = np.dtype(details["dtype"])
        self._input = details["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = self.input_shape[0]

    def __call__(self, images):
        images = np.asarray(images, dtype=self.input_dtype)
        if self._batch != len(images):
            self._interpreter.resize_tensor_input(self._input, list(images.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(images)
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


class OnnxRuntime:
    format = "onnx"

    def __init__(self, path):
        try:
            import onnxruntime
        except ImportError:
            raise UsageError(
                "Running an .onnx model needs onnxruntime: pip install onnxruntime "
                "(or pip install 'smallcnn[onnx]')."
            ) from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(path), options,
                                                     providers=["CPUExecutionProvider"])
        node = self._session.get_inputs()[0]
        self._input = node.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
        self.input_dtype = np.dtype(np.uint8) if "uint8" in node.type else np.dtype(np.float32)

    def __call__(self, images):
        images = np.asarray(images, dtype=self.input_dtype)
        return self._session.run(None, {self._input: images})[0]


class SavedModelRuntime:
    format = "savedmodel"

    def __init__(self, path):
        import tensorflow as tf

        self._model = tf.saved_model.load(str(path))
        self._serve = self._model.signatures["serving_default"]
        (self._input, spec), = self._serve.structured_input_signature[1].items()
        self.input_shape = tuple(-1 if d is None else int(d) for d in spec.shape)
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)

    def __call__(self, images):
        outputs = self._serve(**{self._input: np.asarray(images, dtype=self.input_dtype)})
        return np.asarray(list(outputs.values())[0])


class KerasRuntime:
    format = "keras"

    def __init__(self, path):
        import keras

        self._model = keras.saving.load_model(path, compile=False, safe_mode=True)
        self.input_shape = tuple(-1 if d is None else int(d) for d in self._model.input_shape)
        self.input_dtype = np.dtype(self._model.inputs[0].dtype)

    def __call__(self, images):
        # predict_on_batch runs a traced function: ~16 ms an image against ~200 eager.
        return np.asarray(self._model.predict_on_batch(np.asarray(images, dtype=self.input_dtype)))


class OpenVINORuntime:
    """An OpenVINO IR (model.xml, its weights in model.bin beside it) compiled for the
    CPU in float32, as exported: in bf16 its probabilities moved up to 0.16 off the Keras
    model's (bench/export.py, MobileNetV2 on ants-bees)."""

    format = "openvino"

    def __init__(self, path):
        from smallcnn.runtime import openvino

        why = openvino.unavailable()
        if why is not None:
            raise UsageError(f"Running an OpenVINO .xml model needs OpenVINO: {why}; "
                             "pip install openvino.")
        self._engine = openvino.OpenVINOEngine(path, "float32")
        self.input_shape, self.input_dtype = self._engine.input_shape, self._engine.input_dtype

    def __call__(self, images):
        return self._engine(np.asarray(images, dtype=self.input_dtype))


RUNTIMES = {"keras": KerasRuntime, "savedmodel": SavedModelRuntime, "tflite": TFLiteRuntime,
            "onnx": OnnxRuntime, "openvino": OpenVINORuntime}


def open_model(path, format=None):
    """Opens an exported model in its runtime; `format` defaults to the one its name says."""
    format = format or format_of(path)
    if format not in RUNTIMES:
        raise ModelError(
            f"{str(path)!r} is not an exported model; expected a .tflite, .onnx, .keras or "
            "OpenVINO .xml file, or a SavedModel folder."
        )
    try:
        return RUNTIMES[format](path)
    except UsageError:
        raise
    except Exception as error:
        reason = first_line(error)
        raise ModelError(f"Cannot load the {format} model {str(path)!r}: {reason}") from None


def run_batches(runtime, images, batch_size=32):
    """Class probabilities for a `(n, size, size, 3)` uint8 array, in batches."""
    return np.concatenate([runtime(images[i : i + batch_size])
                           for i in range(0, len(images), batch_size)])
