"""The frozen-base training loop is Keras' `fit`, written out: same history, same weights."""

import itertools

import keras
import numpy as np
import pytest

from smallcnn.model import head as numpy_head
from smallcnn.model.networks import build_head, compile_model
from smallcnn.train.keras_loop import fit_stream


def batches(weighted, seed=0, n=80, width=10, classes=3, batch_size=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (classes, width))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centres[y] + rng.normal(0, 1.5, (n, width))).astype(np.float32)
    out = []
    for start in range(0, n, batch_size):
        batch = (x[start : start + batch_size], y[start : start + batch_size])
        if weighted:
            batch += (np.where(batch[1] == 0, 2.0, 0.5).astype(np.float32),)
        out.append(batch)
    # Validation images of the same classes, a third of them with a random label: val_loss
    # soon rises while training goes on.
    val_y = rng.integers(0, classes, 30).astype(np.int32)
    val_x = (centres[val_y] + rng.normal(0, 1.5, (30, width))).astype(np.float32)
    val_y[:10] = rng.integers(0, classes, 10)
    return out, (val_x, val_y)


def trained(loop, weighted, epochs=12):
    train, val = batches(weighted)
    keras.utils.set_random_seed(5)
    model = build_head(10, 3, dropout=0.0)
    compile_model(model, keras.optimizers.Adam(0.5))  # high: early stopping and the plateau act
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=2,
                                               restore_best_weights=True),
                 keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1,
                                                   **numpy_head.PLATEAU)]
    stream = (batch for batch in itertools.cycle(train))  # fit takes generators
    if loop == "fit":
        history = model.fit(stream, steps_per_epoch=len(train), epochs=epochs, shuffle=False,
                            validation_data=val, callbacks=callbacks, verbose=0).history
    else:
        history = fit_stream(model, stream, callbacks, len(train), epochs, val, batch_size=32)
    return history, model.get_weights()


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "sample-weights"])
def test_fit_stream_gives_the_history_and_weights_fit_gives(weighted):
    expected, expected_weights = trained("fit", weighted)
    history, weights = trained("fit_stream", weighted)
    assert len(expected["loss"]) < 12  # early stopping fired, in both
    assert set(history) == set(expected)
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    for got, want in zip(weights, expected_weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
