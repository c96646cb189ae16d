"""The dense head of `extract`, trained on cached feature arrays in NumPy.

`extract` trains at most two Dense layers on a few thousand pooled feature vectors.
Such steps are so small that Keras' per-step and per-epoch overhead, and importing
TensorFlow at all (about 3 s here), cost more than the arithmetic. This module trains
the same head as Keras would: Glorot-uniform kernels, inverted dropout, softmax
cross-entropy with optional class weights, Keras' Adam, SGD, RMSprop and Adagrad
update rules and learning-rate schedules, EarlyStopping on val_loss with the best
weights restored, ReduceLROnPlateau (tests check it against Keras step by step).
A second `extract` on cached features therefore needs no TensorFlow at all.

Weights are a list of arrays in Keras' order, `[kernel, bias]` per Dense layer, so
`keras_head.set_weights(weights)` takes them.
"""

import contextlib
import math
import time

import numpy as np

from smallcnn.errors import UsageError

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adagrad")
LR_SCHEDULES = ("constant", "plateau", "exponential", "cosine")
EPSILON = 1e-7  # Keras' default for every optimizer here


def check_optimizer(name, learning_rate, schedule="constant"):
    """Refuses an unknown optimizer or schedule, or a rate that is not positive."""
    if name not in OPTIMIZERS:
        raise UsageError(f"Unknown --optimizer {name!r}. Choose one of: {', '.join(OPTIMIZERS)}.")
    if schedule not in LR_SCHEDULES:
        raise UsageError(
            f"Unknown --lr-schedule {schedule!r}. Choose one of: {', '.join(LR_SCHEDULES)}."
        )
    if learning_rate <= 0:
        raise UsageError(f"--learning-rate must be positive. Received: {learning_rate}")


def init_weights(feature_width, num_classes, hidden=0, seed=0):
    """Glorot-uniform kernels and zero biases: [Dense(hidden, relu)], Dense(num_classes)."""
    rng = np.random.default_rng(seed)
    widths = [feature_width, *([hidden] if hidden else []), num_classes]
    weights = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
        weights.append(np.zeros(fan_out, np.float32))
    return weights


def _forward(weights, x, dropout=0.0, rng=None):
    """Logits, and what the backward pass needs. Dropout acts only when `rng` is given."""
    hidden = None
    if len(weights) == 4:
        hidden = np.maximum(x @ weights[0] + weights[1], 0.0)
        x_last = hidden
    else:
        x_last = x
    mask = None
    if dropout and rng is not None:  # inverted dropout, as Keras' Dropout layer
        mask = (rng.random(x_last.shape, dtype=np.float32) >= dropout) * np.float32(1 / (1 - dropout))
        x_last = x_last * mask
    return x_last @ weights[-2] + weights[-1], (x, hidden, mask, x_last)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def probabilities(weights, x):
    """Softmax outputs of the head for feature rows `x` (inference: no dropout)."""
    return np.exp(_log_softmax(_forward(weights, np.asarray(x, np.float32))[0]))


def evaluate(weights, x, y, batch_size=1024):
    """(mean cross-entropy, accuracy) on feature rows `x` and integer labels `y`."""
    losses, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits, _ = _forward(weights, np.asarray(x[start : start + batch_size], np.float32))
        labels = y[start : start + batch_size]
        log_p = _log_softmax(logits)
        losses += float(-log_p[np.arange(len(labels)), labels].sum())
        correct += int((logits.argmax(axis=1) == labels).sum())
    return losses / len(x), correct / len(x)


def _gradients(weights, x, y, sample_weight, dropout, rng):
    """Loss (Keras' sum over the batch / batch size), correct count and gradients."""
    logits, (x, hidden, mask, x_last) = _forward(weights, x, dropout, rng)
    log_p = _log_softmax(logits)
    rows = np.arange(len(y))
    losses = -log_p[rows, y]
    d_logits = np.exp(log_p)
    d_logits[rows, y] -= 1.0
    if sample_weight is not None:
        d_logits *= (sample_weight / np.float32(len(y)))[:, None]
    else:
        d_logits /= np.float32(len(y))
    grads = [x_last.T @ d_logits, d_logits.sum(axis=0)]
    if hidden is not None:
        d_hidden = d_logits @ weights[2].T
        if mask is not None:
            d_hidden *= mask
        d_hidden *= hidden > 0
        grads = [x.T @ d_hidden, d_hidden.sum(axis=0), *grads]
    if sample_weight is not None:
        losses = losses * sample_weight
    # Keras weights the loss by class weight, not the accuracy.
    return float(losses.sum() / len(y)), int((logits.argmax(axis=1) == y).sum()), grads


class Optimizer:
    """Keras' update rules (keras.optimizers.Adam, SGD, RMSprop, Adagrad, default options)."""

    def __init__(self, name, weights, momentum=0.9, nesterov=False):
        self.name = name
        self.momentum = momentum
        self.nesterov = nesterov
        self.iterations = 0
        zeros = [np.zeros_like(w) for w in weights]
        if name == "adam":
            self.m, self.v = zeros, [np.zeros_like(w) for w in weights]
        elif name == "sgd":
            self.m = zeros
        elif name == "rmsprop":
            self.v = zeros
        elif name == "adagrad":
            self.accumulators = [np.full_like(w, 0.1) for w in weights]
        else:
            check_optimizer(name, 1.0)

    def apply(self, weights, grads, learning_rate):
        """Updates `weights` in place, one step."""
        lr = np.float32(learning_rate)
        self.iterations += 1
        if self.name == "adam":
            beta_1, beta_2, t = 0.9, 0.999, self.iterations
            alpha = np.float32(lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t))
            for w, g, m, v in zip(weights, grads, self.m, self.v):
                m += (g - m) * np.float32(1 - beta_1)
                v += (g * g - v) * np.float32(1 - beta_2)
                w -= m * alpha / (np.sqrt(v) + np.float32(EPSILON))
        elif self.name == "sgd":
            for w, g, m in zip(weights, grads, self.m):
                if not self.momentum:
                    w -= g * lr
                    continue
                m *= np.float32(self.momentum)
                m -= g * lr
                if self.nesterov:
                    w += m * np.float32(self.momentum) - g * lr
                else:
                    w += m
        elif self.name == "rmsprop":
            rho = np.float32(0.9)
            for w, g, v in zip(weights, grads, self.v):
                v *= rho
                v += (1 - rho) * g * g
                w -= lr * g / np.sqrt(v + np.float32(EPSILON))
        else:
            for w, g, a in zip(weights, grads, self.accumulators):
                a += g * g
                w -= lr * g / np.sqrt(a + np.float32(EPSILON))


def scheduled_rate(learning_rate, schedule, step, steps_per_epoch, epochs):
    """The learning rate at `step` (counted from 0), as Keras' decay schedules give it.

    'exponential' reaches a tenth of the rate after 20 epochs; 'cosine' decays to 0
    over the run; 'constant' and 'plateau' keep it (plateau lowers it between epochs).
    """
    if schedule == "exponential":
        return learning_rate * (0.1 ** (1 / 20)) ** (step / max(1, steps_per_epoch))
    if schedule == "cosine":
        decay_steps = max(1, steps_per_epoch * epochs)
        return learning_rate * 0.5 * (1 + math.cos(math.pi * min(step, decay_steps) / decay_steps))
    return learning_rate


def train(train_x, train_y, val, settings, num_classes, class_weights=None, weights=None,
          shuffle=True, on_epoch=None, progress=None, stop=None):
    """Trains the head; returns `(weights, history)` with the best epoch's weights.

    Args:
        train_x, train_y: float feature rows and integer labels.
        val: `(features, labels)`, for val_loss (early stopping) and val_accuracy.
        settings: a resolved `smallcnn.training.Settings` (optimizer, learning_rate,
            momentum, nesterov, lr_schedule, dropout, hidden, patience, batch_size,
            epochs, seed).
        class_weights: {class index: weight}, or None.
        weights: initial weights (default Glorot, seeded by `settings.seed`).
        on_epoch: called with (epoch counted from 1, logs) after each epoch.
        progress: `progress(epoch)` returns a context yielding advance(steps done),
            as `Reporter.progress` does.
        stop: a callable; when it returns true, training ends after the current step,
            as if early stopping had fired.

    Returns:
        weights (list of float32 arrays, Keras' order) and one dict of logs per epoch:
        loss, accuracy, val_loss, val_accuracy, learning_rate, seconds.
    """
    s = settings
    check_optimizer(s.optimizer, s.learning_rate, s.lr_schedule)
    train_x = np.asarray(train_x, np.float32)
    train_y = np.asarray(train_y, np.int64)
    val_x, val_y = np.asarray(val[0], np.float32), np.asarray(val[1], np.int64)
    rng = np.random.default_rng(s.seed)
    if weights is None:
        weights = init_weights(train_x.shape[1], num_classes, s.hidden, s.seed)
    weights = [np.array(w, np.float32) for w in weights]
    optimizer = Optimizer(s.optimizer, weights, s.momentum, s.nesterov)
    lookup = None
    if class_weights:
        lookup = np.array([class_weights.get(i, 0.0) for i in range(num_classes)], np.float32)
    steps = math.ceil(len(train_x) / s.batch_size)
    rate = s.learning_rate  # what ReduceLROnPlateau lowers
    best, best_weights, wait = math.inf, None, 0
    plateau_best, plateau_wait, plateau_patience = math.inf, 0, max(1, s.patience // 2)
    history = []
    for epoch in range(s.epochs):
        started = time.perf_counter()
        order = rng.permutation(len(train_x)) if shuffle else np.arange(len(train_x))
        loss_sum, correct, seen = 0.0, 0, 0
        stopped = False
        reporting = progress(epoch + 1) if progress else contextlib.nullcontext(lambda done: None)
        with reporting as advance:
            for step in range(steps):
                batch = order[step * s.batch_size : (step + 1) * s.batch_size]
                x, y = train_x[batch], train_y[batch]
                sample_weight = lookup[y] if lookup is not None else None
                loss, right, grads = _gradients(weights, x, y, sample_weight, s.dropout, rng)
                lr = scheduled_rate(rate, s.lr_schedule, optimizer.iterations, steps, s.epochs)
                optimizer.apply(weights, grads, lr)
                loss_sum += loss * len(y)
                correct += right
                seen += len(y)
                advance(step + 1)
                if stop is not None and stop():
                    stopped = True
                    break
        val_loss, val_accuracy = evaluate(weights, val_x, val_y)
        logs = {
            "accuracy": correct / seen,
            "loss": loss_sum / seen,
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "learning_rate": float(np.float32(scheduled_rate(
                rate, s.lr_schedule, optimizer.iterations, steps, s.epochs))),
            "seconds": time.perf_counter() - started,
        }
        history.append(logs)
        if on_epoch is not None:
            on_epoch(epoch + 1, logs)
        # EarlyStopping(monitor="val_loss", patience, restore_best_weights=True)
        if best_weights is None:
            best_weights = [w.copy() for w in weights]
        wait += 1
        if val_loss < best:
            best, best_weights, wait = val_loss, [w.copy() for w in weights], 0
        elif wait >= s.patience and epoch > 0:
            stopped = True
        # ReduceLROnPlateau(monitor="val_loss", factor=0.2, min_lr=1e-7, min_delta=1e-4)
        if s.lr_schedule == "plateau":
            if val_loss < plateau_best - 1e-4:
                plateau_best, plateau_wait = val_loss, 0
            else:
                plateau_wait += 1
                if plateau_wait >= plateau_patience and rate > 1e-7:
                    rate, plateau_wait = max(rate * 0.2, 1e-7), 0
        if stopped:
            break
    return (best_weights if best_weights is not None else weights), history
