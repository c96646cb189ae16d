"""The training commands, derived from the declarations of `smallcnn.train.settings`."""

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from smallcnn.cli import _run, app
from smallcnn.cli.options import Data, settings_command, shown_default

Out = Annotated[Optional[Path], typer.Option(help="Run folder to write." + shown_default("runs/<command>-<time>"), show_default=False)]
Overwrite = Annotated[bool, typer.Option(help="Replace a run already in --out.")]
Resume = Annotated[Optional[Path], typer.Option(help="Continue an interrupted run in its folder, with its settings (DATA: where its data is now, if it moved).", show_default=False)]
DataOrRun = Annotated[Optional[Path], typer.Argument(help="As for extract; with --resume, the run's data if it moved.", show_default=False)]


def _report(result):
    from smallcnn.cli.console import stderr, stdout, summary_table

    if result.worker is not None:  # a cluster's worker: the chief wrote the run
        stdout.print(f"[bold]{result.command}[/bold] ({result.worker}): done; the chief "
                     "saved the run.")
        stdout.print(summary_table(result))
        if result.interrupted:
            raise typer.Exit(130)
        return
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


def extract(settings, data: Data, out: Out = None, overwrite: Overwrite = False):
    """Run the pretrained base once over the images, cache the features, train a dense head.

    Fast, even on a CPU: a second run over the same files reuses the cached features.
    """
    # TensorFlow is imported only if features must be computed (not with a warm cache).
    _report(_run("extract", data, settings, out=out, overwrite=overwrite, tensorflow=False))


def train(settings, data: DataOrRun = None, out: Out = None, overwrite: Overwrite = False,
          resume: Resume = None):
    """Train on augmented images, the base frozen (--freeze), with early stopping.

    Ctrl-C stops at the end of the current step and saves the best model so far;
    --resume RUN continues.
    """
    _report(_run("train", data, settings, out=out, overwrite=overwrite, resume=resume,
                 tensorflow=False))  # imported by the session, once the data is found


def finetune(
    settings,
    data: Annotated[Optional[Path], typer.Argument(help="DATA as for train, or a RUN folder to start from (then DATA is the run's); with --resume or --from, the data if it moved.", show_default=False)] = None,
    from_run: Annotated[Optional[Path], typer.Option("--from", help="Start from this run folder instead of training a head first.", show_default=False)] = None,
    out: Out = None,
    overwrite: Overwrite = False,
    resume: Resume = None,
):
    """Unfreeze the top layers of the base and train them with the head at a low learning rate."""
    from smallcnn.model.runs import CONFIG_FILE

    if data is not None and from_run is None and resume is None and (data / CONFIG_FILE).is_file():
        data, from_run = None, data  # `smallcnn finetune RUN`
    _report(_run("finetune", data, from_run=from_run, settings=settings, out=out,
                 overwrite=overwrite, resume=resume, tensorflow=False))


for _command, _function in (("extract", extract), ("train", train), ("finetune", finetune)):
    settings_command(app, _command, _function)
