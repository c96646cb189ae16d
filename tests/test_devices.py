"""--devices and --precision: resolving them on this CPU-only machine, and mixed precision
(the copy that trains, the float32 model that is saved, the probabilities they give)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from smallcnn.runtime import devices
from smallcnn.errors import UsageError
from smallcnn.train.settings import Settings


@pytest.mark.parametrize("value", ["0", "-1", "two", "gpu", ""])
def test_bad_device_choices_are_refused_with_what_would_work(value):
    with pytest.raises(UsageError, match="Choose auto, cpu, all, or a number"):
        devices.check_devices(value)
    with pytest.raises(UsageError, match="--devices"):
        Settings(devices=value).resolve("train")


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(UsageError, match="Choose one of: " + ", ".join(devices.PRECISIONS)):
        Settings(precision="float16").resolve("train")


def test_tf_config_without_a_cluster_is_one_machine(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert devices.cluster() is None
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
         "task": {"type": "worker", "index": 1}}))
    assert devices.cluster() == ("worker", 1, 3)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:1"]},
                                                "task": {"type": "ps", "index": 0}}))
    with pytest.raises(UsageError, match="runs on the chief and worker tasks"):
        devices.cluster()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UsageError, match="TF_CONFIG is not a TensorFlow cluster description"):
        devices.cluster()


def test_the_chief_is_the_chief_task_else_worker_0(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    first = devices.Placement(["/cpu:0"], "float32", workers=2, task=("worker", 0))
    second = devices.Placement(["/cpu:0"], "float32", workers=2, task=("worker", 1))
    assert first.is_chief and not second.is_chief
    assert (first.worker_index, second.worker_index) == (0, 1)
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}))
    assert not first.is_chief and first.worker_index == 1


def test_auto_on_a_cpu_machine_is_the_cpu_in_float32_without_importing_tensorflow():
    """The CPU defaults stay as they were (LiteRT's float32 conversion on one device), and
    extract on a CPU still needs no TensorFlow to choose them."""
    code = ("import sys, json; from smallcnn.runtime.devices import place; p = place(); "
            "print(json.dumps([p.record(), 'tensorflow' in sys.modules]))")
    record, imported = json.loads(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    if devices.has_gpu_driver():
        pytest.skip("this machine has a GPU")
    assert record == {"strategy": "none", "workers": 1, "replicas": 1, "devices": ["/cpu:0"],
                      "precision": "float32"}
    assert not imported


def test_the_engine_is_tensorflow_on_several_devices_or_in_mixed_precision(monkeypatch):
    from smallcnn.runtime.engine import chosen_engine

    monkeypatch.delenv("SMALLCNN_ENGINE", raising=False)
    one = devices.Placement(["/cpu:0"], "float32")
    assert chosen_engine("auto", one) == "auto"  # LiteRT where it runs, as before
    assert chosen_engine("auto", devices.Placement(["/cpu:0", "/cpu:1"], "float32")) == "tensorflow"
    assert chosen_engine("auto", devices.Placement(["/gpu:0"], "float32", "gpu")) == "tensorflow"
    assert chosen_engine("auto", devices.Placement(["/cpu:0"], "mixed_bfloat16")) == "tensorflow"
    assert chosen_engine("litert", devices.Placement(["/gpu:0"], "float32", "gpu")) == "litert"


def _classifier(base_name="small", size=32, classes=3):
    from smallcnn.model.bases import build_base, get_base
    from smallcnn.model.networks import build_classifier, build_head, unfreeze_top

    spec = get_base(base_name)
    base = build_base(spec, size, "none")
    model = build_classifier(spec, base, build_head(spec.feature_width, classes), size)
    unfreeze_top(base, 2)
    return model


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_copy_computes_in_it_but_gives_float32_probabilities(policy):
    import keras

    keras.utils.set_random_seed(0)
    model = _classifier()
    copy = devices.with_precision(model, policy)
    inner = [layer for layer in copy.get_layer("small").layers if layer.weights]
    assert {layer.dtype_policy.name for layer in inner} == {policy}
    output = copy.get_layer("head").get_layer(devices.OUTPUT_LAYER)
    assert output.dtype_policy.name == "float32"  # Keras' guidance for the last layer
    assert [w.name for w in copy.trainable_weights] == [w.name for w in model.trainable_weights]
    pixels = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    got = copy.predict(pixels, verbose=0)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 0.02
    back = devices.with_precision(copy, "float32")
    assert {w.dtype for w in back.weights} == {"float32"}
    np.testing.assert_allclose(back.predict(pixels, verbose=0), expected, atol=1e-5)


@pytest.mark.heavy
def test_a_model_trained_in_mixed_precision_is_saved_in_float32_with_the_same_probabilities(
        tiny_data):
    """The run trains a bfloat16 copy; its model.keras is float32, takes the same raw
    pixels, and gives the probabilities the trained copy gave (within bfloat16's rounding)."""
    import keras

    from smallcnn import load, train
    from smallcnn.data.pipeline import decode_split
    from smallcnn.data.dataset import find_dataset
    from smallcnn.progress import Reporter

    result = train.train(tiny_data, Settings(base="small", image_size=32, epochs=3,
                                             precision="mixed_bfloat16"), out="run")
    config = json.loads((result.run_dir / "smallcnn.json").read_text())
    assert config["distribution"]["precision"] == "mixed_bfloat16"
    assert result.metrics["ran_on"] == "CPU, mixed_bfloat16"
    saved = keras.saving.load_model(result.run_dir / "model.keras", compile=False)
    policies = {layer.dtype_policy.name for layer in saved.get_layer("small").layers}
    assert policies == {"float32"}
    assert saved.inputs[0].dtype == "float32" and saved.input_shape[1:] == (32, 32, 3)
    val = decode_split(find_dataset(tiny_data).splits["val"], 32, Reporter())
    pixels = val.images.astype(np.float32)
    float32 = saved.predict(pixels, verbose=0)
    trained_copy = devices.with_precision(saved, "mixed_bfloat16").predict(pixels, verbose=0)
    assert np.abs(float32 - trained_copy).max() < 0.05
    assert (float32.argmax(1) == trained_copy.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(load(result.run_dir).probabilities(val.images), float32,
                               atol=1e-4)  # what predict runs: the float32 model
    assert result.metrics["val_accuracy"] >= 0.9


@pytest.mark.heavy
def test_mixed_float16_trains_with_loss_scaling(tiny_data):
    import types

    import keras

    from smallcnn import train
    from smallcnn.train import keras_loop

    session = types.SimpleNamespace(settings=Settings().resolve("train"),
                                    placement=devices.Placement(["/gpu:0"], "mixed_float16"))
    scaled = keras_loop.optimizer(session, 1e-3, 10, 1, mixed=True)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(keras_loop.optimizer(session, 1e-3, 10, 1),
                          keras.optimizers.LossScaleOptimizer)  # a float32 head needs none

    result = train.train(tiny_data, Settings(base="small", image_size=32, epochs=3,
                                             precision="mixed_float16"), out="run")
    losses = [row["loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert result.metrics["val_accuracy"] >= 0.9


def test_predict_runs_a_folder_on_the_gpus_and_a_few_images_as_before(trained, monkeypatch):
    """Where TensorFlow sees GPUs, many images run in Keras on them (here a CPU device
    stands in for the GPU); a few images keep the way they ran before (no TensorFlow
    import for a run with a LiteRT route, this run's eager Keras calls)."""
    from smallcnn import load
    from smallcnn.data.dataset import find_dataset
    from smallcnn.data.pipeline import decode_split
    from smallcnn.progress import Reporter

    run_dir, data = trained
    monkeypatch.delenv("SMALLCNN_ENGINE", raising=False)
    monkeypatch.setattr(devices, "has_gpu_driver", lambda: True)
    monkeypatch.setattr(devices, "place",
                        lambda *args, **kwargs: devices.Placement(["/cpu:0"], "float32", "gpu"))
    classifier = load(run_dir)
    val = decode_split(find_dataset(data).splits["val"], classifier.image_size, Reporter())
    many = np.concatenate([val.images] * (classifier.litert_min_images // len(val) + 1))
    on_gpus = classifier.probabilities(many)
    assert classifier.engine == "keras on GPU, float32"
    expected = classifier.model.predict(many.astype(np.float32), verbose=0)
    np.testing.assert_allclose(on_gpus, expected, atol=1e-5)
    few = classifier.probabilities(val.images[:3])
    assert classifier.engine.startswith("keras (3 image(s)")
    np.testing.assert_allclose(few, expected[:3], atol=1e-3)
    # Many images again: back on the GPUs, with the same probabilities.
    np.testing.assert_allclose(classifier.probabilities(many), expected, atol=1e-5)
    assert classifier.engine == "keras on GPU, float32"


def test_the_cluster_descriptions_in_the_docs_are_ones_smallcnn_reads(monkeypatch):
    """The README's TF_CONFIG and the indexed Job's (its index filled in) parse as the
    clusters they describe."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = re.search(r"export TF_CONFIG='(.+)'", (root / "README.md").read_text()).group(1)
    monkeypatch.setenv("TF_CONFIG", readme)
    assert devices.cluster() == ("worker", 0, 2)
    manifest = (root / "docs" / "k8s" / "smallcnn-indexed-job.yaml").read_text()
    line = re.search(r'export TF_CONFIG="(.+)"', manifest).group(1)
    monkeypatch.setenv("TF_CONFIG", line.replace('\\"', '"').replace("$JOB_COMPLETION_INDEX", "1"))
    assert devices.cluster() == ("worker", 1, 2)


def test_devices_cpu_in_a_cluster_is_still_a_cluster_worker(monkeypatch):
    """--devices cpu chooses the device, not whether the machine takes part: the task
    keeps its place in the cluster (the strategy itself is not created here)."""
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    monkeypatch.setattr(devices.Placement, "strategy", lambda self: None)
    notes = []
    placement = devices.place("cpu", "mixed_float16", note=notes.append)
    assert (placement.devices, placement.workers, placement.replicas) == (["/cpu:0"], 2, 2)
    assert not placement.is_chief and placement.strategy_name == "MultiWorkerMirroredStrategy"
    assert notes and "mixed_float16 on a CPU is slow" in notes[0]
