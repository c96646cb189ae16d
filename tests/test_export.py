"""smallcnn export: every format and quantization, checked for parity, loadable elsewhere."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import invoke

from smallcnn.inference.export import (
    DEFAULT_FORMAT,
    DEFAULT_QUANTIZE,
    MIN_AGREEMENT,
    SUFFIX,
    SUPPORTED,
    default_output,
)

CASES = [(f, q) for f, quantizations in SUPPORTED.items() for q in quantizations]


def _val_images(data):
    return sorted(str(p) for p in (data / "val").rglob("*.png"))


@pytest.mark.parametrize("format, quantize", CASES)
def test_export_matches_the_run_and_predicts_the_same(trained, tmp_path, format, quantize):
    import smallcnn

    if format == "onnx":
        pytest.importorskip("tf2onnx")
    run, data = trained
    out = tmp_path / "exported" / ("savedmodel" if format == "savedmodel"
                                   else f"model-{quantize}{SUFFIX[format]}")
    result = invoke("export", run, "--format", format, "--quantize", quantize, "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["agreement"] >= MIN_AGREEMENT[quantize]
    assert report["images"] == 48
    assert out.exists()
    on_disk = (sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir()
               else out.stat().st_size)
    if format == "openvino":  # its weights beside it
        on_disk += out.with_suffix(".bin").stat().st_size
    assert report["size_bytes"] == on_disk
    assert (out.parent / "labels.txt").read_text().split() == ["blue", "green", "red"]
    contract = json.loads((out.parent / f"{out.name}.json").read_text())
    assert contract["input"]["dtype"] == "uint8"
    assert contract["input"]["shape"] == [None, 32, 32, 3]
    assert contract["labels"] == ["blue", "green", "red"]
    assert contract["verification"]["top1_agreement"] == report["agreement"]
    assert not [p for p in out.parent.iterdir() if "partial" in p.name]  # no temp left

    # The exported model through the Python API gives the run's labels.
    paths = _val_images(data)
    expected = [p.label for p in smallcnn.load(run).predict(paths)]
    exported = smallcnn.load(out).predict(paths)
    agreement = np.mean([p.label == e for p, e in zip(exported, expected)])
    assert agreement >= MIN_AGREEMENT[quantize]
    assert all(abs(sum(t["probability"] for t in p.top) - 1) < 0.02 for p in exported)


def test_default_output_and_predict_with_a_tflite_file(trained, tmp_path):
    run, data = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = invoke("export", copy)
    assert result.exit_code == 0, result.output
    model = default_output(copy, DEFAULT_FORMAT, DEFAULT_QUANTIZE)
    assert model.parent == copy / "export"
    assert model.is_file() and "agreement" in result.output
    images = sorted((data / "val" / "green").iterdir())[:4]
    predicted = invoke("predict", *images, "--model", model, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert [p["label"] for p in json.loads(predicted.stdout)] == ["green"] * 4


def _fresh_python(code):
    """Runs code in a new interpreter, outside the project folder; returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    process = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                             text=True, env=env, cwd="/", timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    return process.stdout.strip().splitlines()[-1]


@pytest.mark.heavy
@pytest.mark.parametrize("format, runtime_code", [
    ("tflite", """
        from ai_edge_litert.interpreter import Interpreter
        interpreter = Interpreter(model_path=MODEL)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
        interpreter.invoke()
        probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    """),
    ("keras", """
        import keras
        model = keras.saving.load_model(MODEL, safe_mode=True)
        probabilities = model.predict(pixels, verbose=0)
    """),
    ("onnx", """
        import onnxruntime
        session = onnxruntime.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
        probabilities = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    """),
])
def test_export_loads_in_a_fresh_process_without_smallcnn(trained, tmp_path, format,
                                                         runtime_code):
    if format == "onnx":
        pytest.importorskip("tf2onnx")
    run, data = trained
    model = tmp_path / f"model.{format}"
    assert invoke("export", run, "--format", format, "--out", model).exit_code == 0
    image = sorted((data / "val" / "red").iterdir())[0]
    code = f"""
        import sys
        import numpy as np
        from PIL import Image
        MODEL = {str(model)!r}
        pixels = np.asarray(Image.open({str(image)!r}).convert("RGB").resize((32, 32),
                            Image.BILINEAR), dtype=np.uint8)[None]
    """ + runtime_code + """
        labels = open(MODEL.rsplit("/", 1)[0] + "/labels.txt").read().split()
        print(labels[int(np.argmax(probabilities[0]))], round(float(np.sum(probabilities)), 3),
              "smallcnn" in sys.modules,
              any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules))
    """
    label, total, smallcnn_imported, tensorflow_imported = _fresh_python(code).split()
    assert label == "red" and float(total) == pytest.approx(1.0, abs=0.01)
    assert smallcnn_imported == "False"
    if format in ("tflite", "onnx"):
        assert tensorflow_imported == "False"


@pytest.mark.parametrize("mode", ["tf", "caffe", "scale", "none"])
def test_uint8_preprocessing_equals_the_runs_layer(mode):
    import keras

    from smallcnn.inference.export import standard_preprocessing
    from smallcnn.model.layers import preprocessing_layer

    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)).astype("uint8")
    expected = np.asarray(preprocessing_layer(mode)(pixels.astype("float32")))
    inputs = keras.Input((5, 5, 3), dtype="uint8")
    model = keras.Model(inputs, standard_preprocessing(mode)(inputs))
    np.testing.assert_allclose(np.asarray(model(pixels)), expected, rtol=1e-5, atol=1e-4)


def test_an_export_that_disagrees_fails_and_leaves_nothing(trained, tmp_path, monkeypatch):
    import smallcnn.inference.export

    run, _ = trained
    opened = smallcnn.inference.export.open_model

    def scrambled(path, format=None):  # a runtime whose answers are a class off
        runtime = opened(path, format)
        return lambda images: np.roll(runtime(images), 1, axis=1)

    monkeypatch.setattr(smallcnn.inference.export, "open_model", scrambled)
    out = tmp_path / "out" / "model.tflite"
    result = invoke("export", run, "--out", out)
    assert result.exit_code == 4
    assert "agrees with the Keras model on 0.00% of 48 validation images" in result.output
    assert not out.exists() and not list(out.parent.iterdir())
    # An int8 export that disagrees points to the bases that keep their answers in int8.
    result = invoke("export", run, "--quantize", "int8", "--out", out)
    assert result.exit_code == 4
    assert "Try --quantize float16, or a base made for int8: mobilenet_v2, " \
           "efficientnet_lite2." in result.output.replace("\n", " ").replace("  ", " ")


def test_export_refusals(trained, tmp_path):
    run, data = trained
    cases = [
        (["--format", "keras", "--quantize", "int8"], 2, "not offered for --format keras"),
        (["--format", "pt"], 2, "Unknown --format 'pt'"),
        (["--quantize", "int4"], 2, "Unknown --quantize 'int4'"),
        (["--out", tmp_path / "model.onnx"], 2, "must end in .tflite"),
    ]
    for args, code, message in cases:
        result = invoke("export", run, *args)
        assert result.exit_code == code, result.output
        assert message in result.output

    # An existing export is kept unless --overwrite.
    out = tmp_path / "keep" / "model.tflite"
    assert invoke("export", run, "--out", out).exit_code == 0
    before = out.read_bytes()
    result = invoke("export", run, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.read_bytes() == before
    # A user's own labels.txt is not replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "labels.txt").write_text("cat\ndog\n")
    result = invoke("export", run, "--out", tmp_path / "mine" / "model.tflite")
    assert result.exit_code == 2 and "other labels" in result.output
    assert (tmp_path / "mine" / "labels.txt").read_text() == "cat\ndog\n"

    # A run whose data has moved: one line naming --data, and --data works.
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    config = json.loads((moved / "smallcnn.json").read_text())
    config["data"] = str(tmp_path / "gone")
    (moved / "smallcnn.json").write_text(json.dumps(config))
    result = invoke("export", moved)
    assert result.exit_code == 3 and "--data" in result.output
    assert invoke("export", moved, "--data", data).exit_code == 0


def test_commands_that_need_the_run_refuse_an_exported_file(trained, tmp_path):
    run, data = trained
    out = tmp_path / "model.tflite"
    assert invoke("export", run, "--out", out).exit_code == 0
    image = sorted((data / "val" / "red").iterdir())[0]
    for args in (["evaluate", out], ["report", out], ["visualize", "gradcam", image, "--model", out]):
        result = invoke(*args)
        assert result.exit_code == 2 and "needs the run folder" in result.output, args


def test_predict_refuses_an_exported_model_without_labels(trained, tmp_path):
    run, data = trained
    out = tmp_path / "model.tflite"
    assert invoke("export", run, "--out", out).exit_code == 0
    os.unlink(tmp_path / "labels.txt")
    os.unlink(tmp_path / "model.tflite.json")
    image = sorted((data / "val" / "red").iterdir())[0]
    result = invoke("predict", image, "--model", out)
    assert result.exit_code == 4 and "labels.txt" in result.output


@pytest.mark.heavy
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_written_for_the_user_get_the_usual_permissions(tiny_data, base_weights_file,
                                                              tmp_path, umask):
    import stat

    from smallcnn.runtime import cache

    run = tmp_path / "run"
    previous = os.umask(umask)
    try:
        trained = invoke("extract", tiny_data, "--base", "mobilenet_v2", "--weights",
                         base_weights_file, "--image-size", "32", "--epochs", "3", "--out", run)
        assert trained.exit_code == 0, trained.output
        exported = invoke("export", run, "--format", "tflite")
        assert exported.exit_code == 0, exported.output
    finally:
        os.umask(previous)
    written = [p for p in [*run.rglob("*"), *cache.root().rglob("*")] if p.is_file()]
    assert run / "export" / "model.tflite" in written
    assert [p for p in written if p.parent.name == "engines" and p.suffix == ".tflite"]
    usual = 0o666 & ~umask
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written
            if stat.S_IMODE(p.stat().st_mode) != usual} == {}


def _self_attributes(function, context):
    """The names of `self.NAME` that `function`'s source reads (`ast.Load`) or sets."""
    import ast
    import inspect

    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "self"
            and isinstance(node.ctx, context)}


def _set_by_init(cls):
    """What `cls()` sets on the object: its __init__'s `self.x = ...`, and its base's
    while each calls `super().__init__`."""
    import ast
    import inspect

    names = set()
    for owner in cls.__mro__[:-1]:
        if "__init__" not in vars(owner):
            continue
        init = vars(owner)["__init__"]
        names |= _self_attributes(init, ast.Store)
        if "super().__init__(" not in inspect.getsource(init):
            break
    return names


@pytest.mark.parametrize("name", ["predict.Classifier", "exported.ExportedClassifier"])
def test_a_classifier_sets_in_its_init_everything_its_methods_use(name):
    """An exported model's classifier inherits no method that needs what it never sets
    (it inherited the run's engine choice, reading attributes only the run's sets)."""
    import ast
    import importlib
    import inspect

    module, _, class_name = name.rpartition(".")
    cls = getattr(importlib.import_module(f"smallcnn.inference.{module}"), class_name)
    available = _set_by_init(cls) | set(dir(cls))
    unset = {}
    for attribute in dir(cls):
        member = inspect.getattr_static(cls, attribute)
        function = getattr(member, "fget", member)
        if inspect.isfunction(function) and function.__module__.startswith("smallcnn."):
            missing = _self_attributes(function, ast.Load) - available
            if missing:
                unset[attribute] = sorted(missing)
    assert unset == {}


def test_the_exported_classifier_needs_nothing_of_the_run_folders():
    """No import cycle: the classifier of an exported file imports the shared base, never
    the run folder's classifier (deferred imports included)."""
    import ast
    import inspect

    import smallcnn.inference.exported as exported

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(exported)))
                if isinstance(node, ast.ImportFrom)}
    assert "smallcnn.inference.predict" not in imported
    assert "smallcnn.inference.classifier" in imported
