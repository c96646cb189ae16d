"""Exporting a trained run to a file that runs elsewhere, verified before it is kept.

    smallcnn export RUN --format keras|savedmodel|tflite|onnx|openvino
                        [--quantize none|float16|int8]

Every exported model takes raw RGB pixels (`uint8`, `(n, size, size, 3)`) and returns
class probabilities, so no user has to reproduce the preprocessing. The preprocessing
is rebuilt from standard Keras layers (no smallcnn layer), so even the `.keras` export
loads where smallcnn is not installed. `labels.txt` and a JSON file with the input
contract go beside the model.

Before a file is put in place, it is loaded back in its own runtime and run on the
run's validation images; the export fails (and leaves nothing behind) when its top-1
agreement with the Keras model is below 99% (97% for int8).
"""

import dataclasses
import datetime
import shutil
import time
from pathlib import Path

import numpy as np

from smallcnn import __version__
from smallcnn.errors import DataError, ModelError, UsageError
from smallcnn.inference import export_writers
from smallcnn.inference.classifier import BATCH_SIZE
from smallcnn.model import runs
from smallcnn.model.bases import BASES
from smallcnn.progress import Reporter
from smallcnn.runtime.formats import (
    FORMATS,
    LABELS_FILE,
    contract_path,
    open_model,
    run_batches,
)

QUANTIZATIONS = ("none", "float16", "int8")
DEFAULT_FORMAT = "tflite"  # runs anywhere LiteRT does, without TensorFlow
DEFAULT_QUANTIZE = QUANTIZATIONS[0]
# Which quantizations each format offers.
SUPPORTED = {"keras": ("none",), "savedmodel": ("none",), "tflite": QUANTIZATIONS,
             "onnx": QUANTIZATIONS, "openvino": ("none",)}
# The file each format is written as (savedmodel: a folder); OpenVINO's weights go beside
# its .xml, in a .bin of the same name.
SUFFIX = {"keras": ".keras", "tflite": ".tflite", "onnx": ".onnx", "openvino": ".xml"}
# The least top-1 agreement with the Keras model on the validation images.
MIN_AGREEMENT = {"none": 0.99, "float16": 0.99, "int8": 0.97}
CALIBRATION_IMAGES = 100  # training images that calibrate int8 activation ranges
RESIZE_CONTRACT = ("the whole image resized to size x size (bilinear, no crop), after applying "
                   "its EXIF orientation; transparency composited on white; RGB order")



@dataclasses.dataclass
class ExportResult:
    path: str
    format: str
    quantize: str
    size_bytes: int
    images: int  # validation images the export was checked on
    agreement: float  # top-1 agreement with the Keras model
    max_difference: float  # largest absolute difference of a class probability
    latency_ms: float  # median time for one image in the exported model's runtime
    labels_path: str
    contract_path: str
    seconds: float

    def to_dict(self):
        return dataclasses.asdict(self)


def standard_preprocessing(mode):
    """A function from a uint8 image tensor to the base's input, in standard layers."""
    from keras import layers

    from smallcnn.model.layers import PREPROCESSING_MODES, preprocessing_layer

    if mode not in PREPROCESSING_MODES:
        raise ModelError(f"Unknown preprocessing {mode!r} in the run's smallcnn.json.")
    cast = layers.Rescaling(1.0, name="preprocess_cast")  # uint8 in, float out
    convert = preprocessing_layer(mode)
    return lambda x: convert(cast(x))


def portable_model(model, config):
    """The run's model with a uint8 input and standard preprocessing layers only."""
    import keras

    from smallcnn.model.networks import HEAD_NAME

    size = int(config["image_size"])
    try:
        base = model.get_layer(config["base_layer"])
        pool = model.get_layer("pool")
        head = model.get_layer(HEAD_NAME)
    except (KeyError, ValueError):
        raise ModelError("The run's model was not made by this smallcnn version; "
                         "it has no base, pool and head layers to export.") from None
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = standard_preprocessing(config["preprocessing"])(inputs)
    x = base(x, training=False)
    outputs = head(pool(x))
    portable = keras.Model(inputs, outputs, name=model.name)
    portable(np.zeros((1, size, size, 3), dtype="uint8"))  # built and called: some exporters ask
    return portable


def default_output(run_dir, format, quantize):
    """RUN/export/model[-QUANTIZE].tflite (or .onnx, .keras, .xml; savedmodel/ for a
    folder)."""
    stem = "model" if quantize == "none" else f"model-{quantize}"
    name = "savedmodel" if format == "savedmodel" else f"{stem}{SUFFIX[format]}"
    return Path(run_dir) / "export" / name


def _validate(format, quantize, out):
    if format not in FORMATS:
        raise UsageError(f"Unknown --format {format!r}. Choose one of: {', '.join(FORMATS)}.")
    if quantize not in QUANTIZATIONS:
        raise UsageError(
            f"Unknown --quantize {quantize!r}. Choose one of: {', '.join(QUANTIZATIONS)}."
        )
    if quantize not in SUPPORTED[format]:
        raise UsageError(
            f"--quantize {quantize} is not offered for --format {format}; "
            "quantized models are exported as tflite or onnx."
        )
    if out is not None and format != "savedmodel":
        suffix = SUFFIX[format]
        if Path(out).suffix.lower() != suffix and Path(out).suffix:
            raise UsageError(
                f"--out for --format {format} must end in {suffix} (or be a folder). "
                f"Received: {str(out)!r}"
            )


def _resolve_output(run_dir, format, quantize, out):
    if out is None:
        return default_output(run_dir, format, quantize)
    out = Path(out).expanduser()
    if format != "savedmodel" and (out.is_dir() or not out.suffix):
        return out / default_output(run_dir, format, quantize).name
    return out


def _labels_text(class_names):
    return "".join(f"{name}\n" for name in class_names)


def _verification_images(config, data, reporter):
    """(validation images, their labels, calibration images) decoded at the model's size."""
    from smallcnn.data.dataset import dataset_of_run
    from smallcnn.data.images import load_readable

    dataset = dataset_of_run(config, data)
    size = int(config["image_size"])
    with reporter.progress("Decoding the validation images", len(dataset.val)) as advance:
        val, kept, _ = load_readable(dataset.val.paths, size, progress=advance)
    rng = np.random.default_rng(0)
    train = dataset.train.paths
    picked = sorted(rng.choice(len(train), min(CALIBRATION_IMAGES, len(train)), replace=False))
    calibration, _, _ = load_readable([train[i] for i in picked], size)
    return val, dataset.val.labels[kept], calibration


def _write_checked(model, temp, format, quantize, calibration, val, reference):
    """Writes the export at `temp` and runs it on `val` in its own runtime; raises
    ModelError (and the caller keeps nothing) when it agrees with `reference`, the Keras
    model's probabilities, too rarely. Returns what it measured."""
    export_writers.write(model, temp, format, quantize, calibration)
    runtime = open_model(temp, format)
    exported = run_batches(runtime, val, batch_size=8 if format == "tflite" else BATCH_SIZE)
    agreement = float(np.mean(exported.argmax(1) == reference.argmax(1)))
    difference = float(np.abs(exported - reference).max())
    latency = _latency_ms(runtime, val[:1])
    del runtime
    needed = MIN_AGREEMENT[quantize]
    if agreement < needed:
        raise ModelError(
            f"The {format} export ({quantize}) agrees with the Keras model on "
            f"{agreement:.2%} of {len(val)} validation images, below the {needed:.0%} "
            f"required (largest probability difference {difference:.4f}); nothing was "
            + ("written. Try --quantize float16, or a base made for int8: "
               + ", ".join(name for name, spec in BASES.items() if spec.int8_friendly) + "."
               if quantize == "int8" else "written.")
        )
    return {"exported": exported, "agreement": agreement, "difference": difference,
            "latency": latency}


def _put_in_place(path, format, write):
    """`write(temp)`, then the file renamed onto `path`; an OpenVINO .xml's weights (.bin)
    are put in place first, so the .xml never names weights that are not there yet."""
    def write_all(temp):
        write(temp)
        if format == "openvino":
            runs.atomic_write(path.with_suffix(".bin"),
                              lambda bin: shutil.move(Path(temp).with_suffix(".bin"), bin))

    runs.atomic_write(path, write_all)


def _size(path):
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    weights = path.with_suffix(".bin")  # an OpenVINO .xml's
    return path.stat().st_size + (weights.stat().st_size if SUFFIX["openvino"] == path.suffix
                                  and weights.is_file() else 0)


def _latency_ms(runtime, image, repeats=20):
    """The median time of one single-image call, after two warm-up calls."""
    for _ in range(2):
        runtime(image)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime(image)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def export(run=None, format=DEFAULT_FORMAT, quantize=DEFAULT_QUANTIZE, out=None, data=None,
           overwrite=False, reporter=None):
    """Exports a run's model, checks it against the Keras model, and writes its contract.

    Args:
        run: a run folder (default: the most recent run in ./runs).
        format: 'keras', 'savedmodel', 'tflite', 'onnx' or 'openvino' (IR: .xml and
            .bin).
        quantize: 'none', 'float16' or 'int8' (tflite and onnx only); int8 calibrates on
            up to 100 images of the run's training split.
        out: the file (or folder) to write; default RUN/export/model[-QUANTIZE].EXT.
        data: the data folder, when it is no longer where the run recorded it.
        overwrite: replace an existing export (and a different labels.txt beside it).

    Returns:
        An `ExportResult`.

    Raises:
        ModelError: the exported model disagrees with the Keras model too often.
    """
    reporter = reporter or Reporter()
    started = time.time()
    _validate(format, quantize, out)
    run_dir = runs.resolve_run(run) if run is not None else runs.latest_run()
    config = runs.read_config(run_dir)
    path = _resolve_output(run_dir, format, quantize, out)
    labels_path = path.parent / LABELS_FILE
    contract = contract_path(path)
    labels = _labels_text(config["class_names"])
    if not overwrite:
        if path.exists():
            raise UsageError(f"{str(path)!r} already exists; pass --overwrite to replace it, "
                             "or --out for another name.")
        if labels_path.exists() and labels_path.read_text(encoding="utf-8") != labels:
            raise UsageError(f"{str(labels_path)!r} exists with other labels; pass --out to "
                             "export to another folder, or --overwrite.")
    if path.exists() and path.is_dir() != (format == "savedmodel"):
        raise UsageError(f"{str(path)!r} is a {'folder' if path.is_dir() else 'file'}; "
                         "give --out another name.")
    path.parent.mkdir(parents=True, exist_ok=True)

    model = runs.load_model(run_dir)
    val, val_labels, calibration = _verification_images(config, data, reporter)
    if not len(val):
        raise DataError("The run's validation split has no readable image to check the export on.")
    reference = np.concatenate([np.asarray(model(val[i : i + BATCH_SIZE].astype("float32"),
                                                 training=False))
                                for i in range(0, len(val), BATCH_SIZE)])
    portable = portable_model(model, config)

    reporter.note(f"Exporting {format}" + ("" if quantize == "none" else f" ({quantize})")
                  + f" and checking it on {len(val)} validation images")
    checked = {}
    _put_in_place(path, format, lambda temp: checked.update(
        _write_checked(portable, temp, format, quantize, calibration, val, reference)))
    exported, agreement = checked["exported"], checked["agreement"]
    difference, latency = checked["difference"], checked["latency"]

    runs.write_text(labels_path, labels)
    accuracy = float(np.mean(exported.argmax(1) == val_labels))
    result = ExportResult(str(path), format, quantize, _size(path), len(val), agreement,
                          difference, round(latency, 3), str(labels_path), str(contract),
                          round(time.time() - started, 2))
    runs.write_json(contract, _contract(config, run_dir, path, result, accuracy))
    return result


def _contract(config, run_dir, path, result, accuracy):
    import keras
    import tensorflow as tf

    size = int(config["image_size"])
    classes = list(config["class_names"])
    return {
        "format": result.format,
        "quantize": result.quantize,
        "file": path.name,
        "input": {
            "dtype": "uint8",
            "shape": [None, size, size, 3],
            "layout": "NHWC",
            "color": "RGB",
            "range": [0, 255],
            "resize": RESIZE_CONTRACT,
            "preprocessing": f"inside the model ({config['preprocessing']} mode): pass raw pixels",
        },
        "output": {
            "dtype": "float32",
            "shape": [None, len(classes)],
            "meaning": "class probabilities (softmax), in the order of labels",
        },
        "labels": classes,
        "labels_file": LABELS_FILE,
        "verification": {
            "split": "val",
            "images": result.images,
            "top1_agreement": result.agreement,
            "max_probability_difference": result.max_difference,
            "accuracy": accuracy,
        },
        "size_bytes": result.size_bytes,
        "latency_ms": result.latency_ms,
        "source": {
            "run": str(run_dir),
            "base": config.get("base"),
            "weights": config.get("weights"),
            "smallcnn": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }
