"""Training on several machines: `tf.distribute.MultiWorkerMirroredStrategy`, with a
train step of its own.

Keras 3's `fit` does not run under this strategy (keras-team/keras#20585: "PerReplica
... to a Tensor"), so each step is written out as TensorFlow's custom-loop guide has it:
`strategy.run` of a GradientTape step on each replica's share of the global batch, the
loss averaged over the global batch (`tf.nn.compute_average_loss`), the gradients
summed across workers by the Keras optimizer. Keras' callbacks run around it as in
`fit` (early stopping, progress, the plateau schedule, the chief's checkpoint).

Every worker validates on the whole validation split, so all take the same decisions
(early stopping, the restored best epoch); a stop request on any worker (Ctrl-C,
SIGTERM) reaches all of them at the same step, through the same all-reduce as the
step's loss (the next step's, for a request that comes between two epochs); nothing
else may stop one worker alone, or the others would wait for it forever.
"""

import numpy as np


def fit(session, model, stream, steps, epochs, validation, phase, checkpoint, learning_rate,
        initial_epoch=0):
    """Trains `model` (the head on features, or the whole classifier on images) on this
    worker's batches from `stream`; returns the history dict, as Keras' History has it.

    A copy of the model trains in the strategy's scope (in the session's precision);
    its weights come back into `model` at the end and before each checkpoint.

    Args:
        stream: endless `(x, y[, sample weight])` batches, this worker's share of each
            global batch (`keras_loop._augmented_features`).
        validation: `(x, y)` arrays of the whole validation split.
        checkpoint: `(path, model to save)`, written by the chief.
    """
    import keras
    import tensorflow as tf

    from smallcnn.model.networks import compile_model
    from smallcnn.train import keras_loop as loop

    placement = session.placement
    strategy = placement.strategy()
    local = len(placement.devices)
    total = loop.global_batch(session)
    with strategy.scope():
        working = placement.working_copy(model)
        optimizer = loop.optimizer(session, learning_rate, steps, epochs, mixed=True)
        compile_model(working, optimizer)  # callbacks read working.optimizer
        optimizer.build(working.trainable_variables)

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

    def distribute(array, dtype):
        parts = np.array_split(np.asarray(array), local)
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(parts[context.replica_id_in_sync_group % local], dtype))

    predict = tf.function(lambda x: tf.cast(working(x, training=False), tf.float32),
                          reduce_retracing=True)
    chosen = loop.callbacks(session, phase, epochs, steps, checkpoint + (
        lambda: model.set_weights(working.get_weights()),))
    callback_list = keras.callbacks.CallbackList(chosen, add_history=True, model=working,
                                                 epochs=initial_epoch + epochs, steps=steps,
                                                 verbose=0)
    working.stop_training = False
    session._stop.stops_model = False  # a signal stops every worker at once, below
    logs = {}
    try:
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, initial_epoch + epochs):
            callback_list.on_epoch_begin(epoch)
            loss_sum = correct_sum = seen = 0.0
            for step in range(steps):
                callback_list.on_train_batch_begin(step)
                x, y, *weight = next(stream)
                weight = weight[0] if weight else np.ones(len(y), np.float32)
                asked = session._stop.received is not None  # Ctrl-C or SIGTERM here
                loss, correct, stops = train_step(
                    distribute(x, tf.float32), distribute(y, tf.int32),
                    distribute(weight, tf.float32), tf.constant(float(asked), tf.float32))
                loss_sum, correct_sum = loss_sum + float(loss), correct_sum + float(correct)
                seen += total
                logs = {"loss": loss_sum / seen, "accuracy": correct_sum / seen}
                callback_list.on_train_batch_end(step, logs)
                if float(stops) > 0:  # this worker or another was asked to stop
                    if not asked:
                        session.peer_interrupted = "a stop request on another worker"
                    working.stop_training = True
                    break
            logs.update(_evaluate(predict, *validation, session.settings.batch_size))
            callback_list.on_epoch_end(epoch, logs)
            if working.stop_training:
                break
        callback_list.on_train_end(logs)
    finally:
        session._stop.stops_model = True
        loop._uninstall_signal_handlers(chosen)
    model.set_weights(working.get_weights())
    return working.history.history


def _evaluate(predict, x, y, batch_size):
    """val_loss and val_accuracy of the model on arrays, as Keras' evaluate computes them."""
    probabilities = np.concatenate([predict(np.asarray(x[i : i + batch_size], np.float32)).numpy()
                                    for i in range(0, len(x), batch_size)])
    y = np.asarray(y)
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    return {"val_loss": float(-np.log(picked).mean()),
            "val_accuracy": float((probabilities.argmax(axis=1) == y).mean())}
