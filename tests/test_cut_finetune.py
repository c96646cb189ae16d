"""finetune trains only what is unfrozen: the base is cut below its first unfrozen layer,
where the network is a single tensor; the bottom runs once per image view and the top
trains from its cached activations. Over the budget, or with no cut, it trains end to
end, saying why; never through Keras' fit."""

import json

import keras
import numpy as np
import pytest

from conftest import invoke
from smallcnn.data.dataset import find_dataset
from smallcnn.data.images import load_images
from smallcnn.model import runs
from smallcnn.model.bases import build_base, get_base
from smallcnn.model.networks import HEAD_NAME, layers_to_unfreeze
from smallcnn.runtime import cache
from smallcnn.runtime.litert import LiteRTEngine
from smallcnn.train import cut

SIZE = 32


@pytest.fixture(autouse=True)
def no_keras_fit(monkeypatch):
    """finetune trains through the one epoch loop (train/epochs.py), never `fit`."""
    def refused(*args, **kwargs):
        raise AssertionError("Keras' fit was used")

    monkeypatch.setattr(keras.Model, "fit", refused)


@pytest.fixture(scope="module")
def bases():
    return {name: build_base(get_base(name), SIZE, "none")
            for name in ("mobilenet_v2", "efficientnet_b0")}


# (base, --unfreeze, --unfreeze-blocks, the layer the cut is at): inside a residual
# block (MobileNetV2's block_15, EfficientNet's block6d) the cut falls at its input.
CUTS = [
    ("mobilenet_v2", 4, None, "block_15_add"),
    ("mobilenet_v2", 5, None, "block_14_add"),
    ("mobilenet_v2", 6, None, "block_14_add"),
    ("mobilenet_v2", None, 3, "block_14_add"),
    ("efficientnet_b0", 4, None, "block7a_activation"),  # below the squeeze-excite branch
    ("efficientnet_b0", 6, None, "block6d_add"),
    ("efficientnet_b0", 10, None, "block6c_add"),
    ("efficientnet_b0", None, 3, "block6c_add"),
]


@pytest.mark.heavy
@pytest.mark.parametrize("name, layers, blocks, expected", CUTS)
def test_the_cut_is_a_single_tensor_below_the_unfrozen_layers(bases, name, layers, blocks,
                                                              expected):
    base = bases[name]
    unfrozen = layers_to_unfreeze(base, layers, blocks, get_base(name).block_pattern)
    at = cut.find_cut(base, unfrozen)
    assert base.layers[at].name == expected
    assert at < min(base.layers.index(layer) for layer in unfrozen)
    bottom, top = cut.split_base(base, at)
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(top(bottom(images)), base(images), rtol=1e-4, atol=1e-4)
    assert {id(w) for w in top.weights} <= {id(w) for w in base.weights}  # shared, not copied


def cached_activations(expected):
    """The float16 activations in the cache that hold `expected` (those of the val
    images), within float16's precision: exactly one entry."""
    found = []
    for entry in cache.root("features").glob("*.npz"):
        with np.load(entry) as data:
            values = data["features"]
            scale = np.abs(expected).max()
            if values.shape == expected.shape and np.allclose(values, expected, rtol=2e-3,
                                                              atol=2e-3 * scale):
                found.append(values)
    assert len(found) == 1
    return found[0]


def _bottoms(engine):
    """`(engine, precision)` of the training views' bottom and of the evaluation splits'
    under `--engine engine`: the views in the engine's best precision, evaluation in
    float32 (the saved model's)."""
    if engine == "litert":
        return (LiteRTEngine.name, LiteRTEngine.precision), (LiteRTEngine.name, "float32")
    from smallcnn.runtime import openvino

    return (engine, openvino.best_precision()), (engine, "float32")


@pytest.mark.heavy
@pytest.mark.parametrize("engine", ["litert", "openvino"])
def test_a_cached_activation_finetune_saves_the_whole_network_predicting_the_same(
        tiny_data, tmp_path, monkeypatch, engine):
    if engine == "openvino":
        pytest.importorskip("openvino")
    opened = []
    open_engine = cut.CutTraining._open_engine
    monkeypatch.setattr(cut.CutTraining, "_open_engine",
                        lambda self, *args: opened.append(args) or open_engine(self, *args))
    # The shipped ImageNet weights: a random MobileNetV2's activations fade to ~1e-10.
    result = invoke("finetune", tiny_data, "--base", "mobilenet_v2", "--image-size", str(SIZE),
                    "--head-epochs", "1", "--epochs", "2", "--unfreeze", "4", "--batch-size", "8",
                    "--engine", engine, "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    assert "Fine-tuning from activations at 'block_15_add'" in result.output
    assert "Fine-tuning end to end" not in result.output
    metrics = json.loads((tmp_path / "runs/ft/metrics.json").read_text())
    assert metrics["unfrozen_layers"] == ["Conv_1", "block_16_project", "block_16_depthwise",
                                          "block_16_expand"]
    views, evaluation = _bottoms(engine)
    assert metrics["cut"] == {"layer": "block_15_add", "views": 2, "engine": views[0],
                              "engine_precision": views[1], "evaluation_engine": evaluation[0],
                              "evaluation_precision": evaluation[1]}
    assert len(opened) == len({views, evaluation})  # one bottom where both are float32

    model = keras.saving.load_model("runs/ft/model.keras", safe_mode=True)  # plain Keras
    val = find_dataset(tiny_data).splits["val"]
    images, _ = load_images(val.paths, SIZE)
    base = model.get_layer(runs.read_config("runs/ft")["base_layer"])
    at = cut.find_cut(base, layers_to_unfreeze(base, 4))
    bottom, top = cut.split_base(base, at)
    # The cache holds this network's bottom on the val images, as float16...
    activations = cached_activations(
        bottom(model.get_layer("preprocess")(images.astype("float32"))).numpy())
    assert activations.dtype == np.float16
    # ...and the whole network predicts as its top on those activations.
    on_activations = model.get_layer(HEAD_NAME)(
        model.get_layer("pool")(top(activations.astype("float32")))).numpy()
    whole = model.predict(images, verbose=0)
    np.testing.assert_allclose(whole, on_activations, atol=1e-2)
    assert (whole.argmax(1) == on_activations.argmax(1)).all()
    # What the run reports on val is what the saved model scores there.
    accuracy = float((whole.argmax(1) == np.asarray(val.labels)).mean())
    assert metrics["val_accuracy"] == pytest.approx(accuracy, abs=1 / len(val.paths) + 1e-6)


SMALL = ["--base", "small", "--image-size", str(SIZE), "--head-epochs", "1", "--epochs", "1",
         "--batch-size", "8"]


@pytest.mark.heavy
def test_the_views_are_as_many_as_the_budget_holds(tiny_data, tmp_path, monkeypatch):
    """A fresh view each epoch, up to `MAX_VIEWS`, fewer where the budget holds fewer."""
    base = build_base(get_base("mobilenet_v2"), SIZE, "none")
    at = cut.find_cut(base, layers_to_unfreeze(base, 4))
    per_image = int(np.prod(base.layers[at].output.shape[1:])) * np.dtype(cut.ACTIVATIONS).itemsize
    found = find_dataset(tiny_data)
    evaluated = sum(len(found.splits[name]) for name in ("val", "test") if name in found.splits)
    budget = (evaluated + 2.5 * len(found.splits["train"])) * per_image  # two views and a half
    monkeypatch.setenv(cut.BUDGET_VARIABLE, repr(budget / 2**30))
    result = invoke("finetune", tiny_data, "--base", "mobilenet_v2", "--image-size", str(SIZE),
                    "--head-epochs", "1", "--epochs", "4", "--unfreeze", "4", "--batch-size", "8",
                    "--engine", "litert", "--augment", "light", "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs/ft/metrics.json").read_text())["cut"]["views"] == 2
    assert "(2 view(s)," in " ".join(result.output.split())


@pytest.mark.heavy
def test_over_the_budget_finetune_trains_end_to_end_and_says_why(tiny_data, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv(cut.BUDGET_VARIABLE, "0.000001")
    result = invoke("finetune", tiny_data, *SMALL, "--unfreeze", "1", "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # (the terminal wraps the one line)
    assert said.count("Fine-tuning end to end") == 1
    assert f"exceed the budget of 1e-06 GB (${cut.BUDGET_VARIABLE})" in said
    assert "Fine-tuning from activations" not in result.output
    assert ",finetune," in (tmp_path / "runs/ft/history.csv").read_text()


@pytest.mark.heavy
def test_unfrozen_layers_down_to_the_input_train_end_to_end_and_say_why(tiny_data):
    # The small convnet has 4 layers with weights: unfreezing them all leaves no cut.
    result = invoke("finetune", tiny_data, *SMALL, "--unfreeze", "4", "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Fine-tuning end to end: the unfrozen layers are not a top block" in said
    assert "'block1_conv'" in said


def test_a_budget_that_is_no_size_is_refused(tiny_data, monkeypatch):
    monkeypatch.setenv(cut.BUDGET_VARIABLE, "lots")
    result = invoke("finetune", tiny_data, *SMALL, "--out", "runs/ft")
    assert result.exit_code == 2
    assert f"{cut.BUDGET_VARIABLE} must be" in result.output


@pytest.mark.heavy
def test_activations_float16_cannot_hold_train_end_to_end_and_say_why(tiny_data,
                                                                      base_weights_file):
    # A random MobileNetV2's activations at the cut are ~1e-10: float16 would make them 0.
    result = invoke("finetune", tiny_data, "--base", "mobilenet_v2", "--weights",
                    base_weights_file, "--image-size", str(SIZE), "--head-epochs", "1",
                    "--epochs", "1", "--unfreeze", "4", "--batch-size", "8", "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.count("Fine-tuning end to end") == 1
    assert "float16 cannot hold the activations at 'block_15_add'" in said
