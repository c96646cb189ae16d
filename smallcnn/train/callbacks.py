"""Keras callbacks used while training: progress reporting and an atomic checkpoint."""

import math
import time

import keras

from smallcnn import runs
from smallcnn.signals import StopRequest


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
        self._started = None
        self.seconds = []  # wall time of each epoch, validation included

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
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
        self.seconds.append(time.perf_counter() - self._started)
        logs["seconds"] = self.seconds[-1]
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
    """Saves a model when `monitor` improves, through a temporary file and a rename.

    Saving a whole classifier takes about a second, so an improvement is written at
    most every `min_interval` seconds, counted from the start of training: a run
    shorter than that is saved once, by the run's final save of the best model. `model`
    is the model to save when it is not the one being fitted (a head trained on features
    is saved as the whole classifier it belongs to; a model trained in mixed precision or
    on several devices is saved as the float32 model it is a copy of: `before_save` is
    called first, to copy the weights into `model`).
    """

    def __init__(self, path, model=None, monitor="val_loss", min_interval=30.0,
                 clock=time.monotonic, before_save=None):
        super().__init__()
        self._clock = clock
        self.path = path
        self.monitor = monitor
        self.min_interval = min_interval
        self.best = math.inf
        self._to_save = model
        self._before_save = before_save
        self._last_save = -math.inf

    def on_train_begin(self, logs=None):
        self._last_save = self._clock()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or value >= self.best:
            return
        self.best = value
        now = self._clock()
        if now - self._last_save >= self.min_interval:
            if self._before_save is not None:
                self._before_save()
            runs.save_model(self._to_save or self.model, self.path)
            self._last_save = now


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) or SIGTERM stops training at the end of the current step.

    Training then ends as if early stopping had fired: the best weights are restored
    and the run is saved. A second Ctrl-C stops at once (KeyboardInterrupt).
    """

    def __init__(self):
        super().__init__()
        self._request = StopRequest(on_signal=self._stop_model)
        # Whether a signal stops the model itself; a cluster's loop turns this off and
        # stops every worker at once instead (see `smallcnn.train.distributed`).
        self.stops_model = True

    @property
    def received(self):
        return self._request.received

    def _stop_model(self):
        if self.model is not None and self.stops_model:
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        self._request.install()

    def on_train_batch_end(self, batch, logs=None):
        if self._request() and self.stops_model:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.uninstall()

    def uninstall(self):
        """Puts the previous handlers back (`keras_loop.fit` also calls this when `fit`
        raises, since Keras then skips `on_train_end`)."""
        self._request.uninstall()
