"""Keras callbacks used while training: progress reporting and an atomic checkpoint."""

import math

import keras

from smallcnn import runs


class ReportEpochs(keras.callbacks.Callback):
    """Forwards batch progress and epoch results to a `Reporter`."""

    def __init__(self, reporter, phase, epochs, steps):
        super().__init__()
        self.reporter = reporter
        self.phase = phase
        self.epochs = epochs
        self.steps = steps
        self._progress = None
        self._advance = None
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        number = epoch - self._first_epoch + 1
        self._progress = self.reporter.progress(
            f"{self.phase} epoch {number}/{self.epochs}", self.steps
        )
        self._advance = self._progress.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self._advance is not None:
            self._advance(batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = self._advance = None
        logs = dict(logs or {})
        learning_rate = getattr(self.model.optimizer, "learning_rate", None)
        if learning_rate is not None:
            try:
                logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(learning_rate)))
            except (TypeError, ValueError):
                pass
        self.reporter.epoch(self.phase, epoch - self._first_epoch + 1, self.epochs, logs)

    def on_train_end(self, logs=None):
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = self._advance = None


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever `monitor` improves, through a temporary file and a rename."""

    def __init__(self, path, monitor="val_loss"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = value
            runs.save_model(self.model, self.path)
