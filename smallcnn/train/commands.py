"""`train` and `finetune` (through Keras' fit), and `--resume` of either."""

import dataclasses
import json
import os

from smallcnn.data.dataset import run_data_folder
from smallcnn.errors import DataError, UsageError
from smallcnn.model import runs
from smallcnn.train import keras_loop as loop
from smallcnn.train.session import Session, seed_keras
from smallcnn.train.settings import Settings


def train(data_dir=None, settings=None, out=None, overwrite=False, reporter=None,
          command_line=None, resume=None):
    """Trains the classifier on augmented images, with early stopping.

    With `settings.freeze` (the default with pretrained weights) the base stays frozen
    and only the head learns; without it (the default for a random base: `--base small`
    or `--weights none`) every layer trains.

    Args:
        resume: an interrupted train run to continue in its folder; `data_dir`, if
            given, is where its data now is.

    Returns:
        A `RunResult`.
    """
    if resume is not None:
        return _resume("train", resume, data_dir, reporter, command_line)
    if data_dir is None:
        raise UsageError("train needs DATA, or a run to continue: --resume RUN.")

    def before_data(session):
        _refuse_existing(session, out, overwrite)
        if session.settings.freeze:  # the frozen base runs in LiteRT: convert it meanwhile
            session.start_warmup()

    session = Session("train", data_dir, settings or Settings(), reporter, command_line,
                      before_data=before_data)
    from smallcnn.model.networks import build_classifier

    s = session.settings
    base = session.build_base()
    base.trainable = not s.freeze
    run_dir = session.new_run_dir(out, overwrite)
    head = loop.new_head(session)
    model = build_classifier(session.spec, base, head, s.image_size)
    config = session.config(base.name)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)  # the checkpoint is usable at once
    head_weights = None
    if s.freeze:
        rows = loop.train_head_frozen(session, model, head, run_dir, "frozen", s.epochs,
                                      s.learning_rate)
        evaluations = loop.evaluate_head(head, session)
        head_weights = head.get_weights()  # the base is as pretrained: predict needs no TF
    else:
        rows, evaluations = loop.train_end_to_end(session, model, run_dir, "full", s.epochs,
                                                  s.learning_rate)
    metrics = session.finish(run_dir, model, config, rows, evaluations,
                             head_weights=head_weights)
    return session.result(run_dir, metrics, rows)


def finetune(data_dir=None, from_run=None, settings=None, out=None, overwrite=False,
             reporter=None, command_line=None, resume=None):
    """Fine-tunes the top layers of the base together with the head, at a low learning rate.

    Starts from a run folder (`from_run`) or, without one, first trains the head with
    the base frozen, as `train` does. Then the top `settings.unfreeze` layers of the base
    that have weights (BatchNormalization layers excepted), or the top
    `settings.unfreeze_blocks` blocks of it, are made trainable.

    Returns:
        A `RunResult` whose `unfrozen` lists the unfrozen layers.
    """
    if resume is not None:
        return _resume("finetune", resume, data_dir, reporter, command_line)
    settings = settings or Settings()
    source_config = None
    if from_run is not None:
        from_run = runs.resolve_run(from_run)
        source_config = runs.read_config(from_run)
        if settings.base is not None and settings.base != source_config["base"]:
            raise UsageError(
                f"--base {settings.base} does not match the run {str(from_run)!r}, "
                f"which uses {source_config['base']}; leave --base out."
            )
        # The base comes with the run's model: nothing is built, so no weights are loaded.
        settings = dataclasses.replace(
            settings, base=source_config["base"], image_size=source_config["image_size"],
            weights="none", freeze=True,
        )
        data_dir = data_dir or run_data_folder(source_config, f"smallcnn finetune DATA --from {from_run}")
    if data_dir is None:
        raise UsageError("finetune needs DATA, or a run to start from: --from RUN.")
    loaded = {}

    def prepare_model(session):
        """The model and its base, built or loaded, and --unfreeze checked on it: before
        any image is read, and before a run folder exists."""
        from smallcnn.model.networks import find_base, layers_to_unfreeze

        _refuse_existing(session, out, overwrite)
        if source_config is not None:
            if source_config["class_names"] != session.dataset.class_names:
                raise DataError(f"The run {str(from_run)!r} was trained on classes "
                                f"{source_config['class_names']}, but the data has "
                                f"{session.dataset.class_names}.")
            with session.timings("import"):
                seed_keras(session.settings.seed)
            with session.timings("build"):  # the run's model, its base with it
                loaded["model"] = runs.load_model(from_run)
            loaded["base"] = find_base(loaded["model"], source_config["base_layer"])
        else:
            session.start_warmup()  # its head phase runs the frozen base in LiteRT
            loaded["base"] = session.build_base()
        layers_to_unfreeze(loaded["base"], *_unfreeze_args(session))

    session = Session("finetune", data_dir, settings, reporter, command_line,
                      before_data=prepare_model)
    from smallcnn.model.networks import (
        HEAD_NAME,
        build_classifier,
        count_params,
        unfreeze_top,
    )

    s, base, model = session.settings, loaded["base"], loaded.get("model")
    rows = []
    if source_config is not None:
        session.weights_source = source_config["weights"]
        run_dir = session.new_run_dir(out, overwrite)
        config = session.config(base.name, {"from_run": str(from_run)})
    else:
        base.trainable = False
        run_dir = session.new_run_dir(out, overwrite)
        head = loop.new_head(session)
        model = build_classifier(session.spec, base, head, s.image_size)
        config = session.config(base.name)
        runs.write_json(run_dir / runs.CONFIG_FILE, config)
        rows = loop.train_head_frozen(session, model, head, run_dir, "frozen", s.head_epochs,
                                      s.head_learning_rate)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)
    if session.interrupted:  # stopped while training the head: save that, tune nothing
        evaluations = loop.evaluate_head(model.get_layer(HEAD_NAME), session)
        metrics = session.finish(run_dir, model, config, rows, evaluations)
        return session.result(run_dir, metrics, rows)

    unfrozen = unfreeze_top(base, *_unfreeze_args(session))
    trainable = count_params(model.trainable_weights)
    session.reporter.note(
        f"Unfroze {len(unfrozen)} base layer(s): {', '.join(unfrozen)}; "
        f"{trainable:,} parameters now train (head included)."
    )
    before_weights = model.get_weights()
    # The head phase restored its epoch of lowest val_loss; a run records its own.
    before = loop.best_val(rows)
    if source_config is not None:
        before = _recorded_val(from_run)
        loop.start_checkpoint(session, run_dir, model, before, saved=False)
    tuned, evaluations = loop.train_end_to_end(session, model, run_dir, "finetune", s.epochs,
                                               s.learning_rate, initial_epoch=len(rows))
    rows += tuned
    kept_earlier = loop.worse_than(evaluations["val"], before)
    if kept_earlier:
        session.reporter.note(f"Fine-tuning ended worse on val ({_val_text(evaluations['val'])}) "
                              f"than the model it started from ({_val_text(before)}); "
                              "kept the model from before it.")
        model.set_weights(before_weights)
        evaluations = loop.evaluate_model(model, session)
    metrics = session.finish(run_dir, model, config, rows, evaluations,
                             {"finetune_start_epoch": len(rows) - len(tuned) + 1,
                              "unfrozen_layers": unfrozen, "trainable_params": trainable,
                              "kept_earlier_model": kept_earlier})
    return session.result(run_dir, metrics, rows, unfrozen=unfrozen, trainable_params=trainable)


def _refuse_existing(session, out, overwrite):
    """An existing --out without --overwrite, refused (in a `before_data` hook: before any
    image is read); by the chief alone in a cluster (the others write no run)."""
    if out is not None and session.placement.is_chief:
        runs.check_out(out, overwrite)


def _unfreeze_args(session):
    """What to unfreeze: --unfreeze layers, or --unfreeze-blocks blocks of the base."""
    s = session.settings
    return s.unfreeze, s.unfreeze_blocks, session.spec.block_pattern


def _recorded_val(run_dir):
    """The (val_loss, val_accuracy) a run folder's metrics.json records, or None."""
    try:
        metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
        return metrics["val_loss"], metrics.get("val_accuracy")
    except (OSError, ValueError, KeyError):
        return None


def _val_text(val):
    loss, accuracy = val
    return f"val_loss {loss:.4f}" + (f", val_accuracy {accuracy:.2%}" if accuracy is not None
                                     else "")


def _resume(command, run, data_dir, reporter, command_line):
    """Continues an interrupted `train` or `finetune` run in its own folder.

    The run's recorded settings are used; training starts from its saved (best) model
    and epoch count; the earlier model comes back when the new one is clearly worse
    (`keras_loop.worse_than`).
    """
    run_dir = runs.resolve_run(run)
    config = runs.read_config(run_dir)
    if config.get("command") != command:
        raise UsageError(
            f"{str(run_dir)!r} is {_a(config.get('command'))} run; resume it with "
            f"smallcnn {config.get('command')} --resume {run_dir}."
        )
    known = {f.name for f in dataclasses.fields(Settings)}
    recorded = {k: v for k, v in config["settings"].items() if k in known}
    # The base comes with the saved model; "none" keeps the engine from reusing a
    # conversion of the original weights (fine-tuning changed them).
    settings = dataclasses.replace(Settings(**recorded), weights="none")
    data_dir = data_dir or run_data_folder(config, f"smallcnn {command} DATA --resume {run_dir}")
    session = Session(command, data_dir, settings, reporter, command_line)
    session.weights_source = config["weights"]
    if config["class_names"] != session.dataset.class_names:
        raise DataError(
            f"The data now has classes {session.dataset.class_names}, but the run "
            f"{str(run_dir)!r} was trained on {config['class_names']}."
        )
    from smallcnn.model.networks import (
        HEAD_NAME,
        count_params,
        feature_extractor,
        find_base,
        unfreeze_top,
    )

    s = session.settings
    model = runs.load_model(run_dir)
    base = find_base(model, config["base_layer"])
    head = model.get_layer(HEAD_NAME)
    session.base = base
    session.extractor = feature_extractor(session.spec, base, s.image_size)

    rows = runs.read_history(run_dir)
    # A killed run has no metrics.json: the history its checkpoint wrote tells instead.
    previous = _recorded_val(run_dir) or loop.best_val(rows)
    loop.start_checkpoint(session, run_dir, model, previous, rows)
    previous_weights = model.get_weights()
    done = len(rows)
    phases = [r["phase"] for r in rows]
    session.reporter.note(f"Resuming {run_dir} after {done} epoch(s).")

    extra = {}
    if command == "train" and s.freeze:
        if s.epochs > done:
            rows += loop.train_head_frozen(session, model, head, run_dir, "frozen",
                                           s.epochs - done, s.learning_rate, initial_epoch=done)
    elif command == "train":
        if s.epochs > done:
            rows += loop.train_end_to_end(session, model, run_dir, "full", s.epochs - done,
                                          s.learning_rate, initial_epoch=done)[0]
    else:
        head_done = phases.count("frozen")
        if "finetune" not in phases and head_done < s.head_epochs and not config.get("from_run"):
            rows += loop.train_head_frozen(session, model, head, run_dir, "frozen",
                                           s.head_epochs - head_done, s.head_learning_rate,
                                           initial_epoch=done)
        if not session.interrupted:
            unfrozen = unfreeze_top(base, *_unfreeze_args(session))
            extra = {"unfrozen_layers": unfrozen,
                     "trainable_params": count_params(model.trainable_weights)}
            left = s.epochs - (len(rows) - [r["phase"] for r in rows].count("frozen"))
            start = len(rows)
            if left > 0:
                rows += loop.train_end_to_end(session, model, run_dir, "finetune", left,
                                              s.learning_rate, initial_epoch=start)[0]
            extra["finetune_start_epoch"] = next(
                (r["epoch"] for r in rows if r["phase"] == "finetune"), start + 1)

    evaluations = loop.evaluate_model(model, session)
    if loop.worse_than(evaluations["val"], previous):
        session.reporter.note(f"The resumed training ended worse on val "
                              f"({_val_text(evaluations['val'])}) than the run before it "
                              f"({_val_text(previous)}); kept the model from before it.")
        model.set_weights(previous_weights)  # the run before the interruption was better
        evaluations = loop.evaluate_model(model, session)
    config["resumed"] = config.get("resumed", []) + [session.command_line]
    if data_dir is not None:  # the data moved: record where it is now
        config["data"] = os.path.abspath(session.dataset.data)
    metrics = session.finish(run_dir, model, config, rows, evaluations, extra)
    return session.result(run_dir, metrics, rows, unfrozen=extra.get("unfrozen_layers", []),
                          trainable_params=extra.get("trainable_params"))


def _a(word):
    """'a train', 'an extract'."""
    return f"{'an' if str(word)[:1].lower() in tuple('aeiou') else 'a'} {word}"
