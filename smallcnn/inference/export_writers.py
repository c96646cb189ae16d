"""Writing a classifier in each of `smallcnn export`'s formats (export.py checks and places
the result): Keras, SavedModel, LiteRT, ONNX (with onnxruntime's quantization), OpenVINO IR."""

import re
import shutil
import tempfile
from pathlib import Path

from smallcnn.errors import UsageError
from smallcnn.runtime.devices import POOL_LAYER

__all__ = ["write"]


def _write_onnx(model, path, quantize, calibration):
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        raise UsageError(
            "ONNX export needs tf2onnx and onnx: pip install 'smallcnn[onnx]'."
        ) from None
    from smallcnn.runtime.quiet import native_stderr_silenced

    if quantize == "none":
        with native_stderr_silenced():
            model.export(str(path), format="onnx", verbose=False)
        return
    folder = Path(tempfile.mkdtemp(prefix="smallcnn-onnx-", dir=Path(path).parent))
    try:
        plain = folder / "plain.onnx"
        with native_stderr_silenced():
            model.export(str(plain), format="onnx", verbose=False)
        if quantize == "float16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            plain_model = onnx.load(str(plain))
            onnx.save(convert_float_to_float16(plain_model, keep_io_types=True,
                                               node_block_list=_pool_nodes(plain_model)),
                      str(path))
        else:
            _quantize_onnx_int8(plain, folder / "prepared.onnx", path, calibration)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _pool_nodes(onnx_model):
    """The nodes of the model's pooling, kept in float32 as under mixed precision
    (`devices.POOL_LAYER`: with taps it normalises each group, which float16 breaks)."""
    inside = re.compile(rf"/{POOL_LAYER}(_\d+)?/")
    return [node.name for node in onnx_model.graph.node if inside.search(node.name)]


def _quantize_onnx_int8(plain, prepared, path, calibration):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self, name):
            self._batches = iter([{name: image[None]} for image in calibration])

        def get_next(self):
            return next(self._batches, None)

    import onnx

    name = onnx.load(str(plain)).graph.input[0].name
    quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(path), Images(name), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def write(model, path, format, quantize, calibration):
    """Writes the Keras classifier `model` in `format` at `path` (`quantize`: one of
    export's QUANTIZATIONS; `calibration`: images for int8's ranges)."""
    if format == "keras":
        model.save(str(path))
    elif format == "savedmodel":
        from smallcnn.runtime.quiet import native_stderr_silenced

        with native_stderr_silenced():
            model.export(str(path), format="tf_saved_model", verbose=False)
    elif format == "tflite":
        from smallcnn.runtime.litert import convert_to_litert

        convert_to_litert(model, Path(path), quantize, calibration)
    elif format == "openvino":  # from its LiteRT conversion: OpenVINO reads no Keras 3 model
        from smallcnn.runtime.litert import convert_to_litert
        from smallcnn.runtime.openvino import write_ir

        with tempfile.TemporaryDirectory(dir=Path(path).parent) as folder:
            convert_to_litert(model, Path(folder) / "model.tflite")
            write_ir(Path(folder) / "model.tflite", path)
    else:
        _write_onnx(model, path, quantize, calibration)
