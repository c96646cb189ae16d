"""`smallcnn suggest POOL`: the unlabelled images most worth labelling next, as a table
to correct and append to the data set's.

    smallcnn suggest unlabelled/ --model runs/extract-... --n 50 --out next.csv
    smallcnn suggest unlabelled/ --classes ants,bees         (no model yet: coverage)

The pool's features and the run's probabilities for them are `pool.py`'s, the ranking
`strategies.rank`'s.
"""

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Optional

import numpy as np

from smallcnn.errors import DataError, UsageError
from smallcnn.labels.pool import labelled_set, pool_features
from smallcnn.labels.strategies import STRATEGIES, N, chosen_strategy, rank
from smallcnn.progress import Reporter

# The table's columns: the label for a person to fill in, then the model's guess.
COLUMNS = ("filename", "label", "guess", "probability")


@dataclasses.dataclass
class Suggestion:
    path: str
    guess: Optional[str]  # the model's most probable class; None without a model
    probability: Optional[float]

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Suggestions:
    strategy: str  # the strategy that ran (auto's and mix's rule resolved)
    suggestions: list  # Suggestion, best first
    skipped: list  # [(path, reason)]
    class_names: list
    pool: int  # images ranked
    written: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return {"strategy": self.strategy, "pool": self.pool,
                "suggestions": [s.to_dict() for s in self.suggestions],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "written": self.written}


def suggest(pool, run=None, classes=None, n=N, strategy="auto", listing=None, out=None,
            html_out=None, seed=0, reporter=None):
    """`smallcnn suggest`: ranks the pool (`strategies.rank`) and writes the top `n` as a
    table (`out`) and a page (`html_out`), each if asked.

    Args:
        pool: image files and folders; `listing`: a file listing more, one per line.
        run: a run folder (its base, head and data set), or None with `classes`.

    Returns:
        `Suggestions`.
    """
    from smallcnn.inference.stream import images_of
    from smallcnn.labels.suggest_page import TITLE

    reporter = reporter or Reporter()
    for option, path, mark in (("--out", out, ",".join(COLUMNS)),
                               ("--html", html_out, f"<title>{TITLE}</title>")):
        if path is not None:
            _refuse_to_replace(option, Path(path), mark)
    if n < 1:
        raise UsageError(f"--n must be at least 1. Received: {n}")
    if run is None or strategy not in STRATEGIES:  # an unknown name; margin without a model
        chosen_strategy(strategy, 0, None)
    paths = images_of([str(p) for p in pool], listing)
    found = pool_features(paths, run, classes, reporter)
    labelled = labelled_set(run, reporter) if run is not None else None
    found, known = _without_labelled(found, labelled, reporter)
    if not found.paths:
        example = "".join(f" (e.g. {path}: {reason})" for path, reason in found.skipped[:1])
        raise DataError(f"No image of the pool is left to suggest: {len(found.skipped)} "
                        f"unreadable{example}, {known} in the run's data set already; give "
                        "images that are neither.")
    ranked = rank(found.features, strategy, n, None if labelled is None else labelled.features,
                  found.probabilities, seed)
    used = chosen_strategy(strategy, 0 if labelled is None else len(labelled.labels),
                           found.probabilities)
    result = Suggestions(used, [_suggestion(found, i) for i in ranked], found.skipped,
                         found.class_names, len(found.paths))
    if out is not None:
        result.written.append(write_table(result.suggestions, out))
    if html_out is not None:
        from smallcnn.labels.suggest_page import suggest_page

        result.written.append(suggest_page(result, found, ranked, labelled, html_out))
    return result


def _refuse_to_replace(option, path, mark):
    """Refuses a folder, or a file that does not begin with `mark` (what suggest writes
    begins with): `--out` beside DATA's own table, or an image, is never written over."""
    if path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a folder; name a file.")
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError as error:
        raise UsageError(f"{option} {str(path)!r} cannot be read ({error.strerror}); name "
                         "a new file.") from None
    if mark not in head:
        raise UsageError(f"{option} {str(path)!r} exists and is not one suggest wrote; name a "
                         "new file (append the suggestions to a table of labels by hand).")


def _without_labelled(found, labelled, reporter):
    """`(the pool without the images whose content is already in the run's data set,
    how many those were)`."""
    if labelled is None:
        return found, 0
    keep = [i for i, p in enumerate(found.paths) if found.digests.get(p) not in labelled.digests]
    known = len(found.paths) - len(keep)
    if known:
        reporter.note(f"{known} pool image(s) are in the run's data set already: not "
                      "suggested.")
        found = dataclasses.replace(
            found, paths=[found.paths[i] for i in keep], features=found.features[keep],
            probabilities=None if found.probabilities is None else found.probabilities[keep])
    return found, known


def _suggestion(found, index):
    if found.probabilities is None:
        return Suggestion(found.paths[index], None, None)
    row = found.probabilities[index]
    best = int(np.argmax(row))
    return Suggestion(found.paths[index], found.class_names[best], round(float(row[best]), 4))


def write_table(suggestions, out):
    """Writes the suggestions as a table of labels (`COLUMNS`) with the label left empty;
    file names relative to the table's folder where they are inside it, else absolute."""
    from smallcnn.data.table import is_inside
    from smallcnn.runtime.files import write_text

    out = Path(out)
    folder = out.parent.resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in suggestions:
        path = os.path.abspath(s.path)
        name = os.path.relpath(path, folder) if is_inside(path, folder) else path
        writer.writerow([name, "", s.guess or "", "" if s.probability is None else s.probability])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, buffer.getvalue())
    return str(out)
