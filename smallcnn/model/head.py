"""The dense head of `extract`, trained on cached feature arrays in NumPy.

`extract` trains at most two Dense layers on a few thousand pooled feature vectors.
Such steps are so small that Keras' per-step and per-epoch overhead, and importing
TensorFlow at all (about 3 s here), cost more than the arithmetic. This module trains
the same head as Keras would: Glorot-uniform kernels, inverted dropout, softmax
cross-entropy with optional class weights, Keras' Adam, SGD, RMSprop and Adagrad
update rules and learning-rate schedules, EarlyStopping on val_loss with the best
weights restored, ReduceLROnPlateau (tests check it against Keras step by step).
A second `extract` on cached features therefore needs no TensorFlow at all. The update
rules, schedules and ReduceLROnPlateau are `smallcnn.model.optimizers`'.

Weights are a list of arrays in Keras' order, `[kernel, bias]` per Dense layer, so
`keras_head.set_weights(weights)` takes them.
"""

import contextlib
import math
import time

import numpy as np

from smallcnn.errors import UsageError
from smallcnn.model.optimizers import (LR_SCHEDULES, OPTIMIZERS, PLATEAU, Optimizer, Plateau,
                                       check_optimizer, plateau_patience, scheduled_rate)

# The optimizers' names and constants are the head's too (the settings and the loop read them).
__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "PLATEAU", "Optimizer", "check_optimizer", "evaluate",
           "init_weights", "merge", "plateau_patience", "probabilities", "scheduled_rate", "train"]


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
    val_x, val_y = np.asarray(val[0], np.float32), np.asarray(val[1], np.int64)
    starts = [weights] if weights is not None else [
        init_weights(train_x.shape[1], num_classes, s.hidden, s.seed + k) for k in range(members)]
    fit = _Fit(starts, train_x, np.asarray(train_y, np.int64), s,
               _class_weight_lookup(class_weights, num_classes))
    plateau = Plateau(s.learning_rate, s.patience)
    history = []
    for epoch in range(s.epochs):
        started = time.perf_counter()
        reporting = progress(epoch + 1) if progress else contextlib.nullcontext(lambda done: None)
        with reporting as advance:
            loss, accuracy, stopped = fit.epoch(shuffle, plateau.rate, advance, stop)
        val_loss, val_accuracy, improved = fit.validate(val_x, val_y, epoch)
        logs = {"accuracy": accuracy, "loss": loss, "val_accuracy": val_accuracy,
                "val_loss": val_loss,
                "learning_rate": float(np.float32(fit.learning_rate(plateau.rate))),
                "seconds": time.perf_counter() - started}
        if members > 1:
            logs["heads_improved"] = improved
        history.append(logs)
        if on_epoch is not None:
            on_epoch(epoch + 1, logs)
        if s.lr_schedule == "plateau":
            plateau.update(val_loss)
        if stopped or all(fit.early.done):
            break
    return fit.early.best_weights(fit.weights), history


def _class_weight_lookup(class_weights, num_classes):
    """Each class's weight by index, or None without class weights."""
    if not class_weights:
        return None
    return np.array([class_weights.get(i, 0.0) for i in range(num_classes)], np.float32)


class _Fit:
    """The heads trained side by side: every array of their weights with a leading member
    axis (the arithmetic is the same for one or many), their optimizer, dropout masks and
    early stopping."""

    def __init__(self, starts, train_x, train_y, settings, class_weight_lookup):
        s = self.settings = settings
        self.x, self.y, self.lookup = train_x, train_y, class_weight_lookup
        self.members = len(starts)
        self.rngs = [np.random.default_rng(s.seed + k) for k in range(self.members)]
        self.weights = [np.stack([np.asarray(w[i], np.float32) for w in starts])
                        for i in range(len(starts[0]))]
        self.optimizer = Optimizer(s.optimizer, self.weights, s.momentum, s.nesterov)
        self.dropout = _Dropout(s.dropout, self.rngs) if s.dropout else None
        self.steps = math.ceil(len(train_x) / s.batch_size)
        self.early = _EarlyStopping(self.members, s.patience)

    def learning_rate(self, rate):
        """The rate of the next step, `rate` as the schedule has it then."""
        s = self.settings
        return scheduled_rate(rate, s.lr_schedule, self.optimizer.iterations, self.steps, s.epochs)

    def epoch(self, shuffle, rate, advance, stop):
        """One pass over the training rows: `(loss, accuracy, stopped)`, the members' mean
        with dropout, and whether `stop` ended it early."""
        size, rows = self.settings.batch_size, len(self.x)
        orders = np.stack([rng.permutation(rows) if shuffle else np.arange(rows)
                           for rng in self.rngs])
        loss_sum, correct, seen = 0.0, 0, 0
        stopped = False
        for step in range(self.steps):
            batch = orders[:, step * size : (step + 1) * size]
            x, y = self.x[batch], self.y[batch]
            sample_weight = self.lookup[y] if self.lookup is not None else None
            loss, right, grads = _gradients(self.weights, x, y, sample_weight, self.dropout)
            self.optimizer.apply(self.weights, grads, self.learning_rate(rate))
            self.early.restore_stopped(self.weights)
            loss_sum += loss * y.shape[1]
            correct += right
            seen += y.size
            advance(step + 1)
            if stop is not None and stop():
                stopped = True
                break
        return loss_sum * self.members / seen, correct / seen, stopped

    def validate(self, val_x, val_y, epoch):
        """Early stopping at the end of `epoch` (counted from 0): `(val_loss, val_accuracy,
        members improved)`, the first two of the merge as it stands after it."""
        val_loss, val_accuracy = evaluate(merge(self.weights), val_x, val_y)
        if self.members == 1:
            improved, stopped = self.early.update(self.weights, epoch, lambda member: val_loss)
        else:
            improved, stopped = self.early.update(
                self.weights, epoch, lambda member: evaluate(member, val_x, val_y)[0])
            if stopped:  # the merge to describe is the one with their best weights
                val_loss, val_accuracy = evaluate(merge(self.weights), val_x, val_y)
        return val_loss, val_accuracy, improved


class _EarlyStopping:
    """keras.callbacks.EarlyStopping(monitor="val_loss", patience, restore_best_weights=True)
    for each member on its own val_loss: a member that stops keeps its best weights."""

    def __init__(self, members, patience):
        self.patience = patience
        self.best, self.wait = [math.inf] * members, [0] * members
        self.kept, self.done = [None] * members, [False] * members
        self.stopped = []  # in the order they stopped

    def update(self, weights, epoch, loss_of):
        """Takes the members' val_loss (`loss_of(member's weights)`) at the end of `epoch`;
        returns `(how many improved, whether one stopped)`."""
        improved, stopped = 0, False
        for k, done in enumerate(self.done):
            if done:
                continue
            member = [w[k] for w in weights]
            loss = loss_of(member)
            if self.kept[k] is None:
                self.kept[k] = [w.copy() for w in member]
            self.wait[k] += 1
            if loss < self.best[k]:
                self.best[k], self.kept[k], self.wait[k] = loss, [w.copy() for w in member], 0
                improved += 1
            elif self.wait[k] >= self.patience and epoch > 0:
                self.done[k], stopped = True, True
                self.stopped.append(k)
                self._restore(weights, k)
        return improved, stopped

    def restore_stopped(self, weights):
        """Puts back the best weights of the members that stopped (a step changed them)."""
        for k in self.stopped:
            self._restore(weights, k)

    def _restore(self, weights, k):
        for w, best in zip(weights, self.kept[k]):
            w[k] = best

    def best_weights(self, weights):
        """The merge of the members' kept weights (of `weights` when no epoch ran)."""
        if any(kept is None for kept in self.kept):
            return merge(weights)
        return merge([np.stack(arrays) for arrays in zip(*self.kept)])
