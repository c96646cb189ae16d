"""Run folders: where a trained model and everything needed to use it are kept.

    RUN/model.keras      the model: raw RGB pixels in, class probabilities out
    RUN/smallcnn.json    class names, base, weights, image size, settings, command line
    RUN/metrics.json     validation (and test) figures of the restored best model
    RUN/history.csv      one row per epoch
    RUN/curves.png       loss and accuracy per epoch, train against validation

Every file is written to a temporary name in the same folder and renamed into place
(`atomic_write`), so an interrupted run never leaves a half-written file where a good
one was.

`--overwrite` never mixes two runs in one folder: the old run is renamed aside whole
(`.RUN.replaced-<time>`, beside RUN) before the new one writes anything, deleted once the
new run's first model is saved (`save_model`), and put back if the command ends without
one (`overwriting`). A run killed before its first save leaves RUN without a model and
the old run intact beside it, which the next `--overwrite` of RUN takes up.
"""

import contextlib
import csv
import datetime
import glob
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

from smallcnn.errors import ModelError, UsageError, first_line

# The run folder's files are written through these (callers use them as `runs.write_json`).
from smallcnn.runtime.files import atomic_write, file_sha256, write_json, write_text  # noqa: F401

DEFAULT_RUNS_DIR = "runs"
MODEL_FILE = "model.keras"
CONFIG_FILE = "smallcnn.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
REPLACED_MARK = ".replaced-"  # in the name of a run set aside by --overwrite

# Runs set aside by --overwrite in this process, until their replacement saves a model:
# {absolute run folder: (folder aside, note, warn)}.
_replaced = {}


def save_model(model, path):
    """Saves a Keras model atomically (Keras itself writes in place); the first model
    saved in a run folder that replaced another run deletes that run."""
    atomic_write(path, lambda temp: model.save(temp))
    replaced = _replaced.pop(os.path.abspath(Path(path).parent), None)
    if replaced is not None:
        aside, _, warn = replaced
        _delete(aside, warn, f"the run {Path(path).parent} replaced")


def write_history(path, rows):
    """Writes a list of dicts (one per epoch) as CSV."""
    columns = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_history(run_dir):
    """The rows `write_history` wrote (numbers as floats, epoch as int); [] without a file."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append({k: (v if k == "phase" else float(v)) for k, v in row.items() if v})
            rows[-1]["epoch"] = int(rows[-1]["epoch"])
    return rows


def check_out(out, overwrite=False, data=()):
    """The path of `--out`, refused unless it is new, empty, or a run to overwrite, and
    apart from `data` (the data set's folder or table, each: neither inside the other)."""
    path = Path(out).expanduser()
    if path.is_symlink():
        target = os.path.realpath(path)
        if not os.path.isdir(target):
            raise UsageError(f"--out {str(out)!r} is a link to {target!r}, which is not a "
                             "folder; give a new folder for the run.")
        if overwrite:  # the link would be set aside, not the run it points to
            raise UsageError(f"--out {str(out)!r} is a link; to overwrite the run it points "
                             f"to, pass --out {target}.")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the run.")
    _refuse_data_overlap(out, path, data)
    if path.is_dir() and any(path.iterdir()) and not _holds_run(path):
        raise UsageError(
            f"--out {str(out)!r} is a folder that is not empty and holds no run; "
            "give a new or empty folder."
        )
    if (_holds_run(path) or _replaced_runs(path)) and not overwrite:
        raise UsageError(
            f"{str(out)!r} already holds a run; choose another --out, or pass "
            "--overwrite to replace it."
        )
    return path


def _holds_run(path):
    return (path / CONFIG_FILE).exists() or (path / MODEL_FILE).exists()


def _refuse_data_overlap(out, path, data):
    """Refuses a run folder that is the data, inside it (the run's pictures would become
    images of the data set), or around it (--overwrite would delete the images)."""
    run = Path(os.path.realpath(path))
    for item in data:
        place = Path(os.path.realpath(item))
        if run == place or place in run.parents or run in place.parents:
            where = ("is" if run == place else
                     "is inside" if place in run.parents else "holds")
            raise UsageError(f"--out {str(out)!r} {where} the data {str(item)!r}; give a "
                             "run folder outside the data (the default is runs/).")


def new_run_dir(command, out=None, runs_dir=DEFAULT_RUNS_DIR, overwrite=False, data=(),
                note=None, warn=None):
    """Creates the folder for a new run and returns its path.

    Without `out`, the name is `runs/<command>-<date>-<time>`, made unique. With `out`,
    an existing run folder there is refused unless `overwrite` is set; then the run is
    set aside whole until this one saves a model (see `overwriting`). `note` receives a
    line for what is done with runs set aside, `warn` one for a run that cannot be deleted
    (without `warn`, that error is raised).
    """
    if out is not None:
        path = check_out(out, overwrite, data)
        if overwrite and (_holds_run(path) or _replaced_runs(path)):
            _set_aside(path, note or _ignore, warn)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        name = f"{command}-{stamp}" if attempt == 1 else f"{command}-{stamp}-{attempt}"
        try:
            (root / name).mkdir()
            return root / name
        except FileExistsError:
            continue
    raise UsageError(f"Cannot find a free run name in {str(root)!r}; pass --out.")


def _ignore(text):
    """The default `note`: a caller that passes none wants no lines."""


def _replaced_runs(path):
    """The folders earlier overwrites of `path` set aside and left there, oldest first."""
    pattern = f".{glob.escape(path.name)}{REPLACED_MARK}*"
    return sorted(p for p in path.parent.glob(pattern) if p.is_dir())


def is_replaced_run(path):
    """Whether `path` is a run that --overwrite set aside (never a run to pick)."""
    return path.name.startswith(".") and REPLACED_MARK in path.name


def _set_aside(path, note, warn):
    """Renames the run in `path` aside, or, where an overwrite killed before its first
    save left one (and `path` holds no model), keeps that one aside instead."""
    left = _replaced_runs(path)
    if left and not (path / MODEL_FILE).exists():
        aside, stale = left[-1], left[:-1]
        if path.exists():  # the stopped run's files: no model, nothing to keep
            shutil.rmtree(path)
        note(f"An overwrite of {path} was stopped before its first save; the run it "
             f"replaced stays in {aside} until this one saves a model.")
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        aside, stale = path.parent / f".{path.name}{REPLACED_MARK}{stamp}", left
        path.rename(aside)
    for old in stale:  # set aside by an overwrite that saved its model: replaced already
        if _delete(old, warn, f"the run an earlier overwrite of {path} replaced"):
            note(f"Deleted {old}, the run an earlier overwrite of {path} replaced.")
    _replaced[os.path.abspath(path)] = (aside, note, warn)


def _delete(aside, warn, whose):
    """Deletes a run set aside; one that cannot be deleted is left with a warning (the new
    run is saved: that matters more), or the error raised without `warn`. Returns
    whether it was deleted."""
    try:
        shutil.rmtree(aside)
        return True
    except OSError as error:
        if warn is None:
            raise
        warn(f"Could not delete {aside}, {whose} ({error.strerror or error}); "
             "delete it yourself.")
        return False


@contextlib.contextmanager
def overwriting():
    """Around a training command (a decorator too): a run that `new_run_dir` set aside
    inside it comes back into its folder if the command ends (an error, a refusal,
    Ctrl-C) before saving a model in its place."""
    before = set(_replaced)
    try:
        yield
    finally:
        unsaved = {p: _replaced.pop(p) for p in set(_replaced) - before}
        for path, (aside, note, _) in unsaved.items():
            if os.path.lexists(path):  # the unfinished run's files: no model among them
                shutil.rmtree(path)
            aside.rename(path)
            note(f"{path} keeps its earlier run: this one ended before saving a model.")


def latest_run(runs_dir=DEFAULT_RUNS_DIR):
    """The most recently written run folder under `runs_dir` that holds a model."""
    root = Path(runs_dir)
    candidates = [p.parent for p in root.glob(f"*/{MODEL_FILE}")] if root.is_dir() else []
    candidates = [p for p in candidates
                  if (p / CONFIG_FILE).exists() and not is_replaced_run(p)]
    if not candidates:
        raise ModelError(
            f"No trained model found in {str(root)!r}; train one first "
            "(smallcnn extract DATA) or pass --model RUN."
        )
    return max(candidates, key=lambda p: (p / MODEL_FILE).stat().st_mtime)


def resolve_run(path):
    """Turns a run folder, or its model.keras file, into the run folder's path."""
    path = Path(path).expanduser()
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if not path.exists():
        raise ModelError(f"No run folder or model at {str(path)!r}.")
    if not path.is_dir():
        raise ModelError(
            f"{str(path)!r} is not a run folder; pass the folder that holds "
            f"{MODEL_FILE} and {CONFIG_FILE}."
        )
    left = _replaced_runs(path)
    if left and not (path / MODEL_FILE).is_file():
        raise ModelError(f"{str(path)!r} holds no model yet: its --overwrite run is in "
                         "progress or was stopped before its first save; the run it "
                         f"replaces is in {str(left[-1])!r}, which can be used meanwhile.")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ModelError(f"{str(path)!r} is not a complete run: {name} is missing.")
    return path


def read_config(run_dir):
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        config["class_names"]
        config["image_size"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{str(path)!r} is damaged or not a smallcnn run file ({error}).") from None
    return config


def load_model(run_dir):
    """Loads a run's model in Keras safe mode: a model file cannot run code."""
    from smallcnn.runtime.quiet import import_tensorflow

    import_tensorflow()
    import keras

    import smallcnn.model.layers  # noqa: F401  (registers the custom layers for loading)

    path = Path(run_dir) / MODEL_FILE
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{str(path)!r} is not a Keras model file (damaged, truncated or foreign); "
            "train the run again or pick another with --model."
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        reason = first_line(error)
        raise ModelError(f"Cannot load the model {str(path)!r}: {reason}") from None


def converted_model_name(run_dir):
    """The cache entry (in `engines`) of a run's whole model in LiteRT, keyed by the model
    file's stamp, or None where LiteRT is not to be used (SMALLCNN_ENGINE=tensorflow)."""
    from smallcnn.runtime import cache
    from smallcnn.runtime.engine import chosen_engine

    if chosen_engine() == "tensorflow":
        return None
    stamp = cache.file_stamp(Path(run_dir) / MODEL_FILE)
    return f"model-{cache.key('engines', model_file=stamp)[:32]}.tflite"
