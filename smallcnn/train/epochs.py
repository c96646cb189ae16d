"""The epoch loop every phase trained through Keras runs, and the callbacks around it.

`run_epochs` is Keras' `fit` written out: callbacks, a validation at each epoch's end,
`stop_training`. The single-process stream (`keras_loop.fit_stream`) and a cluster's
worker (`distributed.fit`) differ only in their step and their validation.
"""

import dataclasses

from smallcnn.model.head import PLATEAU, plateau_patience


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a run: 'frozen' (the head, the base frozen), 'full' (every layer) or
    'finetune' (the top of the base and the head), for `epochs` epochs after the run's
    first `initial_epoch`."""

    name: str
    epochs: int
    learning_rate: float
    initial_epoch: int = 0
    features: bool = False  # trained on the frozen base's cached features (finetune's head)
    # Fine-tuning's learning-rate factor of each variable below the top block, by its
    # path (`rate_factors`); any other variable trains at the phase's rate.
    factors: dict = dataclasses.field(default=None, compare=False, hash=False)

    @property
    def end(self):
        """The epoch to end before, as Keras' `fit` takes `epochs`."""
        return self.initial_epoch + self.epochs


def global_batch(plan):
    """Images per training step over every replica: --batch-size is per device."""
    return plan.settings.batch_size * plan.placement.replicas


def optimizer(plan, learning_rate, steps, epochs, mixed=False, phase=None):
    """The Keras optimizer of the settings; with `mixed` (a model computing in the
    plan's precision), wrapped in loss scaling for mixed_float16, as Keras advises.
    Fine-tuning's (`phase`) warms up over --warmup-epochs and scales its variables'
    rates by the phase's `factors`."""
    from smallcnn.model.networks import make_optimizer

    s = plan.settings
    tuning = phase is not None and phase.name == "finetune"
    warmup = round(s.warmup_epochs * steps) if tuning and s.warmup_epochs else 0
    chosen = make_optimizer(s.optimizer, learning_rate, s.momentum, s.nesterov, s.lr_schedule,
                            steps, epochs, warmup_steps=warmup)
    if tuning and phase.factors:
        chosen = scaled_rates(chosen, phase.factors)
    if mixed and plan.placement.precision == "mixed_float16":
        import keras

        chosen = keras.optimizers.LossScaleOptimizer(chosen)
    return chosen


def scaled_rates(chosen, factors):
    """`chosen` (a Keras optimizer) updating each variable at its learning rate times
    `factors[variable.path]` (1 for a variable not in it): Keras has no per-variable
    rate, and scaling gradients instead would do nothing under Adam's normalisation."""
    kind = type(chosen)

    class Scaled(kind):
        def build(self, variables):
            super().build(variables)
            self._rate_factors = [factors.get(v.path, 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            # The step sees the backend's variable: found by the optimizer's own index.
            factor = self._rate_factors[self._get_variable_index(variable)]
            return super().update_step(gradient, variable,
                                       learning_rate if factor == 1.0 else learning_rate * factor)

    # Saved with a compiled model as the optimizer it extends (loaded models are not compiled).
    Scaled.__name__, Scaled.__qualname__, Scaled.__module__ = \
        kind.__name__, kind.__qualname__, kind.__module__
    chosen.__class__ = Scaled
    return chosen


def rate_factors(base, unfrozen, block_pattern, decay):
    """{variable path: learning-rate factor} of the `unfrozen` layers of `base`: 1 for
    the top unfrozen block, `decay` for the one below it, `decay`**2 below that...
    (discriminative rates: the lower layers, more general, change less)."""
    from smallcnn.model.networks import base_blocks

    names, factors, depth = set(unfrozen), {}, 0
    for block in reversed(base_blocks(base, block_pattern)):
        chosen = [layer for layer in block if layer.name in names]
        if not chosen:
            continue
        for layer in chosen:
            for variable in layer.weights:
                factors[variable.path] = decay ** depth
        depth += 1
    return factors


def callbacks(settings, reporter, stop, phase, epochs, steps, checkpoint=None,
              before_save=None):
    """`(callbacks, report)`: `stop` (Ctrl-C), early stopping, progress (`report`, a
    `ReportEpochs`, which times each epoch), the plateau schedule, the run's
    `checkpoint` (an `AtomicCheckpoint`, or None where this process writes no run) with
    TensorBoard beside it.

    `before_save` copies the trained weights into the model the checkpoint saves (a
    copy of it trained); None: the checkpoint's model trains itself."""
    import keras

    from smallcnn.train.callbacks import ReportEpochs

    report = ReportEpochs(reporter, phase, epochs, steps)
    chosen = [stop,
              keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience,
                                            restore_best_weights=True),
              report]
    if settings.lr_schedule == "plateau":
        chosen.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", patience=plateau_patience(settings.patience), **PLATEAU))
    if checkpoint is not None:
        checkpoint.begin_phase(phase, before_save)
        chosen.append(checkpoint)
        if settings.tensorboard:
            folder = checkpoint.path.parent / "tensorboard" / phase
            chosen.append(keras.callbacks.TensorBoard(log_dir=str(folder)))
    return chosen, report


def uninstall_signal_handlers(callbacks):
    """Puts back the signal handlers a `StopOnSignal` among `callbacks` installed (Keras
    skips `on_train_end` when training raises)."""
    from smallcnn.train.callbacks import StopOnSignal

    for callback in callbacks:
        if isinstance(callback, StopOnSignal):
            callback.uninstall()


def run_epochs(model, callbacks, steps, epochs, step, validate, initial_epoch=0,
               before_end=None):
    """Keras' `fit` loop; returns the history dict, as `fit`'s History has it.

    Args:
        model: the model the callbacks see (its `stop_training` ends training).
        steps, epochs: steps per epoch; the epoch to end before (`fit`'s `epochs`).
        step: called with the step's index in its epoch, returns the logs so far in the
            epoch (metrics as means over the epoch's steps).
        validate: called at each epoch's end, returns the `val_` logs.
        before_end: called before the callbacks' `on_train_end`.
    """
    import keras

    callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, model=model,
                                                 epochs=epochs, steps=steps, verbose=0)
    model.stop_training = False
    logs = {}
    try:
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            for index in range(steps):
                callback_list.on_train_batch_begin(index)
                logs = step(index)
                callback_list.on_train_batch_end(index, logs)
                if model.stop_training:
                    break
            logs = {**logs, **validate()}
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        if before_end is not None:
            before_end()
        callback_list.on_train_end(logs)
    finally:
        uninstall_signal_handlers(callbacks)
    return model.history.history  # the History callback's, which CallbackList added
