"""The four commands end to end through the CLI, on tiny generated images."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from conftest import invoke, invoke_in_subprocess, make_dataset

from smallcnn.runtime.engine import expected_engine
from smallcnn.runtime.litert import base_conversion

FAST = ["--epochs", "3", "--batch-size", "8"]


def auto_engine(weights, base="mobilenet_v2", image_size=32):
    """The engine auto runs the base on here: OpenVINO or LiteRT, as its race recorded."""
    from smallcnn.model.bases import get_base

    return expected_engine(model=base_conversion(get_base(base), str(weights), image_size))[0]


def _run_dir(result):
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("Model saved in "))
    return line.split("Model saved in ")[1].split(". Predict")[0]


def test_extract_small_base_learns_and_writes_a_run(tiny_data):
    result = invoke("extract", tiny_data, "--base", "small", "--image-size", "32",
                    "--epochs", "40", "--out", "runs/x")
    assert result.exit_code == 0, result.output
    assert "blue" in result.output and "train" in result.output  # the data table
    from pathlib import Path

    run = Path("runs/x")
    assert {p.name for p in run.iterdir()} >= {"model.keras", "metrics.json", "history.csv",
                                              "smallcnn.json", "curves.png"}
    # Written through temporary files, yet with the usual permissions (not mkstemp's 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in run.iterdir()} == {0o666 & ~umask}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_accuracy"] > 0.75  # two colours: chance is 0.5
    assert {"val_loss", "epochs", "seconds"} <= set(metrics)
    config = json.loads((run / "smallcnn.json").read_text())
    assert config["class_names"] == ["blue", "red"]
    assert config["base"] == "small" and config["image_size"] == 32
    assert config["weights"] == "none" and config["preprocessing"] == "scale"
    assert config["settings"]["epochs"] == 40
    assert "extract" in config["command_line"]
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,phase,") and len(history) == metrics["epochs"] + 1


def test_predict_json_and_table(tiny_data):
    invoke("extract", tiny_data, "--base", "small", "--image-size", "32", "--epochs", "40",
           "--out", "runs/x")
    images = sorted((tiny_data / "val" / "red").iterdir())[:3]
    result = invoke("predict", *images, "--model", "runs/x", "--json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert [p["path"] for p in predictions] == [str(p) for p in images]
    for p in predictions:
        assert p["label"] in ("blue", "red")
        assert len(p["top"]) == 2
        assert abs(sum(t["probability"] for t in p["top"]) - 1) < 1e-4
        assert p["probability"] == p["top"][0]["probability"]
    assert sum(p["label"] == "red" for p in predictions) >= 2
    # Which way the model ran, and why not a faster one: in the JSON and in one line.
    assert predictions[0]["engine"] == "keras (3 image(s), under the 64 that pay for converting " \
        "the model to LiteRT)"
    assert f"engine: {predictions[0]['engine']}" in result.output
    refused = invoke("predict", *images, "--model", "runs/x", "--batch-size", "0")
    assert refused.exit_code == 2 and "--batch-size must be between 1 and" in refused.output
    # A folder, and the most recent run by default, in a table.
    table = invoke("predict", tiny_data / "val" / "blue")
    assert table.exit_code == 0, table.output
    assert "blue_000.png" in table.output and "probability" in table.output


def test_a_folder_predicts_a_chunk_at_a_time_with_the_same_results(tiny_data, monkeypatch):
    from smallcnn.inference.classifier import load_readable
    from smallcnn.inference.predict import Classifier, load

    invoke("extract", tiny_data, "--base", "small", "--image-size", "32", *FAST, "--out", "runs/x")
    (tiny_data / "val" / "red" / "red_0035.png").write_bytes(b"")  # sorted among the reds
    whole, whole_failures = load("runs/x").predict_paths([tiny_data / "val"])
    whole_evaluation = json.loads(invoke("evaluate", "runs/x", "--json").stdout)
    monkeypatch.setattr(Classifier, "chunk_images", 5)
    decoded = []
    monkeypatch.setattr("smallcnn.inference.classifier.load_readable",
                        lambda paths, size, _real=load_readable: decoded.append(len(paths))
                        or _real(paths, size))
    chunked, failures = load("runs/x").predict_paths([tiny_data / "val"])
    assert decoded == [5, 5, 5, 5, 5]  # 24 images and the empty file
    assert [p.path for p in chunked] == [p.path for p in whole] and len(chunked) == 24
    assert [p.label for p in chunked] == [p.label for p in whole]
    np.testing.assert_allclose([p.probability for p in chunked],
                               [p.probability for p in whole], atol=1e-6)
    assert [f.path for f in failures] == [f.path for f in whole_failures] == \
        [str(tiny_data / "val" / "red" / "red_0035.png")]
    # evaluate goes through the same chunks
    decoded.clear()
    evaluation = json.loads(invoke("evaluate", "runs/x", "--json").stdout)
    assert decoded == [5, 5, 5, 5, 5]
    for key in ("accuracy", "images", "confusion_matrix", "skipped"):
        assert evaluation[key] == whole_evaluation[key], key
    assert evaluation["images"] == 24 and len(evaluation["skipped"]) == 1


def test_predict_with_a_cached_conversion_needs_no_tensorflow(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=35, size=32)
    assert invoke("extract", data, "--base", "small", "--image-size", "32", *FAST,
                  "--out", "runs/x").exit_code == 0
    many = invoke("predict", data / "val", "--model", "runs/x", "--json")  # 70: converts
    assert many.exit_code == 0, many.output
    expected = {p["path"]: p for p in json.loads(many.stdout)}
    image = data / "val" / "red" / "red_003.png"
    output, _, imported = invoke_in_subprocess("predict", image, "--model", "runs/x", "--json")
    assert imported == []
    [got] = json.loads(output)
    assert got["label"] == expected[str(image)]["label"]
    assert got["probability"] == pytest.approx(expected[str(image)]["probability"], abs=1e-5)


@pytest.mark.heavy
def test_a_train_run_predicts_without_tensorflow_from_the_first_image(tiny_data, monkeypatch):
    from smallcnn.data.images import load_image
    from smallcnn.inference.predict import load

    monkeypatch.delenv("SMALLCNN_CONVERT_RUNS")
    result = invoke("train", tiny_data, "--base", "small", "--image-size", "32", *FAST,
                    "--out", "runs/t")
    assert result.exit_code == 0, result.output
    image = tiny_data / "val" / "red" / "red_001.png"
    output, _, imported = invoke_in_subprocess("predict", image, "--model", "runs/t", "--json")
    assert imported == []  # train cached the model's LiteRT conversion
    [got] = json.loads(output)
    expected = load("runs/t").model.predict(load_image(image, 32)[None].astype("float32"),
                                            verbose=0)[0]
    assert got["probability"] == pytest.approx(float(expected.max()), abs=1e-5)


@pytest.mark.heavy
def test_extract_views_train_the_head_on_augmented_copies(tiny_data, base_weights_file):
    args = ["extract", tiny_data, "--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32", *FAST,
            "--views", "2"]
    first = invoke(*args, "--out", "runs/v1")
    assert first.exit_code == 0, first.output
    metrics = json.loads(open("runs/v1/metrics.json").read())
    assert metrics["views"] == 2 and metrics["head_training_rows"] == 3 * 24
    config = json.loads(open("runs/v1/smallcnn.json").read())
    assert config["settings"]["augment"] == "light"  # extract's default is none
    second = invoke(*args, "--out", "runs/v2")
    assert second.exit_code == 0, second.output
    assert "augmented view 1 from the cache" in second.output
    assert "augmented view 2 from the cache" in second.output
    different = invoke(*args, "--augment", "strong", "--out", "runs/v3")
    assert different.exit_code == 0 and "augmented view 1 from the cache" not in different.output
    refused = invoke(*args, "--augment", "none")
    assert refused.exit_code == 2 and "--views needs an augmentation" in refused.output
    refused = invoke(*args, "--heads", "0")
    assert refused.exit_code == 2 and "--heads must be between 1 and 32" in refused.output
    refused = invoke(*args, "--dropout", "1.5")
    assert refused.exit_code == 2 and "--dropout must be at least 0 and below 1" in refused.output


@pytest.mark.heavy
def test_extract_features_follow_the_files_content(tmp_path, base_weights_file):
    data = make_dataset(tmp_path / "d", ext=".bmp")  # BMP: same size whatever the pixels
    args = ["extract", data, "--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32", *FAST]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "from the cache" not in first.output
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "train: 24 feature vectors from the cache" in second.output
    # A file touched but unchanged keeps the cached features.
    path = data / "train" / "red" / "red_000.bmp"
    os.utime(path, (time.time() + 5, time.time() + 5))
    third = invoke(*args)
    assert "train: 24 feature vectors from the cache" in third.output
    # A file replaced by another of the same size, its time kept (cp -p, rsync -t):
    # new features for its split only.
    stat = path.stat()
    before = path.read_bytes()
    Image.open(data / "train" / "blue" / "blue_000.bmp").save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.read_bytes() != before
    fourth = invoke(*args)
    assert "train: 24 feature vectors from the cache" not in fourth.output
    assert "val: 24 feature vectors from the cache" in fourth.output


@pytest.mark.heavy
def test_a_cold_extract_prepares_the_base_in_a_helper_and_imports_no_tensorflow(
        tiny_data, base_weights_file, monkeypatch, tmp_path):
    """With an empty cache, a helper process imports TensorFlow and converts the base while
    the run checks and decodes the images; the run's own process never imports it, and
    trains the same model as a run that did everything itself."""
    args = ["extract", tiny_data, "--base", "mobilenet_v2", "--weights", base_weights_file,
            "--image-size", "32", *FAST]
    output, _, imported = invoke_in_subprocess(*args, "--out", "runs/helper")
    assert imported == []
    helped = json.loads(open("runs/helper/metrics.json").read())
    assert "prepare" in helped["timings"] and helped["engine"] == auto_engine(base_weights_file)

    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "other-cache"))
    alone = invoke(*args, "--out", "runs/alone")  # TensorFlow is imported here: no helper
    assert alone.exit_code == 0, alone.output
    itself = json.loads(open("runs/alone/metrics.json").read())
    assert "prepare" not in itself["timings"] and "convert" in itself["timings"]
    assert helped["val_loss"] == pytest.approx(itself["val_loss"], abs=1e-6)
    assert helped["val_accuracy"] == itself["val_accuracy"]


@pytest.mark.heavy
def test_a_failed_helper_is_reported_and_the_run_prepares_the_base_itself(tiny_data,
                                                                         base_weights_file,
                                                                         monkeypatch):
    from smallcnn.train import warmup

    def failing(spec, weights, image_size, seed, template=None, warn=None):
        return warmup.Warmup({"base": "no_such_base", "image_size": image_size, "seed": seed,
                              "weights": weights, "engine": "x.tflite"})

    monkeypatch.setattr(warmup, "start", failing)
    result = invoke("extract", tiny_data, "--base", "mobilenet_v2", "--weights",
                    base_weights_file, "--image-size", "32", *FAST, "--out", "runs/x")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Preparing the base in a helper process failed (UsageError: Unknown base: " \
        "'no_such_base'" in said and "preparing it here instead." in said
    metrics = json.loads(open("runs/x/metrics.json").read())
    assert metrics["engine"] == auto_engine(base_weights_file)


def test_a_helper_that_cannot_start_is_said_in_one_line(base_weights_file, monkeypatch):
    from smallcnn.model.bases import get_base
    from smallcnn.train import warmup

    def no_processes(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(warmup, "_tensorflow_imported", lambda: False)
    monkeypatch.setattr(warmup.subprocess, "Popen", no_processes)
    said = []
    assert warmup.start(get_base("mobilenet_v2"), str(base_weights_file), 32, 1,
                        warn=said.append) is None
    assert said == ["Could not start a helper process to prepare the base (OSError: [Errno 12] "
                    "Cannot allocate memory); preparing it in this process."]


def test_a_helper_that_cannot_write_the_template_says_so(tmp_path, monkeypatch):
    from smallcnn.model.bases import get_base
    from smallcnn.train import warmup

    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("SMALLCNN_CACHE", str(blocked))  # no entry can be written under it
    spec = get_base("small")
    job = {"base": spec.name, "image_size": 32, "seed": 1, "weights": "none",
           "templates": [{"key": "0" * 64, "feature_width": spec.feature_width,
                          "num_classes": 2, "hidden": 0, "dropout": 0.0}]}
    with pytest.raises(RuntimeError, match=warmup.TEMPLATE_NOT_WRITTEN):
        warmup.run(job)


def test_a_cancelled_helper_stops_and_leaves_nothing_in_the_cache(base_weights_file):
    from smallcnn.runtime import cache
    from smallcnn.model.bases import get_base
    from smallcnn.runtime.litert import litert_name
    from smallcnn.train import warmup

    spec = get_base("mobilenet_v2")
    helper = warmup.Warmup({"base": "mobilenet_v2", "image_size": 32, "seed": 1,
                            "weights": str(base_weights_file),
                            "engine": litert_name(spec, str(base_weights_file), 32)})
    assert helper.running()
    helper.cancel()
    assert not helper.running() and helper.wait() == "cancelled"
    assert not cache.root("engines").exists() or not any(cache.root("engines").iterdir())


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_a_missing_data_folder_is_refused_before_tensorflow_is_imported(command, tmp_path):
    from smallcnn.errors import DataError

    missing = tmp_path / "missing"
    _, stderr, imported = invoke_in_subprocess(command, missing, exit_code=DataError.exit_code)
    assert f"Data folder not found: {str(missing)!r}" in stderr
    assert imported == []  # told in a second, not after TensorFlow's start-up


@pytest.mark.heavy
def test_a_new_data_set_with_the_base_cached_needs_no_tensorflow(tiny_data, base_weights_file,
                                                                  tmp_path):
    """The base's conversion and the model template are cached by the first data set: a
    second one (other images) decodes and runs the cached engine, and imports no TensorFlow."""
    args = ["--base", "mobilenet_v2", "--weights", str(base_weights_file), "--image-size", "32",
            *FAST]
    assert invoke("extract", tiny_data, *args, "--out", "runs/first").exit_code == 0
    other = make_dataset(tmp_path / "other", per_class=6, seed=7)
    output, _, imported = invoke_in_subprocess("extract", other, *args, "--out", "runs/second")
    assert "feature vectors from the cache" not in output  # new images: computed
    assert imported == []
    metrics = json.loads(open("runs/second/metrics.json").read())
    assert metrics["engine"] == auto_engine(base_weights_file)
    assert "import" not in metrics["timings"]


@pytest.mark.heavy
def test_a_warm_extract_needs_no_tensorflow_and_saves_the_same_model(tiny_data, base_weights_file):
    import keras
    from PIL import Image

    args = ["extract", str(tiny_data), "--base", "mobilenet_v2", "--weights", str(base_weights_file), "--image-size", "32",
            *FAST, "--hidden", "8"]
    first = invoke(*args, "--out", "runs/cold")
    assert first.exit_code == 0, first.output
    output, _, imported = invoke_in_subprocess(*args, "--out", "runs/warm")
    assert "train: 24 feature vectors from the cache" in output
    assert imported == []
    # The same seed trains the same head; the model files predict alike.
    cold_metrics = json.loads(open("runs/cold/metrics.json").read())
    warm_metrics = json.loads(open("runs/warm/metrics.json").read())
    for key in ("val_accuracy", "val_loss", "epochs", "best_epoch"):
        assert warm_metrics[key] == cold_metrics[key]
    cold = keras.saving.load_model("runs/cold/model.keras", safe_mode=True)
    warm_model = keras.saving.load_model("runs/warm/model.keras", safe_mode=True)
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32)), np.float32)
                       for p in sorted((tiny_data / "val").rglob("*.png"))[:6]])
    np.testing.assert_allclose(warm_model.predict(images, verbose=0),
                               cold.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    config = json.loads(open("runs/warm/smallcnn.json").read())
    assert warm_model.get_layer(config["base_layer"]) is not None
    # extract's five heads (seeds 42-46) are saved as one head of 5 x 8 hidden units.
    assert config["settings"]["heads"] == 5 and warm_metrics["heads"] == 5
    assert warm_model.get_layer("head").get_layer("head_hidden").units == 40
    # The model file loads in plain Keras, safe mode, in a Python that never imports smallcnn.
    import subprocess
    import sys

    code = ("import sys, numpy, keras\n"
            "m = keras.saving.load_model('runs/warm/model.keras', safe_mode=True)\n"
            "print(m.predict(numpy.zeros((1, 32, 32, 3)), verbose=0).shape, "
            "any(k.startswith('smallcnn') for k in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "(1, 2) False"


@pytest.mark.heavy
@pytest.mark.parametrize("command", [["extract"], ["train", "--freeze"]])
def test_a_frozen_base_run_predicts_without_tensorflow_until_its_model_changes(
        command, tiny_data, base_weights_file, monkeypatch):
    from smallcnn.data.images import load_image
    from smallcnn.model.networks import HEAD_NAME
    from smallcnn.inference.predict import load

    monkeypatch.delenv("SMALLCNN_CONVERT_RUNS")  # the run may convert: it need not
    result = invoke(*command, tiny_data, "--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32",
                    *FAST, "--out", "runs/x")
    assert result.exit_code == 0, result.output
    assert "convert_model" not in json.loads(open("runs/x/metrics.json").read())["timings"]
    image = tiny_data / "val" / "blue" / "blue_002.png"
    keras_model = load("runs/x").model
    expected = keras_model.predict(load_image(image, 32)[None].astype("float32"), verbose=0)[0]
    output, _, imported = invoke_in_subprocess("predict", image, "--model", "runs/x", "--json")
    assert imported == []  # the base's cached LiteRT conversion, then the head in NumPy
    [got] = json.loads(output)
    blue = json.loads(open("runs/x/smallcnn.json").read())["class_names"].index("blue")
    assert got["top"][0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert {t["label"]: t["probability"] for t in got["top"]}["blue"] == pytest.approx(
        float(expected[blue]), abs=1e-5)
    # A model.keras replaced after training (here: a head that always says "red") is not
    # the one the run describes: predict notices and runs the file itself.
    head = keras_model.get_layer(HEAD_NAME)
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.where(np.arange(2) == blue, -20.0, 20.0)])
    keras_model.save("runs/x/model.keras")
    output, _, imported = invoke_in_subprocess("predict", image, "--model", "runs/x", "--json")
    [got] = json.loads(output)
    assert got["label"] == "red" and got["probability"] > 0.99
    assert "tensorflow" in imported


def _base_weights(run_dir, base_layer):
    import keras

    import smallcnn.model.layers  # noqa: F401

    model = keras.saving.load_model(f"{run_dir}/model.keras", safe_mode=True, compile=False)
    base = model.get_layer(base_layer)
    return {layer.name: [w.numpy() for w in layer.weights] for layer in base.layers if layer.weights}


def _file_weights(path):
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.load_weights(str(path))
    return base.name, {l.name: [w.numpy() for w in l.weights] for l in base.layers if l.weights}


@pytest.mark.heavy
def test_train_freeze_keeps_base_and_finetune_changes_only_unfrozen_layers(
    tiny_data, base_weights_file
):
    base_name, original = _file_weights(base_weights_file)
    # A barely trained head, so that fine-tuning improves on it and its weights are kept.
    frozen = invoke("train", tiny_data, "--freeze", "--base", "mobilenet_v2", "--weights", base_weights_file,
                    "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                    "--learning-rate", "0.0001", "--out", "runs/f")
    assert frozen.exit_code == 0, frozen.output
    after_train = _base_weights("runs/f", base_name)
    assert all(np.array_equal(a, b) for name in original
               for a, b in zip(original[name], after_train[name]))

    tuned = invoke("finetune", "--from", "runs/f", "--unfreeze", "2", "--epochs", "2",
                   "--batch-size", "8", "--learning-rate", "0.01", "--out", "runs/t")
    assert tuned.exit_code == 0, tuned.output
    assert "Unfroze 2 base layer(s): Conv_1, block_16_project" in tuned.output
    assert "parameters now train" in tuned.output
    after_tune = _base_weights("runs/t", base_name)
    changed = {name for name in original
               if not all(np.array_equal(a, b) for a, b in zip(original[name], after_tune[name]))}
    assert changed == {"Conv_1", "block_16_project"}  # BatchNorm and lower layers untouched
    metrics = json.loads(open("runs/t/metrics.json").read())
    assert metrics["unfrozen_layers"] == ["Conv_1", "block_16_project"]
    config = json.loads(open("runs/t/smallcnn.json").read())
    assert config["from_run"].endswith("runs/f")

    # Fine-tuning that only makes things worse does not replace the better model.
    ruined = invoke("finetune", "--from", "runs/f", "--unfreeze", "2", "--epochs", "1",
                    "--batch-size", "8", "--learning-rate", "1000", "--out", "runs/r")
    assert ruined.exit_code == 0, ruined.output
    assert "kept the model from before it" in ruined.output
    before = json.loads(open("runs/f/metrics.json").read())
    after = json.loads(open("runs/r/metrics.json").read())
    assert after["val_loss"] <= before["val_loss"] + 1e-3
    assert after["val_accuracy"] >= before["val_accuracy"] and after["kept_earlier_model"]


@pytest.mark.heavy
def test_finetune_without_a_run_trains_the_head_first_then_whole_blocks(tiny_data, base_weights_file,
                                                                      monkeypatch):
    import smallcnn.data.pipeline

    decoded = []
    decode_split = smallcnn.data.pipeline.decode_split

    def counting(split, *args, **kwargs):
        decoded.append(split.name)
        return decode_split(split, *args, **kwargs)

    monkeypatch.setattr(smallcnn.data.pipeline, "decode_split", counting)
    result = invoke("finetune", tiny_data, "--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32",
                    "--head-epochs", "2", "--epochs", "2", "--unfreeze-blocks", "2",
                    "--batch-size", "8", "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    # MobileNetV2's top two blocks, whole: Conv_1, and block_16 (BatchNorm excepted).
    assert json.loads(open("runs/ft/metrics.json").read())["unfrozen_layers"] == [
        "Conv_1", "block_16_project", "block_16_depthwise", "block_16_expand"]
    history = open("runs/ft/history.csv").read()
    assert ",frozen," in history and ",finetune," in history
    metrics = json.loads(open("runs/ft/metrics.json").read())
    head_epochs = history.count(",frozen,")
    assert 1 <= head_epochs <= 2
    assert metrics["finetune_start_epoch"] == head_epochs + 1
    assert f"\n{head_epochs + 1},finetune," in history
    # The head phase and the fine-tuning share the decoded images: each split decoded once.
    assert sorted(decoded) == sorted(set(decoded)) and {"train", "val"} <= set(decoded)


def test_finetune_refuses_more_blocks_than_the_base_has(tiny_data, base_weights_file):
    refused = invoke("finetune", tiny_data, "--base", "mobilenet_v2", "--weights",
                     base_weights_file, "--image-size", "32", "--unfreeze-blocks", "99",
                     "--out", "runs/c")
    assert refused.exit_code == 2 and "--unfreeze-blocks must be between 1 and 19" in refused.output
    assert not os.path.exists("runs/c")  # refused before a run folder was made


def test_finetune_accepts_a_run_folder_as_argument(tiny_data):
    invoke("train", tiny_data, "--base", "small", "--image-size", "32", *FAST, "--out", "runs/s")
    result = invoke("finetune", "runs/s", "--unfreeze", "1", "--epochs", "1", "--out", "runs/s2")
    assert result.exit_code == 0, result.output
    assert "Unfroze 1 base layer(s): block4_conv" in result.output


@pytest.mark.heavy
def test_train_small_from_scratch_beats_chance(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=20, classes=("red", "green", "blue"))
    result = invoke("train", data, "--base", "small", "--image-size", "32", "--epochs", "15",
                    "--batch-size", "8", "--augment", "light", "--out", "runs/s")
    assert result.exit_code == 0, result.output
    metrics = json.loads(open("runs/s/metrics.json").read())
    assert metrics["val_accuracy"] > 0.6  # three classes: chance is 0.33
    config = json.loads(open("runs/s/smallcnn.json").read())
    assert config["settings"]["freeze"] is False
    assert config["settings"]["augmentation"]["flip"] == "horizontal"


def test_test_split_is_evaluated(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=6, splits=("train", "val", "test"))
    result = invoke("extract", data, "--base", "small", "--image-size", "32", *FAST,
                    "--out", "runs/x")
    assert result.exit_code == 0, result.output
    metrics = json.loads(open("runs/x/metrics.json").read())
    assert "test_accuracy" in result.output
    # The figure the run records is what evaluating the saved model on the test split gives.
    evaluated = invoke("evaluate", "runs/x", "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["images"] == 12
    assert metrics["test_accuracy"] == pytest.approx(report["accuracy"])


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["extract", "nowhere"], 3, "Data folder not found: 'nowhere'"),
        (["extract", "{data}", "--base", "vgg17"], 2, "Unknown base: 'vgg17'"),
        (["train", "{data}", "--augment", "wild"], 2, "Unknown --augment 'wild'"),
        (["train", "{data}", "--flip", "diagonal"], 2, "Unknown --flip 'diagonal'"),
        (["extract", "{data}", "--optimizer", "lion", "--base", "small", "--image-size", "32"], 2,
         "Unknown --optimizer 'lion'"),
        (["extract", "{data}", "--base", "small", "--weights", "imagenet"], 2,
         "has no pretrained weights"),
        (["predict", "x.png"], 4, "No trained model found"),
        (["predict", "x.png", "--model", "nowhere"], 4, "No run folder or model at 'nowhere'"),
        (["finetune", "--from", "nowhere"], 4, "No run folder or model at 'nowhere'"),
    ],
)
def test_refusals_are_one_clear_line(tiny_data, args, code, message):
    result = invoke(*[a.replace("{data}", str(tiny_data)) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_existing_run_is_not_overwritten_unless_asked(tiny_data):
    args = ["extract", tiny_data, "--base", "small", "--image-size", "32", *FAST, "--out", "runs/x"]
    assert invoke(*args).exit_code == 0
    before = open("runs/x/model.keras", "rb").read()
    again = invoke(*args)
    assert again.exit_code == 2 and "already holds a run" in again.output
    assert open("runs/x/model.keras", "rb").read() == before
    assert invoke(*args, "--overwrite").exit_code == 0


def test_predict_refuses_damaged_model_and_missing_image(tiny_data):
    invoke("extract", tiny_data, "--base", "small", "--image-size", "32", *FAST, "--out", "runs/x")
    missing = invoke("predict", "nope.png", "--model", "runs/x")
    assert missing.exit_code == 3 and "No such image file or folder: 'nope.png'" in missing.output
    with open("runs/x/model.keras", "r+b") as f:
        f.truncate(1000)
    damaged = invoke("predict", tiny_data / "val", "--model", "runs/x")
    assert damaged.exit_code == 4 and "not a Keras model file" in damaged.output


def test_predict_names_each_unreadable_image_and_predicts_the_rest(tiny_data):
    invoke("extract", tiny_data, "--base", "small", "--image-size", "32", *FAST, "--out", "runs/x")
    good = tiny_data / "val" / "red" / "red_000.png"
    empty = tiny_data / "empty.jpg"
    empty.write_bytes(b"")
    html = tiny_data / "page.png"
    html.write_text("<html></html>")
    result = invoke("predict", good, empty, html, "--model", "runs/x", "--json")
    assert result.exit_code == 3
    assert [p["path"] for p in json.loads(result.stdout)] == [str(good)]
    assert f"Cannot read image '{empty}': the file is empty." in result.output
    assert f"Cannot read image '{html}': not an image" in result.output


def test_help_shows_the_defaults_it_describes():
    """Help texts say '[default: ...]' where no value can show it; rich must not take it
    for markup and drop it."""
    def text(*args):
        return " ".join(invoke(*args, "--help").output.replace("│", " ").split())

    assert "[default: the most recent run in ./runs]" in text("predict")
    extract = text("extract")
    assert "[default: 100]" in extract and "\\[default" not in extract  # derived options
    assert "folders [and test/], each" in extract  # not taken for markup either
    assert "[default: the first of filename, file, path, image, id]" in text("check")


def _library_defaults():
    """{command words: {option: the default of what the command calls}}, read from the
    library (a settings dataclass, or the library function's own default)."""
    import dataclasses
    import inspect

    from smallcnn.inference.evaluate import evaluate
    from smallcnn.inference.export import export
    from smallcnn.inference.predict import Classifier
    from smallcnn.inference.stream import predict_to_file
    from smallcnn.labels.label_issues import find_label_issues
    from smallcnn.labels.suggest import suggest
    from smallcnn.model.bases import DEFAULT_BASE
    from smallcnn.serve.app import ServeSettings
    from smallcnn.serve.labelling import LabelSettings
    from smallcnn.train.settings import Settings
    from smallcnn.visualize import activations, filters
    from smallcnn.visualize.dream import DreamSettings
    from smallcnn.visualize.style import StyleSettings

    def of(function, **names):  # option: the function's parameter
        parameters = inspect.signature(function).parameters
        return {option: parameters[name].default for option, name in names.items()}

    def fields(settings):
        return {f.name: getattr(settings(), f.name) for f in dataclasses.fields(settings)}

    predict = of(Classifier.predict_paths, top_k="top_k", batch_size="batch_size")
    assert predict == of(predict_to_file, top_k="top_k", batch_size="batch_size")  # --jsonl
    return {
        ("check",): {"seed": Settings().seed, "val_split": Settings().val_split,
                     "base": DEFAULT_BASE, **of(find_label_issues, folds="folds")},
        ("predict",): predict,
        ("evaluate",): of(evaluate, split="split", top="top_wrong"),
        ("export",): of(export, format="format", quantize="quantize"),
        ("serve",): fields(ServeSettings),
        ("label",): fields(LabelSettings),
        ("suggest",): of(suggest, n="n", strategy="strategy"),
        ("visualize", "activations"): of(activations, channels="channels"),
        ("visualize", "filters"): of(filters, filters="count", steps="steps"),
        ("visualize", "dream"): fields(DreamSettings),
        ("visualize", "style"): fields(StyleSettings),
    }


def _commands():
    """{command words: its click command}, every command and subcommand."""
    import typer

    from smallcnn.cli import app

    def walk(command, words):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, (*words, name))
        else:
            yield words, command

    return dict(walk(typer.main.get_command(app), ()))


@pytest.mark.parametrize("words", sorted(_commands()), ids=" ".join)
def test_every_command_shows_the_default_its_library_uses(words, monkeypatch):
    """What `--help` says an option's default is, is the one the library uses when the
    option is not given (the training commands: tests/test_settings.py)."""
    import re

    from smallcnn.train.settings import COMMANDS

    if words[0] in COMMANDS:
        pytest.skip("derived from smallcnn.train.settings, checked in test_settings.py")
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("TERMINAL_WIDTH", "1000")
    help_text = invoke(*words, "--help").output
    shown = {}
    for line in help_text.splitlines():
        # An option's name, after the marker of a required one (label's --data) if any.
        option = re.search(r"│[ *]+(--[a-z-]+)", line)
        default = re.search(r"\[default: (.*?)\]\s*│", line)
        if option and default:
            shown[option.group(1)[2:].replace("-", "_")] = default.group(1)
    expected = _library_defaults().get(words, {})
    for parameter in _commands()[words].params:
        if parameter.param_type_name != "option" or parameter.default in (None, False):
            continue
        name = max(parameter.opts, key=len)[2:].replace("-", "_")
        assert name in shown, (name, "shows no [default: ...]")
        assert name in expected, (name, "has a default of its own, not the library's")
    for name, value in expected.items():
        if value is not None:
            text = shown[name]
            assert (float(text) == value if isinstance(value, float) else text == str(value)), \
                (name, text, value)


def _parse_errors(words, command):
    """What a user may mistype for `smallcnn WORDS`: an unknown option, a missing argument,
    a word that is no integer for each integer option."""
    from test_settings import _number_kind

    arguments = ["x" for p in command.params if p.param_type_name == "argument" and p.required]
    mistakes = [[*arguments, "--no-such-option"]]
    if arguments:
        mistakes.append([])
    for parameter in command.params:
        if parameter.param_type_name == "option" and _number_kind(parameter) is int:
            flag = max(parameter.opts, key=len)
            mistakes += [[*arguments, flag, value] for value in ("inf", "nan", "1e308", "two")]
    return [[*words, *mistake] for mistake in mistakes]


@pytest.mark.parametrize("words", sorted(_commands()), ids=" ".join)
def test_every_parse_error_is_one_line_with_exit_2(words):
    cases = _parse_errors(words, _commands()[words])
    if words[0] == "visualize":
        cases.append(["visualize", "no-such-picture"])
    cases += [["no-such-command"], ["--no-such-option"]]
    for case in cases:
        result = invoke(*case)
        assert result.exit_code == 2, (case, result.output)
        assert len(result.output.strip().splitlines()) == 1, (case, result.output)
        assert result.output.startswith("error: ") and result.output.endswith(
            "--help'.\n"), (case, result.output)
    shown = invoke(*words, "--help")
    assert shown.exit_code == 0 and "Usage: smallcnn" in shown.output


def _truncated_tiff():
    """The first 100 bytes of a TIFF: Pillow warns 'Truncated File Read' on opening it."""
    import io

    written = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(written, "TIFF")
    return written.getvalue()[:100]


def test_a_file_pillow_warns_about_is_skipped_with_one_line(tiny_data, trained):
    """In the CLI a Pillow warning is the file's error: its reason in one line, no warning."""
    import warnings

    bad = tiny_data / "train" / "red" / "bad.jpg"
    bad.write_bytes(_truncated_tiff())
    good = tiny_data / "val" / "red" / "red_000.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checked = invoke("check", tiny_data)
        predicted = invoke("predict", bad, good, "--model", trained[0])
    assert [str(w.message) for w in caught if "PIL" in w.filename] == []
    assert checked.exit_code == 0 and "bad.jpg" in checked.output, checked.output
    assert "the file is truncated" in checked.output
    assert predicted.exit_code == 3, predicted.output
    assert f"Cannot read image '{bad}': the file is truncated." in predicted.output


def _jpeg_with_corrupt_exif():
    """A good JPEG whose EXIF block names more tag data than it holds: Pillow warns 'Tag data
    larger than file' while reading it, and the pixels decode well."""
    import io
    import struct

    entry = struct.pack("<HHII", 0x010F, 2, 1000, 0x1000)  # Make: 1000 bytes, far past the end
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    written = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), (210, 50, 40), np.uint8)).save(
        written, "JPEG", exif=b"Exif\x00\x00" + tiff)
    return written.getvalue()


def test_a_photo_whose_metadata_pillow_warns_about_is_used(tmp_path, trained):
    """Only a truncation skips a file: a warning about metadata beside good pixels does not."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_jpeg_with_corrupt_exif())
    predicted = invoke("predict", photo, "--model", trained[0])
    assert predicted.exit_code == 0, predicted.output
    assert "Cannot read" not in predicted.output and "Warning" not in predicted.output
