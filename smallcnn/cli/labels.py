"""The commands that help label: `smallcnn suggest`."""

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from smallcnn.cli import _run, app
from smallcnn.cli.options import AsJson, Strategy
from smallcnn.labels.strategies import N, STRATEGIES


@app.command()
def suggest(
    pool: Annotated[Optional[List[Path]], typer.Argument(help="Unlabelled image files or folders (searched recursively).", show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Run folder: its base's features, its head's probabilities and its data set's labelled images rank the pool. Without it, give --classes.", show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", help="Images to suggest.")] = N,
    strategy: Strategy = STRATEGIES[0],
    classes: Annotated[Optional[str], typer.Option(help="Without --model: the class names, separated by commas (ants,bees); the images are chosen by coverage.", show_default=False)] = None,
    listing: Annotated[Optional[Path], typer.Option("--list", help="Also rank the images listed in this file, one path per line.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the suggestions as a table of labels (filename,label,guess,probability): fill in the label column and append the rows to DATA's table.", show_default=False)] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="Write a page of the suggested images, each beside its nearest labelled images.", show_default=False)] = None,
    as_json: AsJson = False,
):
    """Suggest the unlabelled images most worth labelling next, with the model's guess.

    Without --model (no labels yet), give --classes: the images that cover the pool best.
    Unreadable images are skipped and named on stderr.
    """
    from smallcnn.cli.console import stderr, stdout

    result = _run("suggest", pool or [], run=model, classes=classes, n=n, strategy=strategy,
                  listing=listing, out=out, html_out=html_out, tensorflow=False)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        stdout.print(_table(result))
    for path, reason in result.skipped:
        stderr.print(f"[yellow]skipped:[/yellow] {path} ({reason})", soft_wrap=True,
                     highlight=False)
    for path in result.written:
        stderr.print(f"written: {path}", soft_wrap=True, highlight=False)


def _table(result):
    from rich.table import Table

    table = Table(title=f"{len(result.suggestions)} of {result.pool} images to label next "
                        f"({result.strategy})")
    for column in ("#", "image", "guess", "probability"):
        table.add_column(column)
    for number, s in enumerate(result.suggestions, start=1):
        table.add_row(str(number), s.path, s.guess or "-",
                      "-" if s.probability is None else f"{s.probability:.1%}")
    return table
