"""finetune's head phase: extract's heads, trained by the same NumPy code on the frozen
base's cached features (`smallcnn.model.head`), in seconds, then put into the Keras head
that fine-tuning starts from."""

import dataclasses

from smallcnn.train.settings import HEAD_RECIPE


def extract_heads(session, stop, phase, model):
    """Trains the head as `extract` trains its heads (the same NumPy code on the frozen
    base's cached features, with `HEAD_RECIPE`), for `phase`, and puts it into `model`;
    returns history rows. A signal ends it as early stopping would, and sets `stop`."""
    from smallcnn.model import head as numpy_head
    from smallcnn.model.networks import HEAD_NAME
    from smallcnn.runtime.signals import StopRequest

    s, source = session.settings, session.source
    recipe = dataclasses.replace(s, epochs=phase.epochs, learning_rate=phase.learning_rate,
                                 **HEAD_RECIPE)
    train_x, train_y = source.features("train")
    request = StopRequest()
    with request, session.timings("head"):
        weights, history = numpy_head.train(
            train_x, train_y, source.features("val"), recipe, len(session.dataset.class_names),
            class_weights=session.plan.class_weights(), members=recipe.heads, stop=request,
            on_epoch=lambda epoch, logs: session.reporter.epoch(phase.name, epoch,
                                                                phase.epochs, logs))
    if request.received:
        stop.elsewhere = request.received
    model.get_layer(HEAD_NAME).set_weights(weights)
    return [{"epoch": phase.initial_epoch + i + 1, "phase": phase.name,
             **{k: (round(v, 3) if k == "seconds" else v) for k, v in logs.items()}}
            for i, logs in enumerate(history)]
