"""How the library tells its caller what is going on, without printing itself.

Library functions take a `Reporter`; the default one stays silent. The CLI passes
one that draws rich tables and progress bars (`smallcnn.cli.console.RichReporter`).
"""

import contextlib


class Reporter:
    """Receives progress and notes from the library. Subclass it to show them."""

    def dataset(self, dataset):
        """A data set was found and checked (called before any training)."""

    def check(self, report):
        """The data set was checked (a `smallcnn.data.check.CheckReport`), before training."""

    @contextlib.contextmanager
    def progress(self, description, total):
        """A task of `total` steps; yields a callable taking the number of steps done."""
        yield lambda done: None

    def epoch(self, phase, epoch, epochs, logs):
        """An epoch ended; `epoch` counts from 1; `logs` holds loss and metrics."""

    def note(self, text):
        """Something worth a line of its own."""

    def warning(self, text):
        """Something the user should look at, though the run goes on."""
