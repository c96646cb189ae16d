"""`train` and `finetune`, and `--resume` of either.

A run is a plan of phases (`remaining_phases`): train's one phase, or finetune's head
phase (extract's heads, trained in NumPy on the frozen base's cached features) and
fine-tuning; a new run trains them all, `--resume` those with epochs left.
"""

import dataclasses
import json
import os

from smallcnn.data.dataset import run_data_folder
from smallcnn.errors import DataError, UsageError
from smallcnn.model import runs
from smallcnn.train import keras_loop as loop
from smallcnn.train.cut import plan_cut
from smallcnn.train.epochs import Phase, rate_factors
from smallcnn.train.head_phase import extract_heads
from smallcnn.train.session import Session, seed_keras
from smallcnn.train.settings import HEAD_RECIPE, Settings


@runs.overwriting()
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
            session.source.start_warmup()

    session = Session("train", data_dir, settings or Settings(), reporter, command_line,
                      before_data=before_data)
    from smallcnn.model.networks import build_classifier
    from smallcnn.train.callbacks import StopOnSignal

    s, writer, stop = session.settings, session.writer, StopOnSignal()
    base = session.source.build_base()
    base.trainable = not s.freeze
    run_dir = writer.new_run_dir(out, overwrite)
    head = loop.new_head(session.plan)
    model = build_classifier(session.spec, base, head, s.image_size)
    config = writer.config(base.name)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)  # the checkpoint is usable at once
    rows = run_phases(session, stop, remaining_phases("train", s, []), model, base, run_dir)[0]
    head_weights = None
    if s.freeze:
        evaluations = loop.evaluate_head(head, session)
        head_weights = head.get_weights()  # the base is as pretrained: predict needs no TF
    else:
        evaluations = loop.evaluate_model(model, session)
    metrics = writer.finish(run_dir, model, config, rows, evaluations,
                            head_weights=head_weights, interrupted=stop.received)
    return writer.result(run_dir, metrics, rows, interrupted=stop.received)


def remaining_phases(command, settings, rows, from_run=False):
    """The phases a `train` or `finetune` run has left after the epochs of `rows`.

    Train has one phase. Finetune has a head phase ("frozen", trained on the frozen
    base's features: not when it starts from a run, nor once it trained an epoch: it
    takes seconds and its run saved the heads), and fine-tuning, always listed: it
    unfreezes the base, even with no epoch left. A phase's first epoch is set as it
    starts (`run_phases`).
    """
    s, done = settings, [r["phase"] for r in rows]
    if command == "train":
        return [Phase("frozen" if s.freeze else "full", s.epochs - len(rows), s.learning_rate)]
    phases = []
    if not {"frozen", "finetune"} & set(done) and not from_run:
        phases.append(Phase("frozen", s.head_epochs, s.head_learning_rate, features=True))
    return phases + [Phase("finetune", s.epochs - done.count("finetune"), s.learning_rate)]


def run_phases(session, stop, phases, model, base, run_dir, rows=None, cut=None):
    """Trains `phases` in turn after the epochs of `rows`, adding theirs; none starts
    once `stop` was received. Fine-tuning first unfreezes the top of `base`. With `cut`
    (a `cut.CutTraining`), each phase trains the top of the network on its activations.

    Returns `(rows, extra metrics)`: with fine-tuning, the unfrozen layers, the
    parameters that train and the epoch fine-tuning started with.
    """
    from smallcnn.model.networks import HEAD_NAME

    rows = [] if rows is None else rows
    extra = {}
    for phase in phases:
        if stop.received:
            break
        phase = dataclasses.replace(phase, initial_epoch=len(rows))
        if phase.name == "finetune":
            extra = _unfreeze(session, model, base)
            extra["finetune_start_epoch"] = next(
                (r["epoch"] for r in rows if r["phase"] == "finetune"), len(rows) + 1)
            if session.settings.rate_decay != 1:
                phase = dataclasses.replace(phase, factors=rate_factors(
                    base, extra["unfrozen_layers"], session.spec.block_pattern,
                    session.settings.rate_decay))
        if phase.epochs <= 0:
            continue
        if phase.features and not session.plan.placement.multi_worker:
            rows += extract_heads(session, stop, phase, model)
        elif cut is not None:
            val = cut.split("val")
            rows += loop.train_on_views(session, stop, phase, cut.network, *cut.views(), val,
                                        model, run_dir)
        elif phase.name == "frozen":  # (a cluster's: each worker reads its shard alone)
            rows += loop.train_head_frozen(session, stop, phase, model,
                                           model.get_layer(HEAD_NAME), run_dir)
        else:
            rows += loop.train_end_to_end(session, stop, phase, model, run_dir)
    return rows, extra


def _unfreeze(session, model, base):
    """Unfreezes the top of the base (--unfreeze, --unfreeze-blocks) and says which."""
    from smallcnn.model.networks import count_params, unfreeze_top

    unfrozen = unfreeze_top(base, *_unfreeze_args(session))
    trainable = count_params(model.trainable_weights)
    session.reporter.note(
        f"Unfroze {len(unfrozen)} base layer(s): {', '.join(unfrozen)}; "
        f"{trainable:,} parameters now train (head included)."
    )
    return {"unfrozen_layers": unfrozen, "trainable_params": trainable}


def _keep_better(session, model, earlier, evaluate, what, than):
    """`(evaluations, kept)`: the model's (`evaluate(model)`), or those of the `earlier`
    `(weights, val)` put back when the model ended worse on val (`keras_loop.worse_than`)."""
    evaluations = evaluate(model)
    weights, val = earlier
    if not loop.worse_than(evaluations["val"], val):
        return evaluations, False
    session.reporter.note(f"{what} ended worse on val ({_val_text(evaluations['val'])}) "
                          f"than {than} ({_val_text(val)}); kept the model from before it.")
    model.set_weights(weights)
    return evaluate(model), True


def _source_run(from_run, settings):
    """`(run folder, its config, settings)` of the run a finetune starts from."""
    from_run = runs.resolve_run(from_run)
    config = runs.read_config(from_run)
    if settings.base is not None and settings.base != config["base"]:
        raise UsageError(
            f"--base {settings.base} does not match the run {str(from_run)!r}, "
            f"which uses {config['base']}; leave --base out."
        )
    # The base comes with the run's model: nothing is built, so no weights are loaded.
    settings = dataclasses.replace(settings, base=config["base"],
                                   image_size=config["image_size"], weights="none",
                                   freeze=True)
    return from_run, config, settings


@runs.overwriting()
def finetune(data_dir=None, from_run=None, settings=None, out=None, overwrite=False,
             reporter=None, command_line=None, resume=None):
    """Fine-tunes the top layers of the base together with the head, at a low learning rate.

    Starts from a run folder (`from_run`) or, without one, first trains the head with
    extract's heads on the frozen base's cached features. Then the top
    `settings.unfreeze` layers of the base that have weights (BatchNormalization layers
    excepted), or the top `settings.unfreeze_blocks` blocks of it, are made trainable.

    Returns:
        A `RunResult` whose `unfrozen` lists the unfrozen layers.
    """
    if resume is not None:
        return _resume("finetune", resume, data_dir, reporter, command_line)
    settings = settings or Settings()
    source_config = None
    if from_run is not None:
        from_run, source_config, settings = _source_run(from_run, settings)
        data_dir = data_dir or run_data_folder(source_config,
                                               f"smallcnn finetune DATA --from {from_run}")
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
            loaded["base"] = session.source.build_base()
            # Its head phase runs the whole frozen base on the engine: converted meanwhile.
            session.source.start_warmup()
        layers_to_unfreeze(loaded["base"], *_unfreeze_args(session))

    session = Session("finetune", data_dir, settings, reporter, command_line,
                      before_data=prepare_model)
    return _finetune(session, loaded["base"], loaded.get("model"), out, overwrite,
                     from_run, source_config)


def _finetune(session, base, model, out, overwrite, from_run, source_config):
    """Finetune's phases: the head's (without `from_run`), then fine-tuning, whose model
    is kept only if it is no worse on val than the one it started from."""
    from smallcnn.model.networks import HEAD_NAME, build_classifier
    from smallcnn.train.callbacks import StopOnSignal

    s, writer, stop = session.settings, session.writer, StopOnSignal()
    # Read first: an --out of the run it starts from sets that run aside.
    recorded = _recorded_val(from_run) if source_config is not None else None
    run_dir = writer.new_run_dir(out, overwrite)
    if source_config is not None:
        # The weights the run's base came with (this run loads none).
        config = writer.config(base.name, {"weights": source_config["weights"],
                                           "from_run": str(from_run)})
    else:
        base.trainable = False
        head = loop.new_head(session.plan, hidden=s.hidden * HEAD_RECIPE["heads"])  # merged
        model = build_classifier(session.spec, base, head, s.image_size)
        config = writer.config(base.name)
    runs.write_json(run_dir / runs.CONFIG_FILE, config)  # the checkpoint is usable at once
    *head_phases, tuning = remaining_phases("finetune", s, [], from_run=from_run is not None)
    cut, evaluate = _cut_training(session, model, base, [*head_phases, tuning])
    rows = run_phases(session, stop, head_phases, model, base, run_dir, cut=cut)[0]
    if stop.received:  # stopped while training the head: save that, tune nothing
        evaluations = evaluate(model) if cut is not None else \
            loop.evaluate_head(model.get_layer(HEAD_NAME), session)
        metrics = writer.finish(run_dir, model, config, rows, evaluations,
                                interrupted=stop.received)
        return writer.result(run_dir, metrics, rows, interrupted=stop.received)
    # The model fine-tuning starts from, measured as its result will be; a run records its own.
    before = tuple(evaluate(model)["val"]) if rows else None
    if source_config is not None:
        before = recorded
        writer.start_checkpoint(run_dir, model, before, saved=False)
    earlier = (model.get_weights(), before)
    rows, extra = run_phases(session, stop, [tuning], model, base, run_dir, rows, cut)
    evaluations, kept = _keep_better(session, model, earlier, evaluate, "Fine-tuning",
                                     "the model it started from")
    metrics = writer.finish(run_dir, model, config, rows, evaluations,
                            {**extra, "kept_earlier_model": kept, **_cut_metrics(cut)},
                            interrupted=stop.received)
    return writer.result(run_dir, metrics, rows, interrupted=stop.received,
                         unfrozen=extra["unfrozen_layers"],
                         trainable_params=extra["trainable_params"])


def _cut_training(session, model, base, phases):
    """`(cut, evaluate)`: the `cut.CutTraining` the phases train through (None where they
    train as before, said in one line), and how the model is evaluated (on the cut's
    activations, or on images)."""
    training = plan_cut(session, model, base, phases)
    if training is None:
        return None, lambda trained: loop.evaluate_model(trained, session)
    return training, training.evaluate


def _cut_metrics(training):
    """metrics.json's "cut": where the base was cut and what ran below it, if it was."""
    return {} if training is None else {"cut": training.describe()}


def _refuse_existing(session, out, overwrite):
    """An existing --out without --overwrite, refused (in a `before_data` hook: before any
    image is read); by the chief alone in a cluster (the others write no run)."""
    if out is not None and session.plan.placement.is_chief:
        runs.check_out(out, overwrite, session.data_paths())


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


def _resumed_session(command, run_dir, data_dir, reporter, command_line):
    """`(session, config)` of a run to resume: its recorded settings, its data (or
    `data_dir`), refused unless it is a `command` run with the same classes."""
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
    if config["class_names"] != session.dataset.class_names:
        raise DataError(
            f"The data now has classes {session.dataset.class_names}, but the run "
            f"{str(run_dir)!r} was trained on {config['class_names']}."
        )
    return session, config


def _resume(command, run, data_dir, reporter, command_line):
    """Continues an interrupted `train` or `finetune` run in its own folder.

    The run's recorded settings are used; training starts from its saved (best) model
    and epoch count, with the phases it has left; the earlier model comes back when the
    new one is clearly worse (`keras_loop.worse_than`).
    """
    from smallcnn.model.networks import find_base
    from smallcnn.train.callbacks import StopOnSignal

    run_dir = runs.resolve_run(run)
    session, config = _resumed_session(command, run_dir, data_dir, reporter, command_line)
    writer, stop = session.writer, StopOnSignal()
    model = runs.load_model(run_dir)
    base = find_base(model, config["base_layer"])
    session.source.use_base(base)
    rows = runs.read_history(run_dir)
    # A killed run has no metrics.json: the history its checkpoint wrote tells instead.
    previous = _recorded_val(run_dir) or loop.best_val(rows)
    writer.start_checkpoint(run_dir, model, previous, rows)
    earlier = (model.get_weights(), previous)
    session.reporter.note(f"Resuming {run_dir} after {len(rows)} epoch(s).")
    phases = remaining_phases(command, session.settings, rows,
                              from_run=bool(config.get("from_run")))
    cut, evaluate = _cut_training(session, model, base, phases) if command == "finetune" \
        else (None, lambda trained: loop.evaluate_model(trained, session))
    rows, extra = run_phases(session, stop, phases, model, base, run_dir, list(rows), cut)
    evaluations, _ = _keep_better(session, model, earlier, evaluate, "The resumed training",
                                  "the run before it")
    config["resumed"] = config.get("resumed", []) + [session.plan.command_line]
    if data_dir is not None:  # the data moved: record where it is now
        config["data"] = os.path.abspath(session.dataset.data)
    metrics = writer.finish(run_dir, model, config, rows, evaluations,
                            {**extra, **_cut_metrics(cut)},
                            interrupted=stop.received)
    return writer.result(run_dir, metrics, rows, interrupted=stop.received,
                         unfrozen=extra.get("unfrozen_layers", []),
                         trainable_params=extra.get("trainable_params"))


def _a(word):
    """'a train', 'an extract'."""
    return f"{'an' if str(word)[:1].lower() in tuple('aeiou') else 'a'} {word}"
