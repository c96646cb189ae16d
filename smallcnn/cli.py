"""The `smallcnn` command: parse, call one library function, print.

Library errors (`SmallcnnError`) become one line on stderr and the exit code of
their class; a traceback is shown only with --debug.
"""

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from smallcnn import __version__
from smallcnn.errors import SmallcnnError
from smallcnn.quiet import import_tensorflow

app = typer.Typer(
    name="smallcnn",
    help="Accurate image classifiers from a few hundred labelled images, by transfer learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_state = {"debug": False}


def _library_call(name):
    """The library function behind a command, imported only once TensorFlow is quiet."""
    if name == "check":
        from smallcnn.check import check_dataset
        from smallcnn.console import RichReporter
        from smallcnn.data import find_dataset

        def check(data, val_split, seed):
            return check_dataset(find_dataset(data, val_split, seed), RichReporter())

        return check
    if name in ("evaluate", "report", "export"):
        import importlib

        from smallcnn.console import RichReporter, stderr, stdout

        module, function = {"evaluate": ("evaluate", "evaluate"), "report": ("report", "build_report"),
                            "export": ("export", "export")}[name]
        function = getattr(importlib.import_module(f"smallcnn.{module}"), function)

        def with_reporter(*args, as_json=False, **kwargs):  # --json: stdout holds the JSON alone
            return function(*args, reporter=RichReporter(stderr if as_json else stdout), **kwargs)

        return with_reporter
    if name.startswith("visualize."):
        from smallcnn import visualize

        return getattr(visualize, name.split(".", 1)[1])
    if name == "predict":
        from smallcnn.predict import load

        def predict(paths, model=None, **kwargs):
            return load(model).predict_paths(paths, **kwargs)

        return predict
    from smallcnn import training
    from smallcnn.console import RichReporter

    function = getattr(training, name)
    return lambda *args, **kwargs: function(*args, reporter=RichReporter(), **kwargs)


def _run(command, *args, tensorflow=True, **kwargs):
    """Runs one library call, turning errors into a message and an exit code.

    `tensorflow=False` skips importing TensorFlow (2-3 s) for calls that do not need it.
    """
    from smallcnn.console import stderr

    try:
        if tensorflow:
            import_tensorflow()
        return _library_call(command)(*args, **kwargs)
    except SmallcnnError as error:
        if _state["debug"]:
            raise
        stderr.print(f"[bold red]error:[/bold red] {error}", soft_wrap=True)
        raise typer.Exit(error.exit_code)
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/bold red]")
        raise typer.Exit(130)
    except Exception as error:
        if _state["debug"]:
            raise
        stderr.print(
            f"[bold red]internal error:[/bold red] {type(error).__name__}: {error} "
            "(run again with --debug for the traceback)",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _version(value: bool):
    if value:
        typer.echo(f"smallcnn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
):
    """Turn a folder of images per class into an image classifier.

    Exit codes: 0 success, 1 internal error, 2 bad usage, 3 bad data, 4 bad model,
    5 weights cannot be had, 130 interrupted.
    """
    _state["debug"] = debug


# Options shared by the training commands.
Data = Annotated[
    Path,
    typer.Argument(
        help="A folder of class folders, or of train/ and val/ (or validation/) folders "
        "[and test/], each holding one folder per class.",
        show_default=False,
    ),
]
Base = Annotated[Optional[str], typer.Option(help="Conv base: mobilenet_v2, mobilenet, vgg16, vgg19, resnet50, efficientnet_b0, inception_v3, xception or small.  [default: mobilenet_v2]", show_default=False)]
Weights = Annotated[Optional[str], typer.Option(help="imagenet, none, or a .weights.h5 file.  [default: imagenet; none for small]", show_default=False)]
ImageSize = Annotated[Optional[int], typer.Option(help="Image side in pixels.  [default: the base's, e.g. 224]", show_default=False)]
BatchSize = Annotated[int, typer.Option(help="Images per batch.")]
Epochs = Annotated[Optional[int], typer.Option(help="Most epochs to train (early stopping may end sooner).", show_default=False)]
LearningRate = Annotated[Optional[float], typer.Option(help="Learning rate.", show_default=False)]
Optimizer = Annotated[str, typer.Option(help="adam, sgd, rmsprop or adagrad.")]
Momentum = Annotated[float, typer.Option(help="Momentum for sgd.")]
Nesterov = Annotated[bool, typer.Option(help="Nesterov momentum for sgd.")]
LrSchedule = Annotated[str, typer.Option(help="constant, plateau, exponential or cosine.")]
Dropout = Annotated[float, typer.Option(help="Dropout before the last dense layer.")]
Hidden = Annotated[int, typer.Option(help="Units of a hidden dense layer in the head (0: none).")]
Patience = Annotated[Optional[int], typer.Option(help="Epochs without a better val_loss before stopping.", show_default=False)]
Seed = Annotated[int, typer.Option(help="Random seed (split, shuffling, augmentation, init).")]
ValSplit = Annotated[float, typer.Option(help="Fraction of each class held out for validation when DATA has no validation folder.")]
Out = Annotated[Optional[Path], typer.Option(help="Run folder to write.  [default: runs/<command>-<time>]", show_default=False)]
Overwrite = Annotated[bool, typer.Option(help="Replace a run already in --out.")]
Augment = Annotated[Optional[str], typer.Option(help="Augmentation preset: none, light, standard or strong.  [default: light]", show_default=False)]
Rotation = Annotated[Optional[float], typer.Option(help="Random rotation range in degrees.", show_default=False)]
Shift = Annotated[Optional[float], typer.Option(help="Random shift, fraction of width and height.", show_default=False)]
Shear = Annotated[Optional[float], typer.Option(help="Random shear factor.", show_default=False)]
Zoom = Annotated[Optional[float], typer.Option(help="Random zoom range: scale in [1-zoom, 1+zoom].", show_default=False)]
Flip = Annotated[Optional[str], typer.Option(help="Random flips: horizontal, vertical, both or none.", show_default=False)]
Brightness = Annotated[Optional[float], typer.Option(help="Random brightness change, fraction of the range.", show_default=False)]
Contrast = Annotated[Optional[float], typer.Option(help="Random contrast change factor.", show_default=False)]
Engine = Annotated[str, typer.Option(help="Engine for the frozen base's forward pass: auto (LiteRT for pretrained weights), litert or tf.")]
ClassWeight = Annotated[str, typer.Option(help="balanced: weight each class by the inverse of its frequency; none.")]
TensorBoard = Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard logs to RUN/tensorboard/.")]
Resume = Annotated[Optional[Path], typer.Option(help="Continue an interrupted run in its folder, with its settings.", show_default=False)]
Unfreeze = Annotated[int, typer.Option(help="Number of top base layers with weights to unfreeze (BatchNorm excluded).")]


def _settings(**values):
    from smallcnn.training import Settings

    return Settings(**values)


def _report(result):
    from smallcnn.console import stderr, stdout, summary_table

    stdout.print(f"[bold]{result.command}[/bold]: {result.run_dir}")
    stdout.print(summary_table(result))
    stdout.print(f"Model saved in {result.run_dir}. Predict with: smallcnn predict IMAGE --model {result.run_dir}")
    if result.interrupted:
        then = (f"Continue with: smallcnn {result.command} --resume {result.run_dir}"
                if result.command != "extract" else
                "The features are cached: the same command again takes seconds.")
        stderr.print(
            f"[bold yellow]Interrupted ({result.interrupted}):[/bold yellow] the best model so far "
            f"is saved in {result.run_dir}. {then}", soft_wrap=True,
        )
        raise typer.Exit(130)


@app.command()
def extract(
    data: Data,
    base: Base = None,
    weights: Weights = None,
    image_size: ImageSize = None,
    batch_size: BatchSize = 32,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    optimizer: Optimizer = "adam",
    momentum: Momentum = 0.9,
    nesterov: Nesterov = False,
    lr_schedule: LrSchedule = "constant",
    dropout: Dropout = 0.5,
    hidden: Hidden = 0,
    patience: Patience = None,
    seed: Seed = 42,
    val_split: ValSplit = 0.2,
    engine: Engine = "auto",
    class_weight: ClassWeight = "none",
    views: Annotated[int, typer.Option("--views", help="Also train on the features of this many augmented copies of each training image (computed once, cached; --augment sets the augmentation, default light).")] = 0,
    heads: Annotated[Optional[int], typer.Option("--heads", help="Train this many heads from different seeds (seed, seed+1, ...), each early-stopped on its own, and save them merged into one head (their mean logits): less dependent on a lucky seed, no slower to predict.  [default: 5]", show_default=False)] = None,
    augment: Augment = None,
    tensorboard: TensorBoard = False,
    out: Out = None,
    overwrite: Overwrite = False,
):
    """Run the pretrained base once over the images, cache the features, train a dense head.

    Fast, even on a CPU: a second run over the same files reuses the cached features.
    """
    settings = _settings(
        base=base, weights=weights, image_size=image_size, batch_size=batch_size, epochs=epochs,
        learning_rate=learning_rate, optimizer=optimizer, momentum=momentum, nesterov=nesterov,
        lr_schedule=lr_schedule, dropout=dropout, hidden=hidden, patience=patience, seed=seed,
        val_split=val_split, engine=engine, class_weight=class_weight, tensorboard=tensorboard,
        views=views, heads=heads, augment=augment,
    )
    # TensorFlow is imported only if features must be computed (not with a warm cache).
    result = _run("extract", data, settings, out=out, overwrite=overwrite, tensorflow=False)
    _report(result)


DataOrResume = Annotated[
    Optional[Path],
    typer.Argument(help="As for extract (not needed with --resume).", show_default=False),
]


@app.command()
def train(
    data: DataOrResume = None,
    freeze: Annotated[Optional[bool], typer.Option("--freeze/--no-freeze", help="Keep the base frozen and train the head only.  [default: --freeze for pretrained bases, --no-freeze for small or --weights none]", show_default=False)] = None,
    base: Base = None,
    weights: Weights = None,
    image_size: ImageSize = None,
    batch_size: BatchSize = 32,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    optimizer: Optimizer = "adam",
    momentum: Momentum = 0.9,
    nesterov: Nesterov = False,
    lr_schedule: LrSchedule = "constant",
    dropout: Dropout = 0.5,
    hidden: Hidden = 0,
    patience: Patience = None,
    seed: Seed = 42,
    val_split: ValSplit = 0.2,
    augment: Augment = None,
    rotation: Rotation = None,
    shift: Shift = None,
    shear: Shear = None,
    zoom: Zoom = None,
    flip: Flip = None,
    brightness: Brightness = None,
    contrast: Contrast = None,
    engine: Engine = "auto",
    class_weight: ClassWeight = "none",
    tensorboard: TensorBoard = False,
    out: Out = None,
    overwrite: Overwrite = False,
    resume: Resume = None,
):
    """Train on augmented images, the base frozen (--freeze), with early stopping.

    Ctrl-C stops at the end of the current step and saves the best model so far;
    --resume RUN continues.
    """
    settings = _settings(
        freeze=freeze, base=base, weights=weights, image_size=image_size, batch_size=batch_size,
        epochs=epochs, learning_rate=learning_rate, optimizer=optimizer, momentum=momentum,
        nesterov=nesterov, lr_schedule=lr_schedule, dropout=dropout, hidden=hidden,
        patience=patience, seed=seed, val_split=val_split, augment=augment, rotation=rotation,
        shift=shift, shear=shear, zoom=zoom, flip=flip, brightness=brightness, contrast=contrast,
        engine=engine, class_weight=class_weight, tensorboard=tensorboard,
    )
    result = _run("train", data, settings, out=out, overwrite=overwrite, resume=resume)
    _report(result)


@app.command()
def finetune(
    data: Annotated[Optional[Path], typer.Argument(help="DATA as for train, or a RUN folder to start from (then DATA is the run's).", show_default=False)] = None,
    from_run: Annotated[Optional[Path], typer.Option("--from", help="Start from this run folder instead of training a head first.", show_default=False)] = None,
    unfreeze: Unfreeze = 4,
    head_epochs: Annotated[Optional[int], typer.Option(help="Epochs for the head with the base frozen (without --from).  [default: 30]", show_default=False)] = None,
    head_learning_rate: Annotated[Optional[float], typer.Option(help="Learning rate for that head phase.  [default: 1e-2]", show_default=False)] = None,
    base: Base = None,
    weights: Weights = None,
    image_size: ImageSize = None,
    batch_size: BatchSize = 32,
    epochs: Annotated[Optional[int], typer.Option(help="Most fine-tuning epochs.  [default: 15]", show_default=False)] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Fine-tuning learning rate.  [default: 1e-5]", show_default=False)] = None,
    optimizer: Optimizer = "adam",
    momentum: Momentum = 0.9,
    nesterov: Nesterov = False,
    lr_schedule: LrSchedule = "constant",
    dropout: Dropout = 0.5,
    hidden: Hidden = 0,
    patience: Patience = None,
    seed: Seed = 42,
    val_split: ValSplit = 0.2,
    augment: Augment = None,
    rotation: Rotation = None,
    shift: Shift = None,
    shear: Shear = None,
    zoom: Zoom = None,
    flip: Flip = None,
    brightness: Brightness = None,
    contrast: Contrast = None,
    engine: Engine = "auto",
    class_weight: ClassWeight = "none",
    tensorboard: TensorBoard = False,
    out: Out = None,
    overwrite: Overwrite = False,
    resume: Resume = None,
):
    """Unfreeze the top layers of the base and train them with the head at a low learning rate."""
    from smallcnn.runs import CONFIG_FILE

    if data is not None and from_run is None and (data / CONFIG_FILE).is_file():
        data, from_run = None, data  # `smallcnn finetune RUN`
    settings = _settings(
        unfreeze=unfreeze, head_epochs=head_epochs, head_learning_rate=head_learning_rate,
        base=base, weights=weights, image_size=image_size, batch_size=batch_size, epochs=epochs,
        learning_rate=learning_rate, optimizer=optimizer, momentum=momentum, nesterov=nesterov,
        lr_schedule=lr_schedule, dropout=dropout, hidden=hidden, patience=patience, seed=seed,
        val_split=val_split, augment=augment, rotation=rotation, shift=shift, shear=shear,
        zoom=zoom, flip=flip, brightness=brightness, contrast=contrast, engine=engine,
        class_weight=class_weight, tensorboard=tensorboard,
    )
    result = _run("finetune", data, from_run=from_run, settings=settings, out=out,
                  overwrite=overwrite, resume=resume)
    _report(result)


@app.command()
def check(
    data: Data,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document on stdout.")] = False,
    val_split: ValSplit = 0.2,
    seed: Seed = 42,
):
    """Check a data set: counts, sizes, unreadable files, duplicates and leakage across splits.

    Exit status 0 when the data can be trained on; 3, with the reason, when it cannot.
    """
    from smallcnn.console import check_tables, stderr, stdout

    report = _run("check", data, val_split, seed)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        stdout.print(check_tables(report))
    if not report.trainable:
        stderr.print(f"[bold red]error:[/bold red] {report.reason}", soft_wrap=True)
        raise typer.Exit(3)


@app.command()
def predict(
    images: Annotated[List[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", help="Run folder (or its model.keras), or an exported .tflite, .onnx, .keras file or SavedModel folder.  [default: the most recent run in ./runs]", show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    batch_size: BatchSize = 32,
):
    """Classify images with a trained model: top-k classes and probabilities."""
    from smallcnn.console import predictions_table, stderr, stdout

    # TensorFlow is imported only if the model needs it: not for .tflite or .onnx files,
    # nor for a run whose LiteRT conversion is cached.
    predictions, failures = _run("predict", [str(p) for p in images], model=model,
                                 top_k=top_k, batch_size=batch_size, tensorflow=False)
    if as_json:
        sys.stdout.write(json.dumps([p.to_dict() for p in predictions], indent=2) + "\n")
    elif predictions:
        stdout.print(predictions_table(predictions))
    for failure in failures:
        stderr.print(f"[bold red]error:[/bold red] {failure}", soft_wrap=True)
    if failures:
        raise typer.Exit(failures[0].exit_code)


RunArgument = Annotated[Optional[Path], typer.Argument(help="Run folder.  [default: the most recent run in ./runs]", show_default=False)]
ModelOption = Annotated[Optional[Path], typer.Option("--model", help="Run folder.  [default: the most recent run in ./runs]", show_default=False)]
VisualizeOut = Annotated[Optional[Path], typer.Option("--out", help="Folder for the pictures.  [default: RUN/visualize]", show_default=False)]


@app.command()
def evaluate(
    run: RunArgument = None,
    data: Annotated[Optional[Path], typer.Argument(help="A data folder with the model's classes.  [default: the run's]", show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help="val, test or train.")] = "val",
    top: Annotated[int, typer.Option("--top", help="How many of the most confidently wrong images to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
):
    """Accuracy, per-class precision/recall/F1, the confusion matrix (and confusion.png), the worst mistakes."""
    from smallcnn.console import evaluation_tables, stdout

    result = _run("evaluate", run, data, split=split, top_wrong=top, as_json=as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    stdout.print(evaluation_tables(result))
    stdout.print(f"Confusion matrix picture: {result.confusion_png}")


@app.command()
def report(
    run: RunArgument = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="The run's data folder, if it has moved.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write.  [default: RUN/report.html]", show_default=False)] = None,
):
    """One self-contained HTML page: data, curves, per-class metrics, confusion matrix, mistakes with Grad-CAM."""
    from smallcnn.console import stdout

    path = _run("report", run, data=data, out=out)
    stdout.print(f"Report written: {path}")


visualize_app = typer.Typer(help="Look inside a trained model: Grad-CAM, activations, filters.",
                            no_args_is_help=True)
app.add_typer(visualize_app, name="visualize")


def _pictures(pictures):
    from smallcnn.console import stdout

    for picture in pictures:
        extra = f"  {picture.label} {picture.probability:.1%}" if picture.label else ""
        stdout.print(f"{picture.path}{extra}", soft_wrap=True)


@visualize_app.command("gradcam")
def visualize_gradcam(
    images: Annotated[List[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    model: ModelOption = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class to explain.  [default: the predicted one]", show_default=False)] = None,
    out: VisualizeOut = None,
):
    """Grad-CAM heatmap over each image: which part made the decision (from the base's last conv layer)."""
    _pictures(_run("visualize.gradcam", [str(p) for p in images], model=model,
                   class_name=class_name, out=out))


@visualize_app.command("activations")
def visualize_activations(
    image: Annotated[Path, typer.Argument(help="An image file.", show_default=False)],
    model: ModelOption = None,
    layer: Annotated[Optional[List[str]], typer.Option("--layer", help="Base layer to show (repeatable).  [default: 4 conv layers from first to last]", show_default=False)] = None,
    channels: Annotated[int, typer.Option("--channels", help="Feature maps to show per layer.")] = 32,
    out: VisualizeOut = None,
):
    """A grid of the feature maps that chosen layers of the base compute for one image."""
    _pictures(_run("visualize.activations", str(image), model=model, layers=layer,
                   channels=channels, out=out))


@visualize_app.command("filters")
def visualize_filters(
    model: ModelOption = None,
    layer: Annotated[Optional[str], typer.Option("--layer", help="A conv layer of the base.", show_default=False)] = None,
    count: Annotated[int, typer.Option("--filters", help="How many filters (the first N).")] = 16,
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps.")] = 30,
    out: VisualizeOut = None,
):
    """The input patterns that maximise each filter of a conv layer (gradient ascent on the input)."""
    _pictures(_run("visualize.filters", model=model, layer=layer, count=count, steps=steps,
                   out=out))


@app.command("export")
def export_command(
    run: Annotated[Optional[Path], typer.Argument(help="Run folder.  [default: the most recent run in ./runs]", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help="keras, savedmodel, tflite or onnx.")] = "tflite",
    quantize: Annotated[str, typer.Option("--quantize", help="none, float16 or int8 (tflite and onnx); int8 calibrates on training images.")] = "none",
    out: Annotated[Optional[Path], typer.Option("--out", help="File (or folder) to write.  [default: RUN/export/model[-QUANTIZE].EXT]", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="The run's data folder, if it has moved (the export is checked on its validation images).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")] = False,
):
    """Export a trained model (raw RGB pixels in, probabilities out), checked against the run's model.

    The exported file is run on the validation images; the export fails, writing
    nothing, when fewer than 99% (97% for int8) of its top-1 answers match the run's model.
    """
    from smallcnn.console import export_table, stdout

    result = _run("export", run, format=format, quantize=quantize, out=out,
                  data=data, overwrite=overwrite, as_json=as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    stdout.print(export_table(result))
    stdout.print(f"Exported {result.path} (labels: {result.labels_path}, input contract: "
                 f"{result.contract_path}). Predict with: smallcnn predict IMAGE --model {result.path}",
                 soft_wrap=True)


def main():
    app(prog_name="smallcnn")


if __name__ == "__main__":
    main()
