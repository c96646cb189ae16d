"""finetune's recipe: extract's heads first, then the top blocks with warmup and cosine
decay, lower blocks at lower rates, label smoothing; the defaults are that recipe."""

import json
import types

import keras
import numpy as np
import pytest

from conftest import invoke
from smallcnn.model import runs
from smallcnn.model.networks import compile_model, make_optimizer
from smallcnn.train import Settings
from smallcnn.train.epochs import rate_factors, scaled_rates
from smallcnn.train.keras_loop import compile_tuning, smoothed_loss
from smallcnn.train.settings import COMMAND_DEFAULTS

RECIPE = COMMAND_DEFAULTS["finetune"]


def test_finetune_defaults_are_the_recipe():
    s = Settings().resolve("finetune")
    assert s.unfreeze is None and s.unfreeze_blocks == RECIPE["unfreeze_blocks"]
    assert s.lr_schedule == RECIPE["lr_schedule"] == "cosine"
    assert s.augment == RECIPE["augment"] == "randaugment"
    assert 0 < s.rate_decay < 1 and s.warmup_epochs > 0
    assert (s.head_epochs, s.head_learning_rate) == (COMMAND_DEFAULTS["extract"]["epochs"],
                                                     COMMAND_DEFAULTS["extract"]["learning_rate"])
    # --unfreeze N still unfreezes N layers: the blocks' default does not override it.
    layers = Settings(unfreeze=4).resolve("finetune")
    assert layers.unfreeze == 4 and layers.unfreeze_blocks is None
    # extract and train keep their constant rate.
    assert Settings().resolve("extract").lr_schedule == "constant"
    assert Settings().resolve("train").lr_schedule == "constant"


def test_finetune_help_shows_the_recipe_defaults():
    shown = " ".join(invoke("finetune", "--help").output.split())
    assert "--label-smoothing" in shown and "--rate-decay" in shown and "--warmup-epochs" in shown
    assert "--unfreeze-blocks" in shown


def _blocks_model():
    """Three 'blocks' of Dense layers, named as a base's blocks are."""
    inputs = keras.Input((6,))
    x = inputs
    for name in ("block1a_dense", "block2a_dense", "block3a_dense"):
        x = keras.layers.Dense(6, name=name)(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(x))


def test_discriminative_rates_give_lower_blocks_smaller_updates():
    keras.utils.set_random_seed(0)
    model = _blocks_model()
    unfrozen = ["block3a_dense", "block2a_dense", "block1a_dense"]
    decay = 0.5
    factors = rate_factors(model, unfrozen, r"block\d+[a-z]", decay)
    assert factors["block3a_dense/kernel"] == 1.0
    assert factors["block2a_dense/kernel"] == decay
    assert factors["block1a_dense/kernel"] == decay ** 2
    before = {layer: model.get_layer(layer).get_weights()[0] for layer in unfrozen}
    compile_model(model, scaled_rates(make_optimizer("adam", 1e-2), factors))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    model.train_on_batch(x, np.arange(32) % 3)
    moved = {layer: np.abs(model.get_layer(layer).get_weights()[0] - before[layer]).mean()
             for layer in unfrozen}
    # Adam's first step moves each weight by about its rate: the factors, in order.
    np.testing.assert_allclose(moved["block2a_dense"] / moved["block3a_dense"], decay, rtol=0.05)
    np.testing.assert_allclose(moved["block1a_dense"] / moved["block3a_dense"], decay ** 2,
                               rtol=0.05)


def test_the_warmup_starts_from_zero_and_reaches_the_rate():
    chosen = make_optimizer("adam", 1e-3, schedule="cosine", steps_per_epoch=10, epochs=5,
                            warmup_steps=10)
    schedule = chosen._learning_rate
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(30)) < 1e-3 and float(schedule(50)) == pytest.approx(0, abs=1e-9)


def test_label_smoothing_is_in_the_training_loss_not_in_val_loss():
    classes, amount = 4, 0.1
    y_pred = np.array([[0.7, 0.1, 0.1, 0.1]], "float32")
    target = np.full(classes, amount / classes)
    target[0] += 1 - amount
    expected = -(target * np.log(y_pred[0])).sum()
    assert float(smoothed_loss(classes, amount)(np.array([0]), y_pred)[0]) == \
        pytest.approx(expected, rel=1e-5)

    network = keras.Sequential([keras.Input((3,)), keras.layers.Dense(classes,
                                                                      activation="softmax")])
    plan = types.SimpleNamespace(settings=types.SimpleNamespace(label_smoothing=amount),
                                 dataset=types.SimpleNamespace(class_names=list("abcd")))
    tuning = types.SimpleNamespace(name="finetune")
    judge = compile_tuning(network, make_optimizer("adam", 1e-3), plan, tuning)
    x, y = np.eye(3, dtype="float32"), np.array([0, 1, 2])
    smoothed = network.evaluate(x, y, verbose=0)[0]
    plain = judge.evaluate(x, y, verbose=0)[0]
    probabilities = network.predict(x, verbose=0)
    assert plain == pytest.approx(-np.log(probabilities[np.arange(3), y]).mean(), rel=1e-4)
    assert smoothed != pytest.approx(plain, rel=1e-3)
    # The head phase trains without it.
    assert compile_tuning(network, "adam", plan, types.SimpleNamespace(name="frozen")) is None


@pytest.mark.heavy
def test_finetune_starts_from_extracts_heads(tiny_data, base_weights_file):
    common = ("--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32",
              "--batch-size", "8")
    # finetune's heads read the last layer's features (extract may add its taps: off here).
    extracted = invoke("extract", tiny_data, *common, "--taps", "off", "--out", "runs/e")
    assert extracted.exit_code == 0, extracted.output
    tuned = invoke("finetune", tiny_data, *common, "--epochs", "2", "--out", "runs/f")
    assert tuned.exit_code == 0, tuned.output
    heads = [r for r in runs.read_history("runs/e") if r["phase"] == "head"]
    first = [r for r in runs.read_history("runs/f") if r["phase"] == "frozen"]
    # The same heads, trained by the same code on the same cached features.
    assert [r["val_accuracy"] for r in first] == [r["val_accuracy"] for r in heads]
    assert [r["val_loss"] for r in first] == pytest.approx([r["val_loss"] for r in heads])
    metrics = json.loads(open("runs/f/metrics.json").read())
    assert metrics["finetune_start_epoch"] == len(first) + 1

    # Fine-tuning that only makes things worse gives back extract's heads.
    ruined = invoke("finetune", tiny_data, *common, "--epochs", "1", "--learning-rate", "1000",
                    "--warmup-epochs", "0", "--out", "runs/r")
    assert ruined.exit_code == 0, ruined.output
    assert "kept the model from before it" in ruined.output
    kept = json.loads(open("runs/r/metrics.json").read())
    extracted = json.loads(open("runs/e/metrics.json").read())
    assert kept["kept_earlier_model"]
    assert kept["val_accuracy"] == extracted["val_accuracy"]
    assert kept["val_loss"] == pytest.approx(extracted["val_loss"], abs=1e-2)  # float16 at the cut


def test_the_randaugment_preset_keeps_shape_and_range_and_varies_each_image():
    import tensorflow as tf

    from smallcnn.data.augment import PRESETS, RANDOM_OPS, build_augmenter

    preset = PRESETS["randaugment"]
    assert 0 < preset.ops < RANDOM_OPS
    images = np.random.default_rng(0).uniform(0, 255, (16, 24, 24, 3)).astype("float32")
    augment = build_augmenter(preset, seed=3)
    out = augment(tf.constant(images), tf.constant(0, tf.int64)).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    again = augment(tf.constant(images), tf.constant(0, tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)  # the batch's number seeds it
    other = augment(tf.constant(images), tf.constant(1, tf.int64)).numpy()
    assert not np.allclose(out, other)
    changed = np.abs(out - images).reshape(len(images), -1).mean(axis=1)
    assert (changed > 1).sum() >= len(images) // 2  # most images changed
