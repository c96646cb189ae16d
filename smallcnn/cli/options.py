"""The arguments and options that several commands take, each declared once.

A default is never written here: an option reads it from the library that uses it
(a settings dataclass, or a module constant the library function takes as its default),
and a default that no value can show (the most recent run, the preset's) is said in
the help as `[default: ...]`. The training settings are declared in
`smallcnn.train.settings`; `setting_parameters` turns them into options.
"""

import inspect
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from smallcnn.data.table import TABLE_DEFAULTS, TABLE_HELP
from smallcnn.inference.tta import DEFAULT_VIEWS, VIEWS
from smallcnn.labels.strategies import AUTO, STRATEGIES

LATEST_RUN = "the most recent run in ./runs"


def shown_default(text):
    """`[default: text]` for a help text, escaped so that rich does not take it for markup."""
    return escape(f"  [default: {text}]")


Data = Annotated[
    Path,
    typer.Argument(
        help=escape("A folder of class folders, or of train/ and val/ (or validation/) folders "
                    "[and test/], each holding one folder per class; or a CSV table of labels "
                    "(file name, label, optional split)."),
        show_default=False,
    ),
]
_RUN_HELP = "Run folder." + shown_default(LATEST_RUN)
RunArgument = Annotated[Optional[Path], typer.Argument(help=_RUN_HELP, show_default=False)]
RunOption = Annotated[Optional[Path], typer.Option("--model", help=_RUN_HELP,
                                                    show_default=False)]
_MODEL_HELP = ("Run folder (or its model.keras), or an exported .tflite, .onnx, .keras file or "
               "SavedModel folder." + shown_default(LATEST_RUN))
ModelArgument = Annotated[Optional[Path], typer.Argument(help=_MODEL_HELP, show_default=False)]
ModelOption = Annotated[Optional[Path], typer.Option("--model", help=_MODEL_HELP,
                                                      show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Strategy = Annotated[str, typer.Option(help=f"Which images to label first, one of: {', '.join(STRATEGIES)}. auto runs {AUTO}: typical (coverage) while labels are few, margin (the model's doubt) after.")]
Tta = Annotated[bool, typer.Option("--tta", help=f"Average the probabilities over {DEFAULT_VIEWS} views of each image: {', '.join(VIEWS[:DEFAULT_VIEWS])} (test-time augmentation).")]
TtaViews = Annotated[Optional[int], typer.Option("--tta-views", help=f"Test-time augmentation over this many views (1-{len(VIEWS)}: {', '.join(VIEWS)}, in that order)." + shown_default(f"none; {DEFAULT_VIEWS} with --tta"), show_default=False)]


def tta_of(tta, views):
    """What `--tta` and `--tta-views` ask for, as the library's `tta=` takes it."""
    return views if views is not None else tta


def _table_option(name):
    return Annotated[Optional[str], typer.Option(
        f"--{name.replace('_', '-')}", show_default=False,
        help=TABLE_HELP[name] + shown_default(TABLE_DEFAULTS[name]))]


Labels, Images = _table_option("labels"), _table_option("images")
PathColumn, LabelColumn = _table_option("path_column"), _table_option("label_column")
SplitColumn = _table_option("split_column")


def setting_parameters(command, names=None):
    """The options of the training settings that `command` takes, from their declarations
    in `smallcnn.train.settings` (help, choices, and the default the code uses); for a
    command that is not a training command (check), the settings `names`, as extract
    takes them."""
    from smallcnn.train.settings import default_text, options

    declared_for = command if names is None else "extract"
    parameters = []
    for name, declared in options(declared_for):
        if names is not None and name not in names:
            continue
        help_text = declared["help"]
        if declared["choices"]:
            help_text += f" One of: {', '.join(declared['choices'])}."
        help_text += shown_default(default_text(declared_for, name))
        flags = [declared["flag"]] if declared["flag"] else [f"--{name.replace('_', '-')}"]
        annotation = Annotated[Optional[declared["type"]],
                               typer.Option(*flags, help=help_text, show_default=False)]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                            default=declared["default"], annotation=annotation))
    return parameters


def settings_command(app, command, run, names=None):
    """Registers `command` on `app`: the parameters of `run(settings, **others)` after
    `settings`, then its settings' options (`setting_parameters(command, names)`); `run`
    is called with a `Settings` of the values given."""
    from smallcnn.train.settings import Settings

    settings = setting_parameters(command, names)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in list(inspect.signature(run).parameters.values())[1:]]

    def function(**values):
        return run(Settings(**{p.name: values.pop(p.name) for p in settings}), **values)

    parameters = own + settings
    function.__signature__ = inspect.Signature(parameters)
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    function.__doc__ = run.__doc__
    function.__name__ = command
    app.command(command)(function)
