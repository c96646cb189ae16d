"""Keras' optimizers and learning-rate schedules, in NumPy, for the head of `extract`
(`smallcnn.model.head`): the update rules of keras.optimizers.Adam, SGD, RMSprop and Adagrad,
the decay schedules, and ReduceLROnPlateau; the Keras loop takes its constants from here."""

import math

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


class Plateau:
    """keras.callbacks.ReduceLROnPlateau(monitor="val_loss", **PLATEAU), its patience
    `plateau_patience` of early stopping's; `rate` is the rate it leaves."""

    def __init__(self, rate, patience):
        self.rate, self.patience = rate, plateau_patience(patience)
        self.best, self.wait = math.inf, 0

    def update(self, val_loss):
        if val_loss < self.best - PLATEAU["min_delta"]:
            self.best, self.wait = val_loss, 0
            return
        self.wait += 1
        if self.wait >= self.patience and self.rate > PLATEAU["min_lr"]:
            self.rate, self.wait = max(self.rate * PLATEAU["factor"], PLATEAU["min_lr"]), 0
