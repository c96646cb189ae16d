"""Run folders: where a trained model and everything needed to use it are kept.

    RUN/model.keras      the model: raw RGB pixels in, class probabilities out
    RUN/smallcnn.json    class names, base, weights, image size, settings, command line
    RUN/metrics.json     validation (and test) figures of the restored best model
    RUN/history.csv      one row per epoch
    RUN/curves.png       loss and accuracy per epoch, train against validation

Every file is written to a temporary name in the same folder and renamed into place
(`atomic_write`), so an interrupted run never leaves a half-written file where a good
one was.
"""

import csv
import datetime
import io
import json
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


def save_model(model, path):
    """Saves a Keras model atomically (Keras itself writes in place)."""
    atomic_write(path, lambda temp: model.save(temp))


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


def check_out(out, overwrite=False):
    """The path of `--out`, refused unless it is new, empty, or a run to overwrite."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the run.")
    if path.is_dir() and any(path.iterdir()):
        if not (path / CONFIG_FILE).exists() and not (path / MODEL_FILE).exists():
            raise UsageError(
                f"--out {str(out)!r} is a folder that is not empty and holds no run; "
                "give a new or empty folder."
            )
        if not overwrite:
            raise UsageError(
                f"{str(out)!r} already holds a run; choose another --out, or pass "
                "--overwrite to replace it."
            )
    return path


def new_run_dir(command, out=None, runs_dir=DEFAULT_RUNS_DIR, overwrite=False):
    """Creates the folder for a new run and returns its path.

    Without `out`, the name is `runs/<command>-<date>-<time>`, made unique. With `out`,
    an existing run folder there is refused unless `overwrite` is set.
    """
    if out is not None:
        path = check_out(out, overwrite)
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


def latest_run(runs_dir=DEFAULT_RUNS_DIR):
    """The most recently written run folder under `runs_dir` that holds a model."""
    root = Path(runs_dir)
    candidates = [p.parent for p in root.glob(f"*/{MODEL_FILE}")] if root.is_dir() else []
    candidates = [p for p in candidates if (p / CONFIG_FILE).exists()]
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
    file's stamp, or None where LiteRT is not to be used (SMALLCNN_ENGINE=tf)."""
    from smallcnn.runtime import cache
    from smallcnn.runtime.engine import chosen_engine

    if chosen_engine() == "tf":
        return None
    stamp = cache.file_stamp(Path(run_dir) / MODEL_FILE)
    return f"model-{cache.key('engines', model_file=stamp)[:32]}.tflite"
