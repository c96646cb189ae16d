"""The range of every numeric option of the commands, checked as a command starts.

A training setting's range is declared with the setting (`smallcnn.train.settings`),
and holds for the options of the same name elsewhere (`check --seed`, `predict
--batch-size`, `visualize style --learning-rate`); the other options' ranges are here.
Every command checks (`CheckedCommand`), once its options are parsed and before it
does any work, that each numeric option is a finite number in its range, and each
numeric environment variable in its own; the first that is not is refused in one line.
"""

from typer.core import TyperCommand

from smallcnn.inference.tta import VIEWS
from smallcnn.runtime.ranges import Range
from smallcnn.visualize.style import SMOOTHING, WEIGHT

# By parameter name (the option may be spelled otherwise: `count` is --filters).
RANGES = {
    "top_k": Range(1),
    "top": Range(0),
    "tta_views": Range(1, len(VIEWS)),
    "folds": Range(2, 20),
    "n": Range(1),  # suggest --n
    "channels": Range(1),
    "count": Range(1),
    "steps": Range(1, 10_000),  # of gradient ascent or optimisation
    "octaves": Range(1, 20),
    "octave_scale": Range(1, 16, above=True),
    "step_size": Range(0, 1, above=True),
    "size": Range(1, 4096),  # pixels; each picture checks what its base needs
    "content_weight": WEIGHT,
    "style_weight": WEIGHT,
    "tv_weight": WEIGHT,
    "smoothing": SMOOTHING,
}


def allowed(name):
    """The `Range` of the option whose parameter is `name`, or None."""
    from smallcnn.train import settings

    return RANGES.get(name) or settings.allowed(name)


def variables():
    """The readers of the numbers smallcnn takes from environment variables; each refuses
    a bad value in one line. The library reads each where it needs it, a command all of
    them as it starts."""
    from smallcnn.data.pipeline import default_memory_budget
    from smallcnn.runtime.cache import max_bytes
    from smallcnn.train.cut import budget_bytes
    from smallcnn.train.settings import checkpoint_seconds

    return (max_bytes, default_memory_budget, checkpoint_seconds, budget_bytes)


def check_options(parameters, values):
    """Refuses (`UsageError`) a numeric option out of its range (`parameters`: a
    command's click parameters; `values`: their values by name), or a numeric
    environment variable out of its own."""
    for read in variables():
        read()
    for parameter in parameters:
        value = values.get(parameter.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        declared = allowed(parameter.name)
        if declared is not None:
            declared.check(max(parameter.opts, key=len, default=parameter.name), value)


class CheckedCommand(TyperCommand):
    """A command whose numeric options are checked once parsed, before it runs."""

    def invoke(self, ctx):
        from smallcnn.cli import _run

        _run(check_options, self.params, ctx.params, tensorflow=False)
        return super().invoke(ctx)


def check_numbers(app):
    """Makes every command of `app` and of its groups a `CheckedCommand` (they are all
    typer's plain commands)."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = CheckedCommand
    for group in app.registered_groups:
        check_numbers(group.typer_instance)
