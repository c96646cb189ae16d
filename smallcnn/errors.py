"""Errors that smallcnn raises for problems a user can fix.

The library raises these where a problem is detected; the CLI turns them into one
line on stderr and an exit code (see `EXIT_CODES` and the README).
"""


class SmallcnnError(Exception):
    """A problem the user can fix; the message says what was received and what would work."""

    exit_code = 1


class UsageError(SmallcnnError):
    """An option or argument that cannot be used as given."""

    exit_code = 2


class DataError(SmallcnnError):
    """A data set, or an image, that cannot be trained on or read."""

    exit_code = 3


class ModelError(SmallcnnError):
    """A model or run folder that is missing, damaged or does not fit the data."""

    exit_code = 4


class WeightsError(SmallcnnError):
    """Pretrained weights that cannot be found, downloaded or loaded."""

    exit_code = 5


def first_line(error):
    """The first line of an exception's message, or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def described(error):
    """An exception in one line: 'ValueError: the first line of its message'."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: please report it with the output of --debug)",
    2: "bad usage: an unknown option or a value out of range",
    3: "bad data: the data set or an image cannot be used",
    4: "bad model: a run folder or model file is missing, damaged or does not match",
    5: "weights: pretrained weights cannot be downloaded or loaded",
    130: "interrupted (Ctrl-C)",
}
