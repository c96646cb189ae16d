"""Training through Keras' `fit`: the head on augmented images with the base frozen, or
every trainable layer end to end; the callbacks around it; evaluation.
"""

import numpy as np

from smallcnn import runs

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
    `on_train_end` only when training ends normally)."""
    from smallcnn.train.callbacks import StopOnSignal

    try:
        return model.fit(data, callbacks=callbacks, verbose=0, **kwargs)
    finally:
        for callback in callbacks:
            if isinstance(callback, StopOnSignal):
                callback.uninstall()


def callbacks(session, phase, epochs, steps, checkpoint=None):
    """Ctrl-C, early stopping, progress, the plateau schedule, a checkpoint, TensorBoard."""
    import keras

    from smallcnn.train.callbacks import AtomicCheckpoint, ReportEpochs, StopOnSignal

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
        from smallcnn.head import PLATEAU, plateau_patience

        chosen.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", patience=plateau_patience(s.patience), **PLATEAU))
    if checkpoint is not None:
        chosen.append(AtomicCheckpoint(*checkpoint))
        if s.tensorboard:
            folder = checkpoint[0].parent / "tensorboard" / phase
            chosen.append(keras.callbacks.TensorBoard(log_dir=str(folder)))
    return chosen


def optimizer(session, learning_rate, steps, epochs):
    from smallcnn.models import make_optimizer

    s = session.settings
    return make_optimizer(s.optimizer, learning_rate, s.momentum, s.nesterov, s.lr_schedule,
                          steps, epochs)


def _augmented_features(session):
    """An endless stream of (features, labels) batches of augmented training images.

    The frozen base needs no gradients, so each augmented batch goes through the
    inference engine and only the head trains: the same training as end to end with
    `trainable=False`, at the speed of inference.
    """
    from smallcnn.augment import build_augmenter
    from smallcnn.engine import TensorFlowEngine
    from smallcnn.pipeline import batches

    s = session.settings
    train = session.decoded("train")
    augmenter = build_augmenter(s.augmentation(), seed=s.seed)
    engine = session.engine()
    dataset = batches(train.images, train.labels, s.batch_size, shuffle=True, seed=s.seed,
                      augmenter=augmenter, background=isinstance(engine, TensorFlowEngine),
                      repeat=True)
    weights = session.class_weights()
    lookup = np.array([weights.get(i, 0.0) for i in range(len(session.dataset.class_names))],
                      dtype=np.float32) if weights else None
    for x, y in dataset:
        y = y.numpy()
        if lookup is None:
            yield engine(x.numpy()), y
        else:  # Keras takes no class_weight with a generator: per-sample weights instead
            yield engine(x.numpy()), y, lookup[y]


def train_head_frozen(session, model, head, run_dir, phase, epochs, learning_rate,
                      initial_epoch=0):
    """Trains the head on augmented images with the base frozen; returns history rows."""
    from smallcnn.models import compile_model

    s = session.settings
    steps = int(np.ceil(len(session.decoded("train")) / s.batch_size))
    compile_model(head, optimizer(session, learning_rate, steps, epochs))
    val = session.features("val")
    with session.timings("head"):  # the base's forward pass on augmented batches included
        history = fit(
            head, _augmented_features(session),
            callbacks(session, phase, epochs, steps,
                      checkpoint=(run_dir / runs.MODEL_FILE, model)),
            steps_per_epoch=steps,
            shuffle=False,  # the stream is shuffled
            validation_data=val,
            epochs=initial_epoch + epochs,
            initial_epoch=initial_epoch,
        )
    return history_rows(history, phase, first_epoch=initial_epoch + 1,
                        seconds=session.epoch_report.seconds)


def train_end_to_end(session, model, run_dir, phase, epochs, learning_rate, initial_epoch=0):
    """Trains every trainable layer of the model on augmented images; returns history rows
    and the evaluations of the restored best model."""
    from smallcnn.augment import build_augmenter
    from smallcnn.models import compile_model
    from smallcnn.pipeline import batches

    s = session.settings
    train = session.decoded("train")
    train_ds = batches(train.images, train.labels, s.batch_size, shuffle=True, seed=s.seed,
                       augmenter=build_augmenter(s.augmentation(), seed=s.seed), repeat=True)
    val = session.decoded("val")
    steps = int(np.ceil(len(train) / s.batch_size))
    compile_model(model, optimizer(session, learning_rate, steps, epochs))
    with session.timings("train"):
        history = fit(
            model, train_ds,
            callbacks(session, phase, epochs, steps,
                      checkpoint=(run_dir / runs.MODEL_FILE, model)),
            steps_per_epoch=steps,
            validation_data=batches(val.images, val.labels, s.batch_size),
            epochs=initial_epoch + epochs,
            initial_epoch=initial_epoch,
            shuffle=False,  # the tf.data pipeline shuffles
            class_weight=session.class_weights(),
        )
    rows = history_rows(history, phase, first_epoch=initial_epoch + 1,
                        seconds=session.epoch_report.seconds)
    return rows, evaluate_model(model, session)


def evaluate_model(model, session):
    """Loss and accuracy of the whole model on each evaluation split's images."""
    from smallcnn.models import compile_model
    from smallcnn.pipeline import batches

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
    features = {name: session.features(name) for name in session.eval_splits()}
    with session.timings("evaluate"):
        return {name: [float(v) for v in head.evaluate(*split, batch_size=256, verbose=0)]
                for name, split in features.items()}


def history_rows(history, phase, first_epoch=1, seconds=()):
    rows = []
    for i in range(len(history.history.get("loss", []))):
        row = {"epoch": first_epoch + i, "phase": phase}
        for key, values in history.history.items():
            row[key] = float(values[i])
        if i < len(seconds):
            row["seconds"] = round(seconds[i], 3)
        rows.append(row)
    return rows


def new_head(session, feature_width=None, hidden=None):
    from smallcnn.models import build_head

    s = session.settings
    return build_head(feature_width or session.spec.feature_width,
                      len(session.dataset.class_names), s.dropout,
                      s.hidden if hidden is None else hidden)
