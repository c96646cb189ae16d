"""Training on several machines: `tf.distribute.MultiWorkerMirroredStrategy`, with a
train step of its own.

Keras 3's `fit` does not run under this strategy (keras-team/keras#20585: "PerReplica
... to a Tensor"), so each step is written out as TensorFlow's custom-loop guide has it:
`strategy.run` of a GradientTape step on each replica's share of the global batch, the
loss averaged over the global batch (`tf.nn.compute_average_loss`), the gradients
summed across workers by the Keras optimizer. The epochs and Keras' callbacks around
the step are the single-process loop's (`epochs.run_epochs`).

Every worker validates on the whole validation split, so all take the same decisions
(early stopping, the restored best epoch); a stop request on any worker (Ctrl-C,
SIGTERM) reaches all of them at the same step, through the same all-reduce as the
step's loss (the next step's, for a request that comes between two epochs); nothing
else may stop one worker alone, or the others would wait for it forever.
"""

import numpy as np

from smallcnn.train import epochs as loop

PEER_STOPPED = "a stop request on another worker"


def fit(session, stop, phase, model, stream, steps, validation, checkpoint):
    """Trains `model` (the head on features, or the whole classifier on images) on this
    worker's batches from `stream`; returns `(history dict, seconds of each epoch)`.

    A copy of the model trains in the strategy's scope (in the plan's precision); its
    weights come back into `model` at the end and before each checkpoint.

    Args:
        stop: the run's `StopOnSignal`; a request on another worker is recorded in it.
        phase: an `epochs.Phase`.
        stream: endless `(x, y[, sample weight])` batches, this worker's share of each
            global batch (`keras_loop._augmented_features`).
        validation: `(x, y)` arrays of the whole validation split.
        checkpoint: the run's `AtomicCheckpoint` (None but on the chief).
    """
    import tensorflow as tf

    from smallcnn.model.networks import compile_model

    plan = session.plan
    strategy = plan.placement.strategy()
    local = len(plan.placement.devices)
    total = loop.global_batch(plan)
    with strategy.scope():
        working = plan.placement.working_copy(model)
        optimizer = loop.optimizer(plan, phase.learning_rate, steps, phase.epochs, mixed=True)
        compile_model(working, optimizer)  # callbacks read working.optimizer
        optimizer.build(working.trainable_variables)
    train_step = _train_step(strategy, working, optimizer, total)

    def distribute(array, dtype):
        parts = np.array_split(np.asarray(array), local)
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(parts[context.replica_id_in_sync_group % local], dtype))

    sums = {}

    def step(index):
        if index == 0:
            sums.update(loss=0.0, correct=0.0, seen=0.0)
        x, y, *weight = next(stream)
        weight = weight[0] if weight else np.ones(len(y), np.float32)
        asked = stop.received is not None  # Ctrl-C or SIGTERM here
        loss, correct, stops = train_step(
            distribute(x, tf.float32), distribute(y, tf.int32),
            distribute(weight, tf.float32), tf.constant(float(asked), tf.float32))
        sums["loss"] += float(loss)
        sums["correct"] += float(correct)
        sums["seen"] += total
        if float(stops) > 0:  # this worker or another was asked to stop
            if not asked:
                stop.elsewhere = PEER_STOPPED
            working.stop_training = True
        return {"loss": sums["loss"] / sums["seen"], "accuracy": sums["correct"] / sums["seen"]}

    predict = tf.function(lambda x: tf.cast(working(x, training=False), tf.float32),
                          reduce_retracing=True)
    chosen, report = loop.callbacks(plan.settings, session.reporter, stop, phase.name,
                                    phase.epochs, steps, checkpoint,
                                    before_save=lambda: model.set_weights(working.get_weights()))
    stop.stops_model = False  # a signal stops every worker at once, in `step`
    try:
        history = loop.run_epochs(
            working, chosen, steps, phase.end, step,
            lambda: _evaluate(predict, *validation, plan.settings.batch_size),
            initial_epoch=phase.initial_epoch)
    finally:
        stop.stops_model = True
    model.set_weights(working.get_weights())
    return history, report.seconds


def _train_step(strategy, working, optimizer, total):
    """The step on every replica: `(x, y, weight, stop) -> (loss sum, correct, stops)`,
    each summed over all the cluster's replicas."""
    import keras
    import tensorflow as tf

    def replica_step(x, y, weight):
        with tf.GradientTape() as tape:
            probabilities = tf.cast(working(x, training=True), tf.float32)
            losses = keras.losses.sparse_categorical_crossentropy(y, probabilities) * weight
            loss = tf.nn.compute_average_loss(losses, global_batch_size=total)
            scaled = optimizer.scale_loss(loss)
        variables = working.trainable_variables
        gradients = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, y), tf.float32))
        return tf.reduce_sum(losses), correct

    @tf.function
    def train_step(x, y, weight, stop):
        losses, correct = strategy.run(replica_step, args=(x, y, weight))
        stops = strategy.run(tf.identity, args=(stop,))
        add = tf.distribute.ReduceOp.SUM
        return (strategy.reduce(add, losses, axis=None), strategy.reduce(add, correct, axis=None),
                strategy.reduce(add, stops, axis=None))

    return train_step


def _evaluate(predict, x, y, batch_size):
    """val_loss and val_accuracy of the model on arrays, as Keras' evaluate computes them."""
    probabilities = np.concatenate([predict(np.asarray(x[i : i + batch_size], np.float32)).numpy()
                                    for i in range(0, len(x), batch_size)])
    y = np.asarray(y)
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    return {"val_loss": float(-np.log(picked).mean()),
            "val_accuracy": float((probabilities.argmax(axis=1) == y).mean())}
