"""OpenVINO running a cached LiteRT model (.tflite) on the CPU, in bfloat16 where it has BF16.

OpenVINO reads the .tflite files the cache already holds (`core.read_model`), so there
is no conversion of its own. Compiled with the THROUGHPUT hint and bf16 inference
precision (on AMX or AVX512-BF16), it runs the frozen base 1.6-1.9x as fast as LiteRT's
float32 on this 2-core Sapphire Rapids (issue 29: EfficientNet-B0 ~440 vs ~250
images/s, MobileNetV2 ~1000 vs ~590), its features within a cosine of 0.99 of float32.
Compiled models are cached by OpenVINO itself (CACHE_DIR) in the cache's `engines` part,
where the cache's cap and eviction count them as entries (`<hash>.blob`).
"""

import functools

import numpy as np

from smallcnn.runtime import cache

NAME = "openvino"
PRECISIONS = {"bfloat16": "bf16", "float32": "f32"}  # ours: OpenVINO's inference precision


def unavailable():
    """Why OpenVINO cannot be used here (one line), or None where it can."""
    try:
        core = _core()
    except ImportError as error:
        return f"openvino is not installed ({error})"
    except Exception as error:  # a wheel that cannot start on this platform
        from smallcnn.errors import described

        return f"openvino does not start here ({described(error)})"
    if "CPU" not in core.available_devices:
        return "OpenVINO sees no CPU device"
    return None


@functools.lru_cache(maxsize=None)
def _core():
    import openvino

    return openvino.Core()


def best_precision():
    """bfloat16 where the CPU computes in it (AMX or AVX512-BF16: OpenVINO lists 'BF16'
    among the CPU's optimization capabilities), else float32."""
    capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bfloat16" if "BF16" in capabilities else "float32"


def write_ir(tflite_path, path):
    """A .tflite model written as OpenVINO IR: `path` (.xml) and its weights beside it (.bin),
    kept float32."""
    try:
        import openvino
    except ImportError:
        from smallcnn.errors import UsageError

        raise UsageError("OpenVINO export needs openvino: pip install openvino.") from None
    openvino.save_model(openvino.convert_model(str(tflite_path)), str(path),
                        compress_to_fp16=False)


def _warn(message):
    import warnings

    warnings.warn(message, cache.CacheWarning, stacklevel=3)


class OpenVINOEngine:
    """A .tflite model compiled by OpenVINO for the CPU: a callable from a batch of images
    (uint8 or float) to float32 outputs (its first output), like `LiteRTEngine`.

    A batch runs as single images through an `AsyncInferQueue` (one request per stream
    the THROUGHPUT hint chose; what issue 29 measured fastest here), converted to float one
    image at a time (no float copy of the whole batch). `warn` is told, in one line, when
    the compiled model cannot be cached.
    """

    name = NAME

    def __init__(self, path, precision=None, warn=None):
        import openvino

        self.precision = precision or best_precision()
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown OpenVINO precision {self.precision!r}. "
                             f"Expected one of: {', '.join(PRECISIONS)}.")
        core = _core()
        model = core.read_model(str(path))
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() > 0:
            shape[0] = 1  # single images: static shapes compile to the fastest kernels
            model.reshape({model.inputs[0]: shape})
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in shape)
        self.input_dtype = np.dtype(model.inputs[0].get_element_type().to_dtype())
        output = model.outputs[0].get_partial_shape()
        self._output_shape = tuple(d.get_length() if d.is_static else -1 for d in output)[1:]
        cache_dir = cache.root("engines")
        config = {"PERFORMANCE_HINT": "THROUGHPUT",
                  "INFERENCE_PRECISION_HINT": PRECISIONS[self.precision]}
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        except OSError as error:  # a read-only cache: compiled on each start instead
            reason = error.strerror or error
            (warn or _warn)(f"OpenVINO's compiled model is not cached ({reason}); it is "
                            "compiled on each start.")
        self._compiled = core.compile_model(model, "CPU", config)
        self._queue = openvino.AsyncInferQueue(self._compiled)
        self._queue.set_callback(self._collect)
        self._out = None

    def _collect(self, request, index):
        self._out[index] = request.get_output_tensor(0).data[0]

    def __call__(self, images):
        n = len(images)
        self._out = np.empty((n, *self._output_shape), dtype=np.float32)
        if n == 0:
            return self._out
        try:
            for index in range(n):
                image = np.asarray(images[index : index + 1], dtype=self.input_dtype)
                self._queue.start_async({0: image}, index)
        finally:
            self._queue.wait_all()  # no request outlives the call, even a failed one
        out, self._out = self._out, None
        return out
