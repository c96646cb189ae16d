"""The commands that check data, and use, inspect, export or cache what was trained."""

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from smallcnn.cli import _run, app
from smallcnn.cli.options import (
    AsJson,
    Data,
    Images,
    LabelColumn,
    Labels,
    ModelArgument,
    ModelOption,
    PathColumn,
    RunArgument,
    SplitColumn,
    Strategy,
    Tta,
    TtaViews,
    settings_command,
    shown_default,
    tta_of,
)
from smallcnn.data.table import TableOptions
from smallcnn.inference.classifier import BATCH_SIZE, TOP_K
from smallcnn.inference.evaluate import SPLITS, TOP_WRONG
from smallcnn.inference.export import DEFAULT_FORMAT, DEFAULT_QUANTIZE, QUANTIZATIONS, SUPPORTED
from smallcnn.labels.label_issues import FOLDS
from smallcnn.runtime.formats import FORMATS
from smallcnn.serve.labelling import LabelSettings
from smallcnn.serve.settings import ServeSettings
from smallcnn.visualize.report import REPORT_FILE

SERVE = ServeSettings()
LABEL = LabelSettings()
# What check takes of the training settings: the split, and the base of --label-issues.
CHECK_SETTINGS = ("val_split", "seed", "labels", "images", "path_column", "label_column",
                  "split_column", "base")
_BY_FORMAT = ", ".join(f"{format} {'/'.join(kinds)}" for format, kinds in SUPPORTED.items())


def check(
    settings,
    data: Data,
    as_json: AsJson = False,
    label_issues: Annotated[bool, typer.Option("--label-issues", help="Also find likely label errors and outliers among train and val, from out-of-fold predictions of extract's head on the base's features (computed and cached as extract does; --base chooses the base).")] = False,
    folds: Annotated[int, typer.Option(help="Folds of the out-of-fold predictions (--label-issues).")] = FOLDS,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="With --label-issues: write a page showing each flagged image beside its nearest images of the given and the suggested class.", show_default=False)] = None,
    fix: Annotated[Optional[Path], typer.Option(help="With --label-issues and --accept: write a corrected copy of the data set (or table) into this new folder; DATA is never changed.", show_default=False)] = None,
    accept: Annotated[Optional[Path], typer.Option(help="The flagged images to relabel with their suggested class in the --fix copy: a file with one path per line.", show_default=False)] = None,
):
    """Check a data set: counts, sizes, unreadable files, duplicates and leakage across splits.

    With --label-issues, also likely label errors and outliers. Exit status 0 when the
    data can be trained on; 3, with the reason, when it cannot.
    """
    from smallcnn.cli.console import check_tables, label_issue_tables, stderr, stdout

    table = TableOptions.of(settings)
    if (html_out or fix or accept) and not label_issues:
        stderr.print("[bold red]error:[/bold red] --html, --fix and --accept go with "
                     "--label-issues.", soft_wrap=True)
        raise typer.Exit(2)
    report = _run("check", data, settings.val_split, settings.seed, table, tensorflow=False)
    document = report.to_dict()
    if not as_json:
        stdout.print(check_tables(report))
    if not report.trainable:
        if as_json:
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
        stderr.print(f"[bold red]error:[/bold red] {report.reason}", soft_wrap=True)
        raise typer.Exit(3)
    if label_issues:
        found, dataset, written = _run("check_labels", data, settings, table, folds,
                                       html_out=html_out, fix=fix, accept=accept,
                                       tensorflow=False)
        document.update(found.to_dict())
        if not as_json:
            stdout.print(label_issue_tables(found, dataset.root))
        for path in written:
            stderr.print(f"written: {path}", soft_wrap=True, highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")


settings_command(app, "check", check, CHECK_SETTINGS)


@app.command()
def predict(
    images: Annotated[Optional[List[Path]], typer.Argument(help="Image files or folders.", show_default=False)] = None,
    model: ModelOption = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = TOP_K,
    as_json: AsJson = False,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="Write one JSON line per image to this file as it goes (any number of images, in the memory of a few hundred); a rerun predicts only the images it has no line for. A file of anything else, a damaged line, another model's lines, the --list file or an image are refused and left as they are.", show_default=False)] = None,
    listing: Annotated[Optional[Path], typer.Option("--list", help="Also predict the images listed in this file, one path per line; an image named twice (a.jpg, ./a.jpg) is predicted once.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = BATCH_SIZE,
    tta: Tta = False,
    tta_views: TtaViews = None,
):
    """Classify images with a trained model: top-k classes and probabilities."""
    from smallcnn.cli.console import predictions_table, stderr, stdout

    images = [str(p) for p in images or []]
    if jsonl is not None:
        from smallcnn.data.images import UnreadableImage

        counts, engine = _run("predict_to_file", images, jsonl, model=model, listing=listing,
                              top_k=top_k, batch_size=batch_size, tta=tta_of(tta, tta_views),
                              tensorflow=False)
        ran = (f"engine: {engine}" if counts["written"] else
               "no image could be read" if counts["unreadable"] else "nothing left to predict")
        stderr.print(f"{jsonl}: {counts['written']} predicted, {counts['unreadable']} unreadable "
                     f"(error lines), {counts['skipped']} already there; {ran}",
                     soft_wrap=True, highlight=False)
        if counts["unreadable"]:  # as predict without --jsonl exits; earlier runs' lines aside
            stderr.print(f"[bold red]error:[/bold red] {counts['unreadable']} image(s) of this "
                         f"run could not be read: their error lines are in {jsonl}.",
                         soft_wrap=True)
            raise typer.Exit(UnreadableImage.exit_code)
        return
    # TensorFlow is imported only if the model needs it: not for .tflite or .onnx files,
    # nor for a run whose LiteRT conversion is cached.
    predictions, failures = _run("predict", images, model=model, listing=listing,
                                 top_k=top_k, batch_size=batch_size, tta=tta_of(tta, tta_views),
                                 tensorflow=False)
    if as_json:
        sys.stdout.write(json.dumps([p.to_dict() for p in predictions], indent=2) + "\n")
    elif predictions:
        stdout.print(predictions_table(predictions))
    if predictions:
        stderr.print(f"engine: {predictions[0].engine}", soft_wrap=True, highlight=False)
    for failure in failures:
        stderr.print(f"[bold red]error:[/bold red] {failure}", soft_wrap=True)
    if failures:
        raise typer.Exit(failures[0].exit_code)


@app.command()
def evaluate(
    run: RunArgument = None,
    data: Annotated[Optional[Path], typer.Argument(help="A data folder with the model's classes." + shown_default("the run's"), show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help=f"One of: {', '.join(SPLITS)}.")] = SPLITS[0],
    top: Annotated[int, typer.Option("--top", help="How many of the most confidently wrong images to list.")] = TOP_WRONG,
    as_json: AsJson = False,
    labels: Labels = None,
    images: Images = None,
    path_column: PathColumn = None,
    label_column: LabelColumn = None,
    split_column: SplitColumn = None,
    tta: Tta = False,
    tta_views: TtaViews = None,
):
    """Accuracy, per-class precision/recall/F1, the confusion matrix (and confusion.png), the worst mistakes."""
    from smallcnn.cli.console import evaluation_tables, stdout

    table = TableOptions(labels, images, path_column, label_column, split_column)
    result = _run("evaluate", run, data, split=split, top_wrong=top, as_json=as_json,
                  table=table, tta=tta_of(tta, tta_views))
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    stdout.print(evaluation_tables(result))
    stdout.print(f"Confusion matrix picture: {result.confusion_png}")


@app.command()
def report(
    run: RunArgument = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="The run's data folder, if it has moved.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write." + shown_default(f"RUN/{REPORT_FILE}"), show_default=False)] = None,
):
    """One self-contained HTML page: data, curves, per-class metrics, confusion matrix, mistakes with Grad-CAM."""
    from smallcnn.cli.console import stdout

    path = _run("report", run, data=data, out=out)
    stdout.print(f"Report written: {path}")


@app.command()
def serve(
    model: ModelArgument = None,
    host: Annotated[str, typer.Option(help="Address to listen on; another than this machine's own is served without authentication unless --token is given.")] = SERVE.host,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = SERVE.port,
    token: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Bearer TOKEN' on the API (not on the page or /health); printable ASCII, no spaces.", show_default=False)] = None,
    cors: Annotated[Optional[str], typer.Option("--cors", help="An origin (https://example.org) whose pages may call the API; none by default.", show_default=False)] = None,
    max_batch: Annotated[int, typer.Option(help="Images the engine runs at once, gathered from concurrent requests.")] = SERVE.max_batch,
    max_wait_ms: Annotated[float, typer.Option(help="How long the first image of a batch waits for others.")] = SERVE.max_wait_ms,
    max_queue: Annotated[int, typer.Option(help="Images waiting at once; beyond, 503 with Retry-After.")] = SERVE.max_queue,
    max_files: Annotated[int, typer.Option(help="Images in one request (at most --max-queue); beyond, 413 before any is decoded.")] = SERVE.max_files,
    max_pixels: Annotated[int, typer.Option(help="Pixels of one image, read from its header before decoding; beyond, 422.")] = SERVE.max_pixels,
    max_gradcam: Annotated[int, typer.Option(help="Grad-CAM requests waiting or running at once; beyond, 503 with Retry-After.")] = SERVE.max_gradcam,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body; beyond, 413.")] = SERVE.max_upload_mb,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes per image unless the request asks (?top_k=).")] = SERVE.top_k,
):
    """Serve a model: an HTTP API (POST /predict, /gradcam; GET /health, /model, /metrics, /docs) and a web page at /.

    Stops on Ctrl-C or SIGTERM after answering the requests in flight.
    """
    from smallcnn.serve import ServeSettings

    settings = ServeSettings(host=host, port=port, token=token, cors=cors, max_batch=max_batch,
                             max_wait_ms=max_wait_ms, max_queue=max_queue, max_files=max_files,
                             max_pixels=max_pixels, max_gradcam=max_gradcam,
                             max_upload_mb=max_upload_mb, top_k=top_k)
    _run("serve", model, settings, tensorflow=False)


@app.command()
def label(
    pool: Annotated[List[Path], typer.Argument(help="Unlabelled image files or folders (searched recursively).", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Where the answers go: a folder of class folders (or of train/ and val/ folders; created if missing), or a table of labels (.csv).", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", help="Run folder: its base's features and its head's guesses. Without it, the default base, and the classes of DATA's folders or table and --classes.", show_default=False)] = None,
    table: Annotated[Optional[Path], typer.Option("--table", help="Add each answer as a row of this table of labels (created if missing; file names relative to DATA) instead of copying the image into DATA's class folder.", show_default=False)] = None,
    classes: Annotated[Optional[str], typer.Option(help="Without --model: class names to label besides DATA's, separated by commas (ants,bees).", show_default=False)] = None,
    every: Annotated[int, typer.Option(help="Retrain the heads on the cached features after this many answers.")] = LABEL.every,
    strategy: Strategy = LABEL.strategy,
    host: Annotated[str, typer.Option(help="Address to listen on; another than this machine's own lets anyone who reaches it write into DATA.")] = LABEL.host,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = LABEL.port,
):
    """Label the images worth labelling on a local web page: each answer is written into DATA at once.

    The model's guess is pre-selected; the page shows a key per class, and those of skip and not any class. Every --every answers the heads retrain and the suggestions follow. Stops on Ctrl-C or SIGTERM.
    """

    def labelling(*args, **kwargs):
        from smallcnn.cli.console import RichReporter, stderr
        from smallcnn.serve.labelling import label as serve_labelling

        return serve_labelling(*args, reporter=RichReporter(stderr), **kwargs)

    _run(labelling, pool, data, model=model, table=table, classes=classes,
         settings=LabelSettings(host=host, port=port, every=every, strategy=strategy),
         tensorflow=False)


@app.command("export")
def export_command(
    run: RunArgument = None,
    format: Annotated[str, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")] = DEFAULT_FORMAT,
    quantize: Annotated[str, typer.Option("--quantize", help=f"One of: {', '.join(QUANTIZATIONS)} (by format: {_BY_FORMAT}); int8 calibrates on training images.")] = DEFAULT_QUANTIZE,
    out: Annotated[Optional[Path], typer.Option("--out", help="File (or folder) to write." + shown_default("RUN/export/model[-QUANTIZE].EXT"), show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="The run's data folder, if it has moved (the export is checked on its validation images).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export.")] = False,
    as_json: AsJson = False,
):
    """Export a trained model (raw RGB pixels in, probabilities out), checked against the run's model.

    The exported file is run on the validation images; the export fails, writing
    nothing, when fewer than 99% (97% for int8) of its top-1 answers match the run's model.
    """
    from smallcnn.cli.console import export_table, stdout

    result = _run("export", run, format=format, quantize=quantize, out=out,
                  data=data, overwrite=overwrite, as_json=as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    stdout.print(export_table(result))
    stdout.print(f"Exported {result.path} (labels: {result.labels_path}, input contract: "
                 f"{result.contract_path}). Predict with: smallcnn predict IMAGE --model {result.path}",
                 soft_wrap=True)


cache_app = typer.Typer(help="The on-disk cache of features, LiteRT conversions, model templates "
                        "and image scans ($SMALLCNN_CACHE, default ~/.cache/smallcnn).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info(
    as_json: AsJson = False,
):
    """Where the cache is, what each part holds, and its cap (SMALLCNN_CACHE_MAX_GB, default 5)."""
    from smallcnn.cli.console import cache_table, stdout

    described = _run("cache.info", tensorflow=False)
    if as_json:
        sys.stdout.write(json.dumps(described, indent=2) + "\n")
        return
    stdout.print(cache_table(described))


@cache_app.command("clear")
def cache_clear(
    part: Annotated[Optional[str], typer.Argument(help="Clear only this part: features, engines, templates or scans." + shown_default("all"), show_default=False)] = None,
):
    """Delete the cache (or one part of it); everything in it is rebuilt when needed."""
    from smallcnn.cli.console import stdout

    freed = _run("cache.clear", part, tensorflow=False)
    stdout.print(f"Cleared {'the cache' if part is None else part}: {freed / 2**20:.1f} MB freed.")
