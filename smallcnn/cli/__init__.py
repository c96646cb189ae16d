"""The `smallcnn` command: parse, call one library function, print.

Library errors (`SmallcnnError`) become one line on stderr and the exit code of
their class; a traceback is shown only with --debug. So do click's parse errors (exit 2),
and a file Pillow warns is truncated is skipped with a one-line reason. The CLI is the top
of the package: it may import every other part, and none imports it.
"""

import contextlib
import warnings
from typing import Optional

import typer
from typer.core import TyperGroup
from typing_extensions import Annotated

try:  # typer 0.2x parses with a copy of click of its own
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException

from smallcnn import __version__
from smallcnn.errors import EXIT_CODES, SmallcnnError
from smallcnn.runtime.cache import CacheWarning
from smallcnn.runtime.quiet import import_tensorflow


@contextlib.contextmanager
def _one_line_parse_errors():
    """Click's errors (an unknown option or command, a missing argument, a value that is
    no number or no choice) as one line on stderr and their exit code (2), as the library's
    errors are; the help that a bare command shows stays as it is."""
    try:
        yield
    except ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            raise
        from rich.markup import escape

        from smallcnn.cli.console import stderr

        context = getattr(error, "ctx", None)
        hint = f" Try '{context.command_path} --help'." if context is not None else ""
        message = " ".join(error.format_message().split())
        message += "" if message.endswith((".", "?")) else "."
        stderr.print(f"[bold red]error:[/bold red] {escape(message)}{hint}", soft_wrap=True,
                     highlight=False)
        raise typer.Exit(error.exit_code) from None


class _Commands(TyperGroup):
    """The app: every command of it parses its words with `_one_line_parse_errors`."""

    def make_context(self, *args, **kwargs):
        with _one_line_parse_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):  # a command's words are parsed here, and a group's
        with _one_line_parse_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="smallcnn",
    cls=_Commands,
    help="Accurate image classifiers from a few hundred labelled images, by transfer learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_state = {"debug": False}
# The modules whose warnings are errors in this process (see `_run`).
PILLOW_MODULES = r"PIL(\.|$)"


# Library calls that report on stderr: stdout holds what the command prints itself.
_REPORTING_ON_STDERR = {"check_labels": "labels.label_review.check_labels",
                        "predict_to_file": "inference.stream.predict_to_file",
                        "serve": "serve.serve", "suggest": "labels.suggest.suggest"}
# Library calls that report on stdout, or on stderr with --json (stdout holds the JSON alone).
_REPORTING = {"evaluate": "inference.evaluate.evaluate", "report": "visualize.report.build_report",
              "export": "inference.export.export"}


def _library_function(dotted):
    """`smallcnn.MODULE.NAME` from 'MODULE.NAME'."""
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(f"smallcnn.{module}"), name)


def _library_call(name):
    """The library function behind a command, imported only once TensorFlow is quiet."""
    if callable(name):
        return name
    from smallcnn.cli.console import RichReporter, stderr, stdout

    if name == "check":
        from smallcnn.data.check import check_dataset
        from smallcnn.data.dataset import find_dataset

        def check(data, val_split, seed, table):
            return check_dataset(find_dataset(data, val_split, seed, table), RichReporter())

        return check
    if name == "predict":
        from smallcnn.inference.predict import load
        from smallcnn.inference.stream import images_of

        def predict(paths, model=None, listing=None, **kwargs):
            return load(model).predict_paths(images_of(paths, listing), **kwargs)

        return predict
    if name in _REPORTING_ON_STDERR:
        function = _library_function(_REPORTING_ON_STDERR[name])
        return lambda *args, **kwargs: function(*args, reporter=RichReporter(stderr), **kwargs)
    if name in _REPORTING:
        function = _library_function(_REPORTING[name])

        def with_reporter(*args, as_json=False, **kwargs):
            return function(*args, reporter=RichReporter(stderr if as_json else stdout), **kwargs)

        return with_reporter
    if name.startswith("cache."):
        return _library_function(f"runtime.{name}")
    if name.startswith("visualize."):
        import inspect

        function = _library_function(name)
        if "reporter" not in inspect.signature(function).parameters:
            return function
        return lambda *args, **kwargs: function(*args, reporter=RichReporter(), **kwargs)
    function = _library_function(f"train.{name}")
    return lambda *args, **kwargs: function(*args, reporter=RichReporter(), **kwargs)


def _run(command, *args, tensorflow=True, **kwargs):
    """Runs one library call, turning errors into a message and an exit code.

    `tensorflow=False` skips importing TensorFlow (2-3 s) for calls that do not need it.
    """
    from smallcnn.cli.console import stderr

    try:
        if tensorflow:
            import_tensorflow()
        with warnings.catch_warnings():  # cache warnings as one line each, when they happen
            show = warnings.showwarning

            def one_line(message, category, *args, **kwargs):
                if issubclass(category, CacheWarning):
                    stderr.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True,
                                 highlight=False)
                else:
                    show(message, category, *args, **kwargs)

            warnings.showwarning = one_line
            warnings.simplefilter("always", CacheWarning)
            # Pillow warns of a truncated file (a TIFF) and goes on: as an error,
            # `data.images.decoding` skips the file with a one-line reason in its words.
            # Its other warnings are of metadata (a corrupt EXIF block, an odd palette)
            # beside pixels that decode well: such a photo is used, not skipped.
            warnings.filterwarnings("ignore", module=PILLOW_MODULES)
            warnings.filterwarnings("error", message=".*truncated", module=PILLOW_MODULES)
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


@app.callback(epilog="Exit codes: " + "; ".join(
    f"{code} {meaning.split(':')[0].split(' (')[0]}" for code, meaning in EXIT_CODES.items()) + ".")
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
):
    """Turn a folder of images per class into an image classifier."""
    _state["debug"] = debug


# The commands register themselves on `app`.
from smallcnn.cli import labels, training, using, visualize  # noqa: E402,F401
from smallcnn.cli.ranges import check_numbers  # noqa: E402

check_numbers(app)


def main():
    app(prog_name="smallcnn")


if __name__ == "__main__":
    main()
