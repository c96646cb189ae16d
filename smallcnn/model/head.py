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
# --lr-schedule plateau: keras.callbacks.ReduceLROnPlateau with these arguments (min_delta
# is Keras' default), its patience half the early-stopping patience (`plateau_patience`).
PLATEAU = dict(factor=0.2, min_lr=1e-7, min_delta=1e-4)


def plateau_patience(patience):
    """Epochs without a better val_loss before the plateau schedule lowers the rate."""
    return max(1, patience // 2)


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


class _Dropout:
    """Inverted dropout, as Keras' Dropout layer, for a stack of members.

    Member k's masks come from its own generator. A unit is kept when a 16-bit random
    number reaches `rate` x 65536 (so the rate is rounded to 1/65536, and the kept
    units are scaled by the exact inverse of the keep probability): raw bits are about
    three times cheaper than float draws, and the masks are most of a step's work.
    """

    def __init__(self, rate, rngs):
        self.rngs = rngs
        self.threshold = min(65535, round(rate * 65536))
        self.scale = np.float32(65536 / (65536 - self.threshold))
        self.keep = None

    def __call__(self, x):
        """`(x * mask * scale, mask)`, the mask boolean, for `x` of shape (members, rows, width)."""
        if self.keep is None or self.keep.shape != x.shape:
            self.keep = np.empty(x.shape, bool)
        size = x[0].size
        for keep, rng in zip(self.keep, self.rngs):
            bits = rng.bit_generator.random_raw((size + 3) // 4).view(np.uint16)[:size]
            np.greater_equal(bits.reshape(keep.shape), self.threshold, out=keep)
        dropped = x * self.keep
        dropped *= self.scale
        return dropped, self.keep


def _forward(weights, x, dropout=None):
    """Logits, and what the backward pass needs.

    Works on one head (`x` of shape (batch, features)) and on a stack of members
    (weights and `x` with a leading member axis). `dropout`, a `_Dropout`, acts in
    training only.
    """
    hidden = None
    if len(weights) == 4:
        hidden = np.maximum(x @ weights[0] + np.expand_dims(weights[1], -2), 0.0)
        x_last = hidden
    else:
        x_last = x
    mask = None
    if dropout is not None:
        x_last, mask = dropout(x_last)
    return x_last @ weights[-2] + np.expand_dims(weights[-1], -2), (x, hidden, mask, x_last)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


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


def _gradients(weights, x, y, sample_weight, dropout):
    """Loss (Keras' sum over the batch / batch size), correct count and gradients.

    For a stack of members (see `_forward`) the loss is the members' mean, the count
    their sum, and each member gets the gradients of its own loss.
    """
    logits, (x, hidden, mask, x_last) = _forward(weights, x, dropout)
    log_p = _log_softmax(logits)
    labels = np.expand_dims(y, -1)
    losses = -np.take_along_axis(log_p, labels, -1)[..., 0]
    d_logits = np.exp(log_p)
    np.put_along_axis(d_logits, labels, np.take_along_axis(d_logits, labels, -1) - 1.0, -1)
    batch = y.shape[-1]
    if sample_weight is not None:
        d_logits *= np.expand_dims(sample_weight / np.float32(batch), -1)
    else:
        d_logits /= np.float32(batch)
    grads = [np.swapaxes(x_last, -1, -2) @ d_logits, d_logits.sum(axis=-2)]
    if hidden is not None:
        d_hidden = d_logits @ np.swapaxes(weights[2], -1, -2)
        if mask is not None:
            d_hidden *= mask
            d_hidden *= dropout.scale
        d_hidden *= hidden > 0
        grads = [np.swapaxes(x, -1, -2) @ d_hidden, d_hidden.sum(axis=-2), *grads]
    if sample_weight is not None:
        losses = losses * sample_weight
    # Keras weights the loss by class weight, not the accuracy.
    return (float(losses.sum() / losses.size), int((logits.argmax(axis=-1) == y).sum()), grads)


def merge(members):
    """One head whose logits are the mean of the stacked members' logits.

    For the linear head that is the mean of their weights; with a hidden layer, the
    members' hidden units side by side (K x hidden units) and a last layer that
    averages what they say.
    """
    if len(members) == 2:
        return [members[0].mean(axis=0), members[1].mean(axis=0)]
    kernel, bias, last_kernel, last_bias = members
    count = len(kernel)
    return [np.concatenate(list(kernel), axis=1), np.concatenate(list(bias)),
            np.concatenate(list(last_kernel), axis=0) / np.float32(count),
            last_bias.mean(axis=0)]


class Optimizer:
    """Keras' update rules (keras.optimizers.Adam, SGD, RMSprop, Adagrad, default options)."""

    def __init__(self, name, weights, momentum=0.9, nesterov=False):
        self.name = name
        self.momentum = momentum
        self.nesterov = nesterov
        self.iterations = 0
        self.scratch = None
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
            if self.scratch is None:  # in place: the updates are most of a wide head's step
                self.scratch = [np.empty_like(w) for w in weights]
            for w, g, m, v, tmp in zip(weights, grads, self.m, self.v, self.scratch):
                np.subtract(g, m, out=tmp)
                tmp *= np.float32(1 - beta_1)
                m += tmp
                np.multiply(g, g, out=tmp)
                tmp -= v
                tmp *= np.float32(1 - beta_2)
                v += tmp
                np.sqrt(v, out=tmp)
                tmp += np.float32(EPSILON)
                np.divide(m, tmp, out=tmp)
                tmp *= alpha
                w -= tmp
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
          members=1, shuffle=True, on_epoch=None, progress=None, stop=None):
    """Trains the head; returns `(weights, history)` with the best epoch's weights.

    With `members` > 1 it trains that many heads side by side, each exactly as a
    single head with seed `settings.seed + k` would train: its own Glorot draw,
    shuffling, dropout masks and early stopping on its own val_loss. A member that
    stops takes back its best weights and trains no more, so the merge of the members
    as they are at an epoch's end is the model that would be saved if training ended
    there: it is what the history's val_loss and val_accuracy describe, and what
    ReduceLROnPlateau (if asked for) follows. What it returns is the merge of their
    kept weights (see `merge`): one head whose logits are the mean of theirs, no slower
    to predict, and less dependent on one lucky or unlucky seed.

    Args:
        train_x, train_y: float feature rows and integer labels.
        val: `(features, labels)`, for val_loss (early stopping) and val_accuracy.
        settings: a resolved `smallcnn.train.Settings` (optimizer, learning_rate,
            momentum, nesterov, lr_schedule, dropout, hidden, patience, batch_size,
            epochs, seed).
        class_weights: {class index: weight}, or None.
        weights: initial weights of a single head (default Glorot, seeded by
            `settings.seed`); only with `members=1`.
        members: how many heads to train and merge.
        on_epoch: called with (epoch counted from 1, logs) after each epoch.
        progress: `progress(epoch)` returns a context yielding advance(steps done),
            as `Reporter.progress` does.
        stop: a callable; when it returns true, training ends after the current step,
            as if early stopping had fired.

    Returns:
        weights (list of float32 arrays, Keras' order) and one dict of logs per epoch:
        loss, accuracy (the members' mean, with dropout), val_loss, val_accuracy (of
        the epoch's merged head), learning_rate, seconds and, with several members,
        heads_improved (how many members reached a new best val_loss in this epoch).
    """
    s = settings
    check_optimizer(s.optimizer, s.learning_rate, s.lr_schedule)
    if members < 1 or (weights is not None and members != 1):
        raise UsageError(f"members must be 1 or more, and 1 with initial weights. Received: {members}")
    train_x = np.asarray(train_x, np.float32)
    train_y = np.asarray(train_y, np.int64)
    val_x, val_y = np.asarray(val[0], np.float32), np.asarray(val[1], np.int64)
    rngs = [np.random.default_rng(s.seed + k) for k in range(members)]
    if weights is None:
        starts = [init_weights(train_x.shape[1], num_classes, s.hidden, s.seed + k)
                  for k in range(members)]
    else:
        starts = [weights]
    # Every array gets a leading member axis; the arithmetic is the same for one or many.
    stacked = [np.stack([np.asarray(w[i], np.float32) for w in starts]) for i in range(len(starts[0]))]
    optimizer = Optimizer(s.optimizer, stacked, s.momentum, s.nesterov)
    dropout = _Dropout(s.dropout, rngs) if s.dropout else None
    lookup = None
    if class_weights:
        lookup = np.array([class_weights.get(i, 0.0) for i in range(num_classes)], np.float32)
    steps = math.ceil(len(train_x) / s.batch_size)
    rate = s.learning_rate  # what ReduceLROnPlateau lowers
    best, kept, wait, done = [math.inf] * members, [None] * members, [0] * members, [False] * members
    stopped_members = []
    plateau_best, plateau_wait, plateau_after = math.inf, 0, plateau_patience(s.patience)
    history = []
    for epoch in range(s.epochs):
        started = time.perf_counter()
        orders = np.stack([rng.permutation(len(train_x)) if shuffle else np.arange(len(train_x))
                           for rng in rngs])
        loss_sum, correct, seen = 0.0, 0, 0
        stopped = False
        reporting = progress(epoch + 1) if progress else contextlib.nullcontext(lambda done: None)
        with reporting as advance:
            for step in range(steps):
                batch = orders[:, step * s.batch_size : (step + 1) * s.batch_size]
                x, y = train_x[batch], train_y[batch]
                sample_weight = lookup[y] if lookup is not None else None
                loss, right, grads = _gradients(stacked, x, y, sample_weight, dropout)
                lr = scheduled_rate(rate, s.lr_schedule, optimizer.iterations, steps, s.epochs)
                optimizer.apply(stacked, grads, lr)
                for k in stopped_members:  # a member that stopped keeps its best weights
                    for w, best_w in zip(stacked, kept[k]):
                        w[k] = best_w
                loss_sum += loss * y.shape[1]
                correct += right
                seen += y.size
                advance(step + 1)
                if stop is not None and stop():
                    stopped = True
                    break
        weights = merge(stacked)
        val_loss, val_accuracy = evaluate(weights, val_x, val_y)
        # EarlyStopping(monitor="val_loss", patience, restore_best_weights=True), for
        # each member on its own val_loss: a member that stops keeps its best weights.
        improved = 0
        for k in range(members):
            if done[k]:
                continue
            member = [w[k] for w in stacked]
            loss_k = val_loss if members == 1 else evaluate(member, val_x, val_y)[0]
            if kept[k] is None:
                kept[k] = [w.copy() for w in member]
            wait[k] += 1
            if loss_k < best[k]:
                best[k], kept[k], wait[k] = loss_k, [w.copy() for w in member], 0
                improved += 1
            elif wait[k] >= s.patience and epoch > 0:
                done[k] = True
                stopped_members.append(k)
                for w, best_w in zip(stacked, kept[k]):
                    w[k] = best_w
                if members > 1:  # the merge to describe is the one with its best weights
                    val_loss, val_accuracy = evaluate(merge(stacked), val_x, val_y)
        logs = {
            "accuracy": correct / seen,
            "loss": loss_sum * members / seen,
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "learning_rate": float(np.float32(scheduled_rate(
                rate, s.lr_schedule, optimizer.iterations, steps, s.epochs))),
            "seconds": time.perf_counter() - started,
        }
        if members > 1:
            logs["heads_improved"] = improved
        history.append(logs)
        if on_epoch is not None:
            on_epoch(epoch + 1, logs)
        if all(done):
            stopped = True
        # ReduceLROnPlateau(monitor="val_loss", **PLATEAU)
        if s.lr_schedule == "plateau":
            if val_loss < plateau_best - PLATEAU["min_delta"]:
                plateau_best, plateau_wait = val_loss, 0
            else:
                plateau_wait += 1
                if plateau_wait >= plateau_after and rate > PLATEAU["min_lr"]:
                    rate, plateau_wait = max(rate * PLATEAU["factor"], PLATEAU["min_lr"]), 0
        if stopped:
            break
    if any(k is None for k in kept):  # no epoch ran
        return merge(stacked), history
    return merge([np.stack(arrays) for arrays in zip(*kept)]), history
