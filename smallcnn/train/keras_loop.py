"""Training through Keras' `fit`: the head on augmented images with the base frozen, or
every trainable layer end to end; the callbacks around it; evaluation.
"""

import numpy as np

from smallcnn.model import runs

# A model that fine-tuning or a resumed run leaves with a val_loss higher than this
# above the earlier model's is undone: within it, the difference is noise.
KEEP_TOLERANCE = 1e-3


def worse_than(val, earlier):
    """Whether a new model is worse on val than the earlier one: a lower val accuracy, or
    a val_loss higher by more than `KEEP_TOLERANCE` (the one rule for keeping the earlier
    model, in `finetune` and `--resume` alike).

    Args:
        val: the new model's (val_loss, val_accuracy).
        earlier: the earlier model's, or None; a part may be None (not recorded).
    """
    if earlier is None:
        return False
    (loss, accuracy), (earlier_loss, earlier_accuracy) = val, earlier
    return ((earlier_accuracy is not None and accuracy < earlier_accuracy - 1e-9)
            or (earlier_loss is not None and loss > earlier_loss + KEEP_TOLERANCE))


def fit(model, data, callbacks, **kwargs):
    """`model.fit`, with Ctrl-C's handlers removed however it ends (Keras calls
    `on_train_end` only when training ends normally). Returns the history dict."""
    try:
        return model.fit(data, callbacks=callbacks, verbose=0, **kwargs).history
    finally:
        _uninstall_signal_handlers(callbacks)


def fit_stream(model, stream, callbacks, steps, epochs, validation, batch_size,
               initial_epoch=0):
    """Keras' `fit` loop written out, over an endless iterator of batches; returns the
    history dict, as `fit`'s History has it.

    The same steps as `fit` (callbacks, metrics as means over the epoch, validation on
    `validation` arrays, `stop_training`), each batch taken when the step needs it.
    `fit` would read the iterator ahead in a tf.data prefetch thread instead, and
    destroying that thread's iterator as `fit` returned stalled for 5 to 39 s in about
    one run in two (measured: train --freeze on cats-dogs-small).
    """
    import keras

    callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, model=model,
                                                 epochs=epochs, steps=steps, verbose=0)
    model.stop_training = False
    model.make_train_function()
    logs = {}
    try:
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            for step in range(steps):
                callback_list.on_train_batch_begin(step)
                logs = {k: float(v) for k, v in model.train_function(iter([next(stream)])).items()}
                callback_list.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            val = model.evaluate(*validation, batch_size=batch_size, verbose=0,
                                 return_dict=True)
            logs = {**logs, **{f"val_{k}": float(v) for k, v in val.items()}}
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        model.optimizer.finalize_variable_values(model.trainable_weights)
        callback_list.on_train_end(logs)
    finally:
        _uninstall_signal_handlers(callbacks)
    return model.history.history  # the History callback's, which CallbackList added


def _uninstall_signal_handlers(callbacks):
    from smallcnn.train.callbacks import StopOnSignal

    for callback in callbacks:
        if isinstance(callback, StopOnSignal):
            callback.uninstall()


def run_checkpoint(session, path, model):
    """The run's checkpoint of `model` at `path`: one for all its phases, made on first
    use (see `callbacks.AtomicCheckpoint`)."""
    from smallcnn.train.callbacks import AtomicCheckpoint

    if session.checkpoint is None:
        session.checkpoint = AtomicCheckpoint(path, model)
    return session.checkpoint


def start_checkpoint(session, run_dir, model, val, rows=(), saved=True):
    """Tells the run's checkpoint what training starts from: `model` as it is now, its
    `(val_loss, val_accuracy)` `val` (or None), after the epochs of `rows`; `saved`: it is
    the run's model.keras already (a resumed run), else it is written within the interval
    unless a better one comes (fine-tuning from another run)."""
    if session.placement.is_chief:
        run_checkpoint(session, run_dir / runs.MODEL_FILE, model).start_from(
            val and val[0], rows, saved)


def best_val(rows):
    """The (val_loss, val_accuracy) of the history row of lowest val_loss, or None."""
    scored = [r for r in rows if "val_loss" in r]
    best = min(scored, key=lambda r: r["val_loss"], default=None)
    return (best["val_loss"], best.get("val_accuracy")) if best else None


def callbacks(session, phase, epochs, steps, checkpoint=None):
    """Ctrl-C, early stopping, progress, the plateau schedule, the checkpoint, TensorBoard.

    `checkpoint` is `(path, model to save[, function called before saving])`; on a
    worker other than a cluster's chief there is none (the chief writes the run)."""
    import keras

    from smallcnn.train.callbacks import ReportEpochs, StopOnSignal

    s = session.settings
    if session._stop is None:
        session._stop = StopOnSignal()
    session.epoch_report = ReportEpochs(session.reporter, phase, epochs, steps)
    chosen = [
        session._stop,
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=s.patience,
                                      restore_best_weights=True),
        session.epoch_report,
    ]
    if s.lr_schedule == "plateau":
        from smallcnn.model.head import PLATEAU, plateau_patience

        chosen.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", patience=plateau_patience(s.patience), **PLATEAU))
    if checkpoint is not None and session.placement.is_chief:
        path, model, *before_save = checkpoint
        saver = run_checkpoint(session, path, model)
        saver.begin_phase(phase, (before_save or [None])[0])
        chosen.append(saver)
        if s.tensorboard:
            folder = path.parent / "tensorboard" / phase
            chosen.append(keras.callbacks.TensorBoard(log_dir=str(folder)))
    return chosen


def optimizer(session, learning_rate, steps, epochs, mixed=False):
    """The Keras optimizer of the settings; with `mixed` (a model computing in the
    session's precision), wrapped in loss scaling for mixed_float16, as Keras advises."""
    from smallcnn.model.networks import make_optimizer

    s = session.settings
    chosen = make_optimizer(s.optimizer, learning_rate, s.momentum, s.nesterov, s.lr_schedule,
                            steps, epochs)
    if mixed and session.placement.precision == "mixed_float16":
        import keras

        chosen = keras.optimizers.LossScaleOptimizer(chosen)
    return chosen


def global_batch(session):
    """Images per training step over every replica: --batch-size is per device."""
    return session.settings.batch_size * session.placement.replicas


def _augmented_features(session, through_base=True):
    """An endless stream of (features, labels) batches of augmented training images (or,
    without `through_base`, of the augmented images themselves).

    The frozen base needs no gradients, so each augmented batch goes through the
    inference engine and only the head trains: the same training as end to end with
    `trainable=False`, at the speed of inference. The batches are gathered in NumPy
    (reshuffled each epoch), and augmented taking turns with the engine, not ahead in
    tf.data threads: on 2 cores the two thread pools slowed each other down (measured
    with the standard augmentation and LiteRT: 99 images/s overlapped, 162 taking turns).

    On one machine a batch holds `global_batch` images (the engine splits it across the
    devices). On a worker of a cluster it holds this worker's share of a global batch,
    drawn from its own shard of the training images (only those are decoded), and every
    batch is full, so that all workers take the same number of steps.
    """
    import tensorflow as tf

    from smallcnn.data.augment import build_augmenter

    s, placement = session.settings, session.placement
    if placement.multi_worker:
        train = session.decoded("train", shard=(placement.worker_index, placement.workers))
        size = s.batch_size * len(placement.devices)
    else:
        train, size = session.decoded("train"), global_batch(session)
    augment = build_augmenter(s.augmentation(), seed=s.seed + placement.worker_index)
    augmenter = None
    if augment is not None:  # traced once for full batches, once for a shorter last one
        augmenter = tf.function(lambda x, i: augment(tf.cast(x, tf.float32), i),
                                reduce_retracing=True)
    engine = session.engine() if through_base else np.asarray
    weights = session.class_weights()
    lookup = np.array([weights.get(i, 0.0) for i in range(len(session.dataset.class_names))],
                      dtype=np.float32) if weights else None
    labels = np.asarray(train.labels, dtype=np.int32)
    rng = np.random.default_rng(s.seed + placement.worker_index)
    number = 0  # the batch's number over the whole run: it seeds its augmentation
    for rows in _index_batches(len(train), size, rng, full=placement.multi_worker):
        x, y = np.asarray(train.images[rows]), labels[rows]
        if augmenter is not None:
            x = augmenter(x, tf.constant(number, tf.int64)).numpy()
        elif not through_base:  # the model's own input: float pixels
            x = x.astype(np.float32)
        number += 1
        if lookup is None:
            yield engine(x), y
        else:  # Keras takes no class_weight with a generator: per-sample weights instead
            yield engine(x), y, lookup[y]


def _index_batches(n, size, rng, full=False):
    """Endless sorted index batches (sorted: fast from a memmap), reshuffled each epoch;
    the last batch of an epoch is shorter, or, with `full`, filled from the next."""
    pending = np.empty(0, dtype=np.int64)
    while True:
        order = rng.permutation(n)
        if not full:
            for start in range(0, n, size):
                yield np.sort(order[start : start + size])
            continue
        pending = np.concatenate([pending, order])
        while len(pending) >= size:
            yield np.sort(pending[:size])
            pending = pending[size:]


def _steps(session):
    """Steps per epoch: the training images over the global batch (on a cluster counted
    from the file list: no worker decodes every image)."""
    count = len(session.dataset.train) if session.placement.multi_worker else \
        len(session.decoded("train"))
    return int(np.ceil(count / global_batch(session)))


def train_head_frozen(session, model, head, run_dir, phase, epochs, learning_rate,
                      initial_epoch=0):
    """Trains the head on augmented images with the base frozen; returns history rows."""
    from smallcnn.model.networks import compile_model

    steps = _steps(session)
    val = session.features("val")
    checkpoint = (run_dir / runs.MODEL_FILE, model)
    with session.timings("head"):  # the base's forward pass on augmented batches included
        if session.placement.multi_worker:
            from smallcnn.train import distributed

            history = distributed.fit(session, head, _augmented_features(session), steps,
                                      epochs, val, phase, checkpoint, learning_rate,
                                      initial_epoch)
        else:
            compile_model(head, optimizer(session, learning_rate, steps, epochs))
            history = fit_stream(head, _augmented_features(session),
                                 callbacks(session, phase, epochs, steps, checkpoint),
                                 steps, initial_epoch + epochs, val,
                                 session.settings.batch_size, initial_epoch=initial_epoch)
    return history_rows(history, phase, first_epoch=initial_epoch + 1,
                        seconds=session.epoch_report.seconds)


def train_end_to_end(session, model, run_dir, phase, epochs, learning_rate, initial_epoch=0):
    """Trains every trainable layer of the model on augmented images; returns history rows
    and the evaluations of the restored best model.

    In mixed precision or on several devices, a copy of the model trains (in the
    precision, in the strategy's scope) and its weights come back into `model`, which
    stays float32 (what is saved)."""
    from smallcnn.data.augment import build_augmenter
    from smallcnn.data.pipeline import batches
    from smallcnn.model.networks import compile_model

    s, placement = session.settings, session.placement
    steps = _steps(session)
    if placement.multi_worker:
        from smallcnn.train import distributed

        val = session.decoded("val")
        with session.timings("train"):
            history = distributed.fit(
                session, model, _augmented_features(session, through_base=False), steps,
                epochs, (val.images, val.labels), phase, (run_dir / runs.MODEL_FILE, model),
                learning_rate, initial_epoch)
        rows = history_rows(history, phase, first_epoch=initial_epoch + 1,
                            seconds=session.epoch_report.seconds)
        return rows, evaluate_model(model, session)
    train = session.decoded("train")
    val = session.decoded("val")
    size = global_batch(session)
    with session.timings("train"):  # building the pipeline traces the augmentation: timed
        working = placement.working_copy(model)
        train_ds = batches(train.images, train.labels, size, shuffle=True, seed=s.seed,
                           augmenter=build_augmenter(s.augmentation(), seed=s.seed), repeat=True)
        with placement.scope():
            compile_model(working, optimizer(session, learning_rate, steps, epochs, mixed=True))
        checkpoint = (run_dir / runs.MODEL_FILE, model)
        if working is not model:
            checkpoint += (lambda: model.set_weights(working.get_weights()),)
        history = fit(
            working, train_ds,
            callbacks(session, phase, epochs, steps, checkpoint),
            steps_per_epoch=steps,
            validation_data=batches(val.images, val.labels, size),
            epochs=initial_epoch + epochs,
            initial_epoch=initial_epoch,
            shuffle=False,  # the tf.data pipeline shuffles
            class_weight=session.class_weights(),
        )
        if working is not model:
            model.set_weights(working.get_weights())
    rows = history_rows(history, phase, first_epoch=initial_epoch + 1,
                        seconds=session.epoch_report.seconds)
    return rows, evaluate_model(model, session)


def evaluate_model(model, session):
    """Loss and accuracy of the whole model on each evaluation split's images."""
    from smallcnn.data.pipeline import batches
    from smallcnn.model.networks import compile_model

    if getattr(model, "optimizer", None) is None:  # a model loaded without compiling
        compile_model(model, "adam")
    evaluations = {}
    for name in session.eval_splits():
        split = session.decoded(name)
        dataset = batches(split.images, split.labels, session.settings.batch_size)
        with session.timings("evaluate"):
            evaluations[name] = [float(v) for v in model.evaluate(dataset, verbose=0)]
    return evaluations


def evaluate_head(head, session):
    """Loss and accuracy of the head on each evaluation split's cached features."""
    from smallcnn.model.networks import compile_model

    if getattr(head, "optimizer", None) is None:  # a copy of it trained (on a cluster)
        compile_model(head, "adam")
    features = {name: session.features(name) for name in session.eval_splits()}
    with session.timings("evaluate"):
        return {name: [float(v) for v in head.evaluate(*split, batch_size=256, verbose=0)]
                for name, split in features.items()}


def history_rows(history, phase, first_epoch=1, seconds=()):
    rows = []
    for i in range(len(history.get("loss", []))):
        row = {"epoch": first_epoch + i, "phase": phase}
        for key, values in history.items():
            row[key] = float(values[i])
        if i < len(seconds):
            row["seconds"] = round(seconds[i], 3)
        rows.append(row)
    return rows


def new_head(session, feature_width=None, hidden=None):
    from smallcnn.model.networks import build_head

    s = session.settings
    return build_head(feature_width or session.spec.feature_width,
                      len(session.dataset.class_names), s.dropout,
                      s.hidden if hidden is None else hidden)
