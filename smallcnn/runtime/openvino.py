"""OpenVINO running a cached LiteRT model (.tflite) on the CPU, in bfloat16 where it has BF16.

OpenVINO reads the .tflite files the cache already holds (`core.read_model`), so there
is no conversion of its own. Compiled with the THROUGHPUT hint and bf16 inference
precision (on AMX or AVX512-BF16), it runs the frozen base 1.6-1.9x as fast as LiteRT's
float32 on this 2-core Sapphire Rapids (issue 29: EfficientNet-B0 ~440 vs ~250
images/s, MobileNetV2 ~1000 vs ~590), its features within a cosine of 0.99 of float32.
Compiled models are exported into the cache's `engines` part (`openvino-<key>.blob`,
keyed by the model file's content, the configuration and OpenVINO's version) and
imported from there on the next start.
"""

import functools
import io
import mmap
from pathlib import Path

import numpy as np

from smallcnn.runtime import cache
from smallcnn.runtime.files import file_sha256

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
    try:  # the CPU's plugin alone (listing the devices loads every plugin: 4 MB more)
        core.get_property("CPU", "FULL_DEVICE_NAME")
    except RuntimeError as error:
        from smallcnn.errors import described

        return f"OpenVINO sees no CPU device ({described(error)})"
    return None


@functools.lru_cache(maxsize=None)
def _core():
    import openvino

    return openvino.Core()


def best_precision():
    """bfloat16 where the CPU computes in it (AMX or AVX512-BF16: OpenVINO lists 'BF16'
    among the CPU's optimization capabilities), else float32: what `--engine auto` and
    `--engine openvino` run OpenVINO in.

    bf16 runs the base about 2x as fast as LiteRT's float32 here (bench/engines.py); its
    features change a head's label only where the top two classes are nearly tied, and
    predictions look at those again in float32 (`inference.second_look`), so that their
    labels are float32's. Where float32 is the best, auto races OpenVINO against LiteRT
    (`runtime.race`): neither is faster for every model.
    """
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


def _compiled(path, config, warn=None):
    """The model at `path` compiled for the CPU with `config`, for single images: imported
    from the cache where it was compiled before, else compiled and exported there; and the
    memory it was imported from (None where compiled), which must outlive it.

    Importing the exported blob skips reading the .tflite and building OpenVINO's model
    (issue 29: predict's peak memory 175 to 154 MB in a trial); the model read to compile
    is dropped once compiled.
    """
    core = _core()
    source = Path(path)
    name = f"openvino-{_key(source, config)[:32]}.blob"
    compiled = cache.load("engines", name, lambda blob: _imported(core, blob, config),
                          warn=warn, checksum=True)
    if compiled is not None:
        return compiled
    model = core.read_model(str(source))
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_static and shape.rank.get_length() > 0:
        shape[0] = 1  # single images: static shapes compile to the fastest kernels
        model.reshape({model.inputs[0]: shape})
    compiled = core.compile_model(model, "CPU", config)
    del model
    cache.store("engines", name, lambda temp: _exported(compiled, temp), warn=warn,
                checksum=True)
    return compiled, None


def _key(path, config):
    """The cache key of `path` compiled with `config`: the model file's content (and its
    weights' beside it), the configuration and OpenVINO's version."""
    import openvino

    source = Path(path)
    parts = [_sha256(p, *cache.file_stamp(p)[1:]) for p in (source, source.with_suffix(".bin"))
             if p.is_file()]
    return cache.key("engines", model=parts, config=config, openvino=openvino.__version__)


@functools.lru_cache(maxsize=64)
def _sha256(path, *stamp):
    """A file's SHA-256, read once per `stamp` (its size, times and inode: `cache.file_stamp`):
    auto's race record and feature keys ask for it on every open."""
    return file_sha256(path)


def config(precision):
    """The configuration a model is compiled with in `precision` (one of PRECISIONS)."""
    return {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": PRECISIONS[precision]}


def race_name(path):
    """The cache entry (in `engines`) of auto's race between LiteRT and OpenVINO float32 on
    the model at `path`, keyed as its float32 compiled model is (`runtime.race`)."""
    return f"race-{_key(path, config('float32'))[:32]}.json"


def _exported(compiled, path):
    stream = io.BytesIO()
    compiled.export_model(stream)
    Path(path).write_bytes(stream.getbuffer())


def _imported(core, blob, config):
    import openvino

    # Mapped, not read: its pages are the file's (copy on write), shared with the page cache.
    # The compiled model still reads a few constants where they are, so the mapping is
    # kept with it (unmapped, the first inference crashed); but once it has run, the pages
    # it copied (EfficientNet-B0: 14 of 16 MB) are handed back: a page read again is the
    # file's, as OpenVINO does not write into the blob.
    with open(blob, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)  # OpenVINO wants it writable
    compiled = core.import_model(openvino.Tensor(np.frombuffer(mapped, np.uint8),
                                                 shared_memory=True), "CPU", config)
    model_input = compiled.inputs[0]
    if model_input.get_partial_shape().is_static:
        compiled.create_infer_request().infer(
            {0: np.zeros(model_input.get_shape(), model_input.get_element_type().to_dtype())})
    mapped.madvise(mmap.MADV_DONTNEED)
    return compiled, mapped


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
        self._compiled, self._mapped = _compiled(path, config(self.precision), warn)
        shape = self._compiled.inputs[0].get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in shape)
        self.input_dtype = np.dtype(self._compiled.inputs[0].get_element_type().to_dtype())
        output = self._compiled.outputs[0].get_partial_shape()
        self._output_shape = tuple(d.get_length() if d.is_static else -1 for d in output)[1:]
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
