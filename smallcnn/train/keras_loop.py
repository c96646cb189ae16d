"""A phase trained through Keras: the head on augmented images with the base frozen,
every trainable layer end to end (on a cluster through `distributed`), or the top of the
network on cached activations (`train_on_views`, see `train.cut`); evaluation.
"""

import numpy as np

from smallcnn.train.epochs import (
    callbacks,
    global_batch,
    optimizer,
    run_epochs,
)

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


def fit_stream(model, stream, callbacks, steps, epochs, validation, batch_size,
               initial_epoch=0, judge=None):
    """Keras' `fit` loop written out, over an endless iterator of batches (or a
    `tf.distribute.DistributedIterator` of them, on several replicas); returns the
    history dict, as `fit`'s History has it.

    The same steps as `fit` (callbacks, metrics as means over the epoch, validation on
    `validation` arrays, `stop_training`), each batch taken when the step needs it.
    `fit` would read the iterator ahead in a tf.data prefetch thread instead, and
    destroying that thread's iterator as `fit` returned stalled for 5 to 39 s in about
    one run in two (measured: train --freeze on cats-dogs-small). `judge` (the model
    compiled with the plain loss, sharing its layers: `tuning_loss`) validates instead.
    """
    import tensorflow as tf

    model.make_train_function()

    def step(index):
        if index == 0:
            model.reset_metrics()
        batch = stream if isinstance(stream, tf.distribute.DistributedIterator) else \
            iter([next(stream)])
        return {k: float(v) for k, v in model.train_function(batch).items()}

    def validate():
        val = (judge or model).evaluate(*validation, batch_size=batch_size, verbose=0, return_dict=True)
        return {f"val_{k}": float(v) for k, v in val.items()}

    return run_epochs(model, callbacks, steps, epochs, step, validate, initial_epoch,
                      before_end=lambda: model.optimizer.finalize_variable_values(
                          model.trainable_weights))


def best_val(rows):
    """The (val_loss, val_accuracy) of the history row of lowest val_loss, or None."""
    scored = [r for r in rows if "val_loss" in r]
    best = min(scored, key=lambda r: r["val_loss"], default=None)
    return (best["val_loss"], best.get("val_accuracy")) if best else None


def _augmented_features(plan, source, through_base=True):
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

    s, placement = plan.settings, plan.placement
    if placement.multi_worker:
        train = source.decoded("train", shard=(placement.worker_index, placement.workers))
        size = s.batch_size * len(placement.devices)
    else:
        train, size = source.decoded("train"), global_batch(plan)
    augment = build_augmenter(s.augmentation(), seed=s.seed + placement.worker_index)
    augmenter = None
    if augment is not None:  # traced once for full batches, once for a shorter last one
        augmenter = tf.function(lambda x, i: augment(tf.cast(x, tf.float32), i),
                                reduce_retracing=True)
    engine = np.asarray
    if through_base:
        base = source.engine()

        def engine(images):  # the base's features as the head reads them (no taps)
            return source.head_input(base(images))
    weights = plan.class_weights()
    lookup = np.array([weights.get(i, 0.0) for i in range(len(plan.dataset.class_names))],
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


def _steps(plan, source):
    """Steps per epoch: the training images over the global batch (on a cluster counted
    from the file list: no worker decodes every image)."""
    count = len(plan.dataset.train) if plan.placement.multi_worker else \
        len(source.decoded("train"))
    return int(np.ceil(count / global_batch(plan)))


def train_head_frozen(session, stop, phase, model, head, run_dir):
    """Trains the head on augmented images with the base frozen, for `phase` (an
    `epochs.Phase`); returns history rows. `stop`: the run's `StopOnSignal`."""
    from smallcnn.model.networks import compile_model

    plan, source = session.plan, session.source
    steps = _steps(plan, source)
    val = source.features("val")
    checkpoint = session.writer.checkpoint(run_dir, model)
    with session.timings("head"):  # the base's forward pass on augmented batches included
        if plan.placement.multi_worker:
            from smallcnn.train import distributed

            history, seconds = distributed.fit(session, stop, phase, head,
                                               _augmented_features(plan, source), steps, val,
                                               checkpoint)
        else:
            compile_model(head, optimizer(plan, phase.learning_rate, steps, phase.epochs))
            chosen, report = callbacks(plan.settings, session.reporter, stop, phase.name,
                                       phase.epochs, steps, checkpoint)
            history = fit_stream(head, _augmented_features(plan, source), chosen, steps,
                                 phase.end, val, plan.settings.batch_size,
                                 initial_epoch=phase.initial_epoch)
            seconds = report.seconds
    return history_rows(history, phase, seconds)


def train_end_to_end(session, stop, phase, model, run_dir):
    """Trains every trainable layer of the model on augmented images, for `phase`;
    returns history rows (the best epoch's weights restored in `model`).

    In mixed precision or on several devices, a copy of the model trains (in the
    precision, in the strategy's scope) and its weights come back into `model`, which
    stays float32 (what is saved)."""
    plan, source = session.plan, session.source
    steps = _steps(plan, source)
    checkpoint = session.writer.checkpoint(run_dir, model)
    with session.timings("train"):  # building the pipeline traces the augmentation: timed
        if plan.placement.multi_worker:
            from smallcnn.train import distributed

            val = source.decoded("val")
            history, seconds = distributed.fit(
                session, stop, phase, model,
                _augmented_features(plan, source, through_base=False), steps,
                (val.images, val.labels), checkpoint)
        else:
            history, seconds = _fit_images(session, stop, phase, model, steps, checkpoint)
    return history_rows(history, phase, seconds)


def _fit_images(session, stop, phase, model, steps, checkpoint):
    """The whole model trained on augmented images (a working copy in the plan's
    precision and devices) through `fit_stream`, as the head is: Keras' `fit` read its
    tf.data pipeline ahead in a prefetch thread, whose teardown stalled each phase's end
    by 4 to 5 s (measured: finetune on cats-dogs-small). Returns `(history, seconds)`."""
    plan, source = session.plan, session.source
    s, placement = plan.settings, plan.placement
    val = source.decoded("val")
    working = placement.working_copy(model)
    with placement.scope():
        judge = compile_tuning(working, optimizer(plan, phase.learning_rate, steps,
                                                  phase.epochs, mixed=True, phase=phase),
                               plan, phase, smoothing=False)  # saved compiled: no closure
    copy_back = None if working is model else (lambda: model.set_weights(working.get_weights()))
    chosen, report = callbacks(s, session.reporter, stop, phase.name, phase.epochs, steps,
                               checkpoint, before_save=copy_back)
    stream = _augmented_features(plan, source, through_base=False)
    if placement.replicas > 1:
        stream = _per_replica(stream, working)
    with placement.scope():
        history = fit_stream(working, stream, chosen, steps, phase.end,
                             (val.images, val.labels), s.batch_size,
                             initial_epoch=phase.initial_epoch, judge=judge)
    if copy_back is not None:
        copy_back()
    return history, report.seconds


def _per_replica(stream, model):
    """`stream` as a distributed iterator of the model's strategy: each batch split
    across the replicas, as `fit`'s distributed dataset splits it."""
    import tensorflow as tf

    strategy = model.distribute_strategy
    first = next(stream)
    with strategy.scope():
        # What `fit` does first: the optimizer's and metrics' variables made here, in the
        # strategy's scope (made in a replica's first step, they fail to run).
        model._symbolic_build(data_batch=first)
    signature = tuple(tf.TensorSpec((None, *np.shape(part)[1:]), tf.as_dtype(part.dtype))
                      for part in first)

    def batches():
        yield first
        yield from stream

    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return iter(strategy.experimental_distribute_dataset(dataset))


def train_on_views(session, stop, phase, network, views, labels, val, model, run_dir):
    """Trains `network` for `phase` on batches drawn from `views` (arrays of the same
    images' inputs to it, one drawn per epoch) with `labels`, validated on `val`
    `(inputs, labels)`; `model` is what the checkpoint saves (the network shares its
    weights). Returns history rows (the best epoch's weights restored)."""
    plan = session.plan
    size = global_batch(plan)
    steps = int(np.ceil(len(labels) / size))
    with session.timings("train"):
        judge = compile_tuning(network, optimizer(plan, phase.learning_rate, steps,
                                                  phase.epochs, phase=phase), plan, phase)
        chosen, report = callbacks(plan.settings, session.reporter, stop, phase.name,
                                   phase.epochs, steps, session.writer.checkpoint(run_dir, model))
        stream = _view_batches(plan, views, labels, size, phase.initial_epoch)
        history = fit_stream(network, stream, chosen, steps, phase.end, val, size,
                             initial_epoch=phase.initial_epoch, judge=judge)
    return history_rows(history, phase, report.seconds)


def _view_batches(plan, views, labels, size, first_epoch):
    """Endless batches `(inputs, labels[, weights])`, an epoch's from one view, drawn
    without replacement until every view was used (float16 views cast to float32)."""
    s = plan.settings
    rng = np.random.default_rng(s.seed + first_epoch)
    weights = plan.class_weights()
    lookup = np.array([weights.get(i, 0.0) for i in range(len(plan.dataset.class_names))],
                      dtype=np.float32) if weights else None
    batches = _index_batches(len(labels), size, rng)
    steps = int(np.ceil(len(labels) / size))
    while True:
        for view in rng.permutation(len(views)):
            for _ in range(steps):
                rows = next(batches)
                x, y = views[view][rows].astype(np.float32), labels[rows]
                yield (x, y) if lookup is None else (x, y, lookup[y])


def compile_tuning(network, chosen, plan, phase, smoothing=True):
    """Compiles `network` with optimizer `chosen`; fine-tuning's (`phase`) loss with
    --label-smoothing (not on several replicas), when it returns the judge: a model
    sharing the network's layers, compiled with the plain loss, that validates (val_loss
    stays the cross-entropy every run and the earlier model are compared on)."""
    import keras

    from smallcnn.model.networks import compile_model

    amount = plan.settings.label_smoothing if phase.name == "finetune" and smoothing else 0
    if not amount:
        compile_model(network, chosen)
        return None
    network.compile(optimizer=chosen, loss=smoothed_loss(len(plan.dataset.class_names), amount),
                    metrics=["accuracy"])
    judge = keras.Model(network.inputs, network.outputs, name=f"{network.name}_judge")
    compile_model(judge, "adam")
    return judge


def smoothed_loss(classes, amount):
    """Cross-entropy of integer labels smoothed by `amount` (Keras' sparse loss has no
    label smoothing): the true class's target is 1 - amount + amount / classes."""
    import keras

    def loss(y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        return keras.losses.categorical_crossentropy(keras.ops.one_hot(labels, classes), y_pred,
                                                     label_smoothing=amount)

    return loss


def evaluate_model(model, session):
    """Loss and accuracy of the whole model on each evaluation split's images."""
    from smallcnn.data.pipeline import batches
    from smallcnn.model.networks import compile_model

    if getattr(model, "optimizer", None) is None:  # a model loaded without compiling
        compile_model(model, "adam")
    evaluations = {}
    for name in session.plan.eval_splits():
        split = session.source.decoded(name)
        dataset = batches(split.images, split.labels, session.plan.settings.batch_size)
        with session.timings("evaluate"):
            evaluations[name] = [float(v) for v in model.evaluate(dataset, verbose=0)]
    return evaluations


def evaluate_head(head, session):
    """Loss and accuracy of the head on each evaluation split's cached features."""
    from smallcnn.model.networks import compile_model

    if getattr(head, "optimizer", None) is None:  # a copy of it trained (on a cluster)
        compile_model(head, "adam")
    features = {name: session.source.features(name) for name in session.plan.eval_splits()}
    with session.timings("evaluate"):
        return {name: [float(v) for v in head.evaluate(*split, batch_size=256, verbose=0)]
                for name, split in features.items()}


def history_rows(history, phase, seconds=()):
    """history.csv's rows of one phase's History dict (epochs counted over the run)."""
    rows = []
    for i in range(len(history.get("loss", []))):
        row = {"epoch": phase.initial_epoch + 1 + i, "phase": phase.name}
        for key, values in history.items():
            row[key] = float(values[i])
        if i < len(seconds):
            row["seconds"] = round(seconds[i], 3)
        rows.append(row)
    return rows


def new_head(plan, feature_width=None, hidden=None):
    from smallcnn.model.networks import build_head

    s = plan.settings
    return build_head(feature_width or plan.spec.feature_width,
                      len(plan.dataset.class_names), s.dropout,
                      s.hidden if hidden is None else hidden)
