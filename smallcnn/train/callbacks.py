"""Keras callbacks used while training: progress reporting, an atomic checkpoint, Ctrl-C."""

import math
import time
from pathlib import Path

import keras

from smallcnn.model import runs
from smallcnn.runtime.signals import StopRequest
# The interval between saves is declared with the settings (checked as a command starts).
from smallcnn.train.settings import CHECKPOINT_VARIABLE, checkpoint_seconds  # noqa: F401


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
    """Keeps the best model so far (lowest `monitor`) at `path`, with the history rows up
    to it beside it, each written through a temporary file and a rename.

    The file is written at most every `min_interval` seconds, counted from the start of
    training. A best model that comes sooner is kept in memory (a copy of its weights)
    and written at the first epoch end once the interval has passed, improved or not: so
    the file holds the best model seen more than about `min_interval` seconds ago, even
    after a `kill -9`. The run's end saves the best model in any case.

    One checkpoint serves every phase of a run (`begin_phase`), so that fine-tuning
    replaces the head phase's model only with a better one. `model` is the model to save
    (a head trained on features is saved as the whole classifier it belongs to; a model
    trained in mixed precision or on several devices is saved as the float32 model it is
    a copy of: the phase's `before_save` copies the weights into `model` first).
    """

    def __init__(self, path, model, monitor="val_loss", min_interval=None,
                 clock=time.monotonic):
        super().__init__()
        self._clock = clock
        self.path = Path(path)
        self.monitor = monitor
        self.min_interval = checkpoint_seconds() if min_interval is None else min_interval
        self.best = math.inf
        self.rows = []  # the run's history rows so far, as `history.csv` has them
        self._to_save = model
        self._phase = None
        self._before_save = None
        self._last_save = None  # when the file was last written (or training started)
        self._unsaved = None  # the best weights while they are not yet in the file

    def begin_phase(self, phase, before_save=None):
        """Names the phase the next `fit` trains, and what copies its weights into the
        model to save (None: it trains that model itself)."""
        self._phase, self._before_save = phase, before_save

    def start_from(self, value, rows=(), saved=True):
        """Training starts from the model as it is now, whose `monitor` is `value` (None:
        unknown), after the epochs of `rows`; `saved`: it is already the file at `path`
        (a resumed run), else it is kept in memory until it is saved or bettered."""
        self.best = math.inf if value is None else value
        self.rows = list(rows)
        self._unsaved = None if saved else self._to_save.get_weights()

    def on_train_begin(self, logs=None):
        if self._last_save is None:  # the first phase: later ones go on counting
            self._last_save = self._clock()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.rows.append({"epoch": epoch + 1, "phase": self._phase,
                          **{k: float(v) for k, v in logs.items()}})
        value = logs.get(self.monitor)
        improved = value is not None and value < self.best  # a NaN never improves
        if improved:
            self.best = value
            if self._before_save is not None:
                self._before_save()
        elif self._unsaved is None:
            return  # the file holds the best model already
        if self._clock() - self._last_save >= self.min_interval:
            self._save(None if improved else self._unsaved)
        elif improved:
            self._unsaved = self._to_save.get_weights()

    def _save(self, weights):
        """Writes the model (with `weights`, if given, then puts its own back) and the
        history so far."""
        current = None
        if weights is not None:
            current = self._to_save.get_weights()
            self._to_save.set_weights(weights)
        try:
            runs.save_model(self._to_save, self.path)
        finally:
            if current is not None:
                self._to_save.set_weights(current)
        runs.write_history(self.path.parent / runs.HISTORY_FILE, self.rows)
        self._unsaved = None
        self._last_save = self._clock()


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
        self.elsewhere = None  # set by a cluster's loop when another worker was stopped

    @property
    def received(self):
        """The signal that asked training to stop (or why another worker stopped), if any."""
        return self._request.received or self.elsewhere

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
        """Puts the previous handlers back (`epochs.uninstall_signal_handlers` also does when
        training raises, since Keras then skips `on_train_end`)."""
        self._request.uninstall()
