"""`extract`: run the base once, cache the features, train a dense head in NumPy."""

import numpy as np

from smallcnn.data.augment import Augmentation
from smallcnn.errors import UsageError
from smallcnn.model import runs
from smallcnn.runtime.signals import StopRequest
from smallcnn.train import self_training, taps
from smallcnn.train.session import Session
from smallcnn.train.settings import Settings


@runs.overwriting()
def extract(data_dir, settings=None, out=None, overwrite=False, reporter=None,
            command_line=None):
    """Feature extraction: run the base once, cache the features, train a dense head.

    Args:
        data_dir: a data folder (see `smallcnn.data.dataset.find_dataset`).
        settings: a `Settings`; unset values take the `extract` defaults.
        out: the run folder to write; default `runs/extract-<time>`.
        overwrite: replace a run already in `out`.
        reporter: receives progress; default silent.
        command_line: recorded in the run's smallcnn.json; default `sys.argv`.

    Returns:
        A `RunResult`. The saved model takes raw images (base + head).
    """

    pools = []  # the --unlabeled pool, checked against the data before any work

    def refuse_early(session):
        if out is not None:  # refused now, before the work; the folder is made at the end
            runs.check_out(out, overwrite, session.data_paths())
        if session.settings.views and session.settings.augmentation() == Augmentation():
            raise UsageError("--views needs an augmentation; drop --augment none, or pass "
                             "--augment light|standard|strong.")
        if session.settings.unlabeled:
            pools.append(self_training.read_pool(session.dataset, session.settings.unlabeled,
                                                 session.reporter))
        session.source.start_warmup(templates=template_shapes(session))  # while images are read

    session = Session("extract", data_dir, settings or Settings(), reporter, command_line,
                      before_data=refuse_early)
    s, reporter, source, writer = session.settings, session.reporter, session.source, \
        session.writer
    train_x, train_y = source.raw_features("train")  # the extractor's: taps included
    if s.views:  # the head also trains on features of augmented copies
        views = source.augmented_views(s.views)
        train_x = np.concatenate([train_x, *views])
        train_y = np.tile(train_y, s.views + 1)
    if pools:
        _pool_features(session, pools[0])
    stop = StopRequest()  # Ctrl-C ends training; the run records it
    extra = {"views": s.views, "heads": s.heads, "head_training_rows": len(train_x)}
    with stop, session.timings("head"):
        weights, rows, train_x = _heads_on_chosen_input(session, train_x, train_y, stop, extra)
        if pools:
            pool_x = source.features(self_training.POOL_SPLIT)[0]
            weights, rows, extra["self_training"] = _self_train(
                session, pools[0], pool_x, weights, rows, (train_x, train_y), stop)
    with session.timings("evaluate"):
        evaluations = {name: _evaluated(session, weights, name)
                       for name in session.plan.eval_splits()}
    with session.timings("model"):
        model, base_layer = _classifier(session, weights)
    run_dir = writer.new_run_dir(out, overwrite)
    config = writer.config(base_layer)
    if s.tensorboard:
        _write_tensorboard(run_dir / "tensorboard" / "head", rows)
    if s.heads > 1:  # each head kept its own best epoch; the ensemble is final as of the last
        improved = [r["epoch"] for r in rows if r.get("heads_improved")]
        extra["best_epoch"] = improved[-1] if improved else 1
    metrics = writer.finish(run_dir, model, config, rows, evaluations, extra,
                            head_weights=weights, interrupted=stop.received)
    return writer.result(run_dir, metrics, rows, interrupted=stop.received)


def _evaluated(session, weights, name):
    """`[loss, accuracy]` of the heads on split `name` as the run will predict it: from
    bf16 features, their close calls made again in float32 (`inference.second_look`), so
    that metrics.json's accuracies are `evaluate`'s."""
    from smallcnn.inference.second_look import looked_again
    from smallcnn.model import head as numpy_head

    source = session.source
    x, y = source.features(name)
    if source.engine_used()[1] != "bfloat16" or session.plan.weights == "none":
        return list(numpy_head.evaluate(weights, x, y))
    probabilities = looked_again(numpy_head.probabilities(weights, x), lambda rows:
                                 numpy_head.probabilities(weights,
                                                          source.float32_features(name, rows)))
    y = np.asarray(y, np.int64)
    right = probabilities[np.arange(len(y)), y]
    loss = float(-np.log(np.maximum(right, np.finfo(np.float32).tiny)).mean())
    return [loss, float((probabilities.argmax(axis=1) == y).mean())]


def _heads_on_chosen_input(session, train_x, train_y, stop, extra):
    """`(weights, rows, training rows as they read them)` of the heads on the last layer's
    features, or on the taps' too where they gain on val (`smallcnn.train.taps`; its
    record joins `extra`); the source's features are then the chosen input."""
    source, reporter = session.source, session.reporter
    (weights, history), chosen = taps.choose(
        source, session.settings.taps, lambda head_input: _train_heads(
            session, head_input(train_x), train_y, stop, reporter.epoch),
        reporter.note, stopped=lambda: stop.received)
    if chosen is not None:  # (a base with taps)
        extra["taps"] = chosen
    return weights, _rows(history, "head"), source.head_input(train_x)


def _train_heads(session, train_x, train_y, stop, on_epoch=None):
    """`(weights, history)` of the heads trained on these rows, early-stopped on val; with
    `on_epoch` (`Reporter.epoch`), shown as they train.

    The heads train in NumPy (see smallcnn.model.head): with the features cached, the whole
    run needs no TensorFlow.
    """
    from smallcnn.model import head as numpy_head

    s, reporter = session.settings, session.reporter
    steps = int(np.ceil(len(train_x) / s.batch_size))
    return numpy_head.train(
        train_x, train_y, session.source.features("val"), s, len(session.dataset.class_names),
        class_weights=session.plan.class_weights(), members=s.heads, stop=stop,
        on_epoch=on_epoch and (lambda epoch, logs: on_epoch("head", epoch, s.epochs, logs)),
        progress=on_epoch and (
            lambda epoch: reporter.progress(f"head epoch {epoch}/{s.epochs}", steps)))


def _rows(history, phase, first=1):
    """history.csv's rows of one phase's epochs, numbered from `first`."""
    return [{"epoch": first + i, "phase": phase,
             **{k: (round(v, 3) if k == "seconds" else v) for k, v in logs.items()}}
            for i, logs in enumerate(history)]


def _pool_features(session, pool):
    """Computes the features of the --unlabeled pool's images, through the splits' engine
    and cache (`read_pool` refuses a pool with no image to learn from)."""
    session.source.add_unlabeled(pool.split, pool.digests)
    session.source.raw_features(self_training.POOL_SPLIT)


def _self_train(session, pool, pool_x, weights, rows, train, stop):
    """`extract --unlabeled`: `(weights, rows, metrics' record)` after self-training on the
    pool's features (see `smallcnn.train.self_training`); the supervised heads and their
    rows when the pool does not gain on val."""
    source, reporter = session.source, session.reporter
    class_names = session.dataset.class_names
    weights, histories, record = self_training.self_train(
        weights, train, source.features("val"), pool_x,
        lambda x, y: _train_heads(session, x, y, stop), class_names,
        self_training.per_class_cap(session.dataset.train.labels, len(class_names)),
        stopped=stop, note=reporter.note)
    for number, history in enumerate(histories, 1):
        rows = rows + _rows(history, f"self-training {number}", len(rows) + 1)
    if not record["kept"]:
        reporter.note(f"Self-training did not gain {self_training.MIN_VAL_GAIN} val images at "
                      "no higher val loss: the supervised heads are kept "
                      f"({record['supervised_val_accuracy']:.2%} on val).")
    return weights, rows, {**self_training.describe_pool(pool), **record}


def _classifier(session, head_weights):
    """`(model, base layer name)`: the whole classifier with these head weights.

    With pretrained weights, the model is assembled from a cached template without
    TensorFlow (see `smallcnn.model.modelfile`); the first run saves the template (or its
    helper process did: see `smallcnn.train.warmup`).
    """
    from smallcnn.model import modelfile

    s = session.settings
    # Merged heads (--heads K --hidden N) have K x N hidden units.
    shape = {"feature_width": head_weights[0].shape[0], "num_classes": head_weights[-1].shape[0],
             "hidden": head_weights[0].shape[1] if len(head_weights) == 4 else 0,
             "dropout": s.dropout, "taps": session.source.head_input.taps}
    key = modelfile.template_key(session.spec, session.plan.weights, s.image_size, **shape)
    source = session.source
    source.wait_for_warmup()
    template = modelfile.load_template(key, warn=session.reporter.warning)
    if template is not None:
        return modelfile.AssembledClassifier(template, head_weights), template.base_layer
    base = source.base or source.build_base()
    model, head, template = modelfile.classifier_template(session.spec, base, s.image_size, key,
                                                          **shape, warn=session.reporter.warning)
    if template is not None:
        return modelfile.AssembledClassifier(template, head_weights), base.name
    head.set_weights(head_weights)  # random base weights, or no cache: this model is the one
    return model, base.name


def template_shapes(session):
    """The heads extract may train (on the last layer's features, on the taps' too: see
    `taps.candidates`), as `modelfile.template_key` takes them after the base, weights and
    size (what `_classifier` reads from the trained weights)."""
    s = session.settings
    return [{"feature_width": head_input.width, "num_classes": len(session.dataset.class_names),
             "hidden": s.hidden * s.heads, "dropout": s.dropout, "taps": head_input.taps}
            for head_input in taps.candidates(session.spec, s.taps)]


def _write_tensorboard(folder, rows):
    """TensorBoard logs of the epochs in `rows`, as Keras' TensorBoard callback names them."""
    import tensorflow as tf

    for split, tags in (("train", {"loss": "epoch_loss", "accuracy": "epoch_accuracy",
                                   "learning_rate": "epoch_learning_rate"}),
                        ("validation", {"val_loss": "epoch_loss",
                                        "val_accuracy": "epoch_accuracy"})):
        writer = tf.summary.create_file_writer(str(folder / split))
        with writer.as_default():
            for row in rows:
                for key, tag in tags.items():
                    if key in row:
                        tf.summary.scalar(tag, row[key], step=row["epoch"] - 1)
        writer.close()
