"""The NumPy head trains as Keras would: same updates, same history, same early stopping."""

import dataclasses
import re

import keras
import numpy as np
import pytest

from smallcnn.errors import UsageError
from smallcnn.model import head as numpy_head
from smallcnn.model.networks import build_head, compile_model, make_optimizer
from smallcnn.train import Settings



def head_settings(**values):
    """Settings as the head tests give them, the rate constant (a Settings leaves the
    schedule to the command it is resolved for)."""
    return Settings(**{"lr_schedule": "constant", **values})

def features(seed=0, n=96, width=12, classes=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (classes, width))
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.normal(0, 1.2, (n, width))).astype(np.float32)
    return x, y.astype(np.int32)


def keras_fit(settings, weights, train, val, classes, class_weights=None):
    s = settings
    model = build_head(train[0].shape[1], classes, s.dropout, s.hidden)
    model.set_weights(weights)
    steps = int(np.ceil(len(train[0]) / s.batch_size))
    compile_model(model, make_optimizer(s.optimizer, s.learning_rate, s.momentum, s.nesterov,
                                        s.lr_schedule, steps, s.epochs))
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=s.patience,
                                               restore_best_weights=True)]
    if s.lr_schedule == "plateau":  # as smallcnn.train.keras_loop.callbacks makes it
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", patience=numpy_head.plateau_patience(s.patience),
            **numpy_head.PLATEAU))
    history = model.fit(*train, validation_data=val, batch_size=s.batch_size, epochs=s.epochs,
                        shuffle=False, class_weight=class_weights, verbose=0, callbacks=callbacks)
    return model.get_weights(), history.history


CASES = [
    dict(optimizer="adam", learning_rate=1e-2),
    dict(optimizer="adam", learning_rate=1e-2, hidden=16, lr_schedule="cosine"),
    dict(optimizer="sgd", learning_rate=5e-2, lr_schedule="exponential"),
    dict(optimizer="sgd", learning_rate=5e-2, nesterov=True, hidden=8),
    dict(optimizer="sgd", learning_rate=5e-2, momentum=0.0),
    dict(optimizer="rmsprop", learning_rate=1e-3, hidden=8),
    dict(optimizer="adagrad", learning_rate=5e-2),
    dict(optimizer="adam", learning_rate=2.0, lr_schedule="plateau", patience=4),  # lowers at 5
    # A rate this high overfits within a few epochs: early stopping ends the run and the
    # best epoch's weights come back.
    dict(optimizer="adam", learning_rate=1.0, patience=2, epochs=12),
]


# In the quick tier: Adam, the plateau and early-stopping cases, and Adam with class
# weights; the other optimizers and schedules, and class weights with each, in the full
# run (heavy: about 30 s more on 2 cores).
QUICK_CASES = (0, len(CASES) - 2, len(CASES) - 1)
KERAS_CASES = [pytest.param(case, balanced, id="-".join(["class-weights" if balanced else "plain",
                                                         *map(str, case.values())]),
                            marks=[] if i in (QUICK_CASES[:1] if balanced else QUICK_CASES)
                            else [pytest.mark.heavy])
               for balanced in (False, True) for i, case in enumerate(CASES)]


@pytest.mark.parametrize("case, balanced", KERAS_CASES)
def test_same_updates_and_history_as_keras(case, balanced):
    x, y = features()
    train, val = (x[:72], y[:72]), (x[72:], y[72:])
    settings = dataclasses.replace(
        head_settings(dropout=0.0, batch_size=16, epochs=6, patience=10, seed=3), **case)
    initial = numpy_head.init_weights(x.shape[1], 3, settings.hidden, seed=1)
    class_weights = {0: 2.0, 1: 0.5, 2: 1.0} if balanced else None
    expected_weights, expected = keras_fit(settings, initial, train, val, 3, class_weights)
    weights, history = numpy_head.train(*train, val, settings, 3, class_weights=class_weights,
                                        weights=initial, shuffle=False)
    assert len(history) == len(expected["loss"])
    if "epochs" in case:  # the case made to stop early: early stopping fired in both
        assert len(history) < settings.epochs
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in history], expected[key], rtol=2e-4,
                                   atol=2e-5, err_msg=key)
    if case.get("lr_schedule") == "plateau":
        rates = [h["learning_rate"] for h in history]
        np.testing.assert_allclose(rates, expected["learning_rate"], rtol=1e-6)
        assert rates[-1] < rates[0]
    for got, want in zip(weights, expected_weights):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-5)


def test_early_stopping_keeps_the_best_epoch():
    x, y = features(seed=2, n=120)
    settings = head_settings(optimizer="adam", learning_rate=0.5, dropout=0.0, batch_size=8,
                        epochs=60, patience=3, seed=0)
    weights, history = numpy_head.train(x[:60], y[:60], (x[60:], y[60:]), settings, 3)
    losses = [h["val_loss"] for h in history]
    assert len(history) < 60  # a rate this high overfits quickly: training stopped early
    best = int(np.argmin(losses))
    assert len(history) == best + 1 + settings.patience
    assert numpy_head.evaluate(weights, x[60:], y[60:])[0] == pytest.approx(losses[best], rel=1e-5)


class _FixedMask:
    """A dropout whose mask is given: the gradients can be checked by finite differences."""

    def __init__(self, mask, rate):
        self.mask, self.scale = mask, 1 / (1 - rate)

    def __call__(self, x):
        return x * self.mask * self.scale, self.mask


@pytest.mark.parametrize("hidden", [0, 6], ids=["linear", "hidden"])
def test_gradients_with_dropout_match_finite_differences(hidden):
    x, y = features(seed=9, n=10, width=5)
    x = x.astype(np.float64)
    weights = [w.astype(np.float64) for w in numpy_head.init_weights(5, 3, hidden, seed=2)]
    width = hidden or 5
    mask = np.random.default_rng(1).random((10, width)) >= 0.4
    dropout = _FixedMask(mask, 0.4)
    _, _, grads = numpy_head._gradients(weights, x, y, None, dropout)
    step = 1e-6
    for w, g in zip(weights, grads):
        for index in list(np.ndindex(w.shape))[:: max(1, w.size // 12)]:
            saved = w[index]
            w[index] = saved + step
            up = numpy_head._gradients(weights, x, y, None, dropout)[0]
            w[index] = saved - step
            down = numpy_head._gradients(weights, x, y, None, dropout)[0]
            w[index] = saved
            assert g[index] == pytest.approx((up - down) / (2 * step), rel=1e-4, abs=1e-7)


def test_dropout_trains_and_inference_is_deterministic():
    x, y = features(seed=4, n=400, width=32)
    settings = head_settings(dropout=0.5, hidden=32, batch_size=32, epochs=30, patience=5,
                        learning_rate=1e-2)
    weights, history = numpy_head.train(x[:300], y[:300], (x[300:], y[300:]), settings, 3)
    assert history[-1]["val_accuracy"] > 0.8
    first = numpy_head.probabilities(weights, x[300:])
    np.testing.assert_array_equal(first, numpy_head.probabilities(weights, x[300:]))
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)
    # The same seed gives the same head; another seed another one.
    again, _ = numpy_head.train(x[:300], y[:300], (x[300:], y[300:]), settings, 3)
    for a, b in zip(weights, again):
        np.testing.assert_array_equal(a, b)
    other, _ = numpy_head.train(x[:300], y[:300], (x[300:], y[300:]),
                                dataclasses.replace(settings, seed=7), 3)
    assert not np.array_equal(other[0], weights[0])


@pytest.mark.parametrize("hidden", [0, 8], ids=["linear", "hidden"])
def test_several_heads_train_as_separate_runs_and_merge_into_one(hidden):
    x, y = features(seed=5, n=300, width=16)
    train, val = (x[:200], y[:200]), (x[200:], y[200:])
    settings = head_settings(dropout=0.5, hidden=hidden, batch_size=16, epochs=40, patience=3,
                        learning_rate=3e-2, seed=11)
    merged, history = numpy_head.train(*train, val, settings, 3, members=3)
    # Each member is the run a single head with seed 11, 12, 13 makes, early stopping
    # included (a rate this high makes them stop at different epochs).
    singles = [numpy_head.train(*train, val, dataclasses.replace(settings, seed=11 + k), 3)
               for k in range(3)]
    assert len({len(h) for _, h in singles}) > 1
    assert len(history) == max(len(h) for _, h in singles)
    # The merged head says what the members say on average (mean logits).
    logits = [numpy_head._forward(w, val[0])[0] for w, _ in singles]
    np.testing.assert_allclose(numpy_head._forward(merged, val[0])[0], np.mean(logits, axis=0),
                               rtol=1e-4, atol=1e-5)
    assert merged[0].shape == (16, 3 * hidden if hidden else 3)
    # Its logs: the epoch's merged head on validation, and how many members improved.
    assert [h["heads_improved"] for h in history][0] == 3
    assert sum(h["heads_improved"] for h in history) >= 3
    # A member that stopped trains no more: when the last one stops, the epoch's merged
    # head is the one returned (saved), and the history's last line describes it.
    assert len(history) < settings.epochs
    val_loss, val_accuracy = numpy_head.evaluate(merged, *val)
    assert history[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert history[-1]["val_accuracy"] == val_accuracy


def test_dropout_drops_at_the_asked_rate_and_keeps_the_mean():
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    x = np.ones((2, 64, 500), np.float32)
    for rate in (0.1, 0.5, 0.8):
        dropped, keep = numpy_head._Dropout(rate, rngs)(x)
        assert keep.mean() == pytest.approx(1 - rate, abs=0.01)
        assert dropped.mean() == pytest.approx(1.0, abs=0.03)
        assert not np.array_equal(keep[0], keep[1])  # each member its own masks


def test_a_stop_request_ends_training_after_the_step():
    x, y = features()
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 3

    settings = head_settings(epochs=10, batch_size=8, patience=10, learning_rate=1e-2)
    _, history = numpy_head.train(x[:72], y[:72], (x[72:], y[72:]), settings, 3, stop=stop)
    assert len(history) == 1 and len(calls) == 3


def test_unknown_optimizer_is_refused():
    x, y = features()
    choices = ", ".join(numpy_head.OPTIMIZERS)
    refusal = f"Unknown --optimizer 'lamb'. Choose one of: {choices}."
    with pytest.raises(UsageError, match=re.escape(refusal)):
        numpy_head.train(x, y, (x, y), head_settings(optimizer="lamb", learning_rate=1.0), 3)


def test_a_template_with_new_head_weights_is_the_model_keras_would_save(tmp_path):
    from smallcnn.model import modelfile
    from smallcnn.model.bases import build_base, get_base
    from smallcnn.model.networks import HEAD_NAME, build_classifier

    import smallcnn.model.layers  # noqa: F401  (registers Preprocess for loading)

    spec = get_base("small")
    base = build_base(spec, 32, "none")
    head = build_head(spec.feature_width, 3, dropout=0.3, hidden=8)
    model = build_classifier(spec, base, head, 32)
    template = modelfile.save_template(model, head, base.name, "k" * 64)
    assert template.path.is_file() and modelfile.load_template("k" * 64) == template

    trained = numpy_head.init_weights(spec.feature_width, 3, hidden=8, seed=5)
    trained[1] += 0.25  # non-zero biases too
    modelfile.AssembledClassifier(template, trained).save(tmp_path / "assembled.keras")
    head.set_weights(trained)
    loaded = keras.saving.load_model(tmp_path / "assembled.keras", safe_mode=True)
    for got, want in zip(loaded.get_layer(HEAD_NAME).get_weights(), trained):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(loaded.get_layer(base.name).get_weights(), base.get_weights()):
        np.testing.assert_array_equal(got, want)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="do not fit the template"):
        modelfile.AssembledClassifier(template, trained[2:])
