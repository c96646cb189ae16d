"""Predicting any number of images into a JSON-lines file (`smallcnn predict --jsonl FILE`).

One line per image, `predict --json`'s object (or `{"path", "error"}` for a file that
cannot be read), written and flushed a chunk of images at a time, so memory stays that
of one chunk and an interrupted run keeps what it wrote. A rerun predicts only the images
the file has no line for.

The file is checked whole before anything is written, and a file that is not this
command's lines, a damaged line, lines of classes the model lacks, the --list file or an
image to predict are refused with the file left as it was. The one thing ever cut off is
a last line without its end of line that is the beginning of a line this command writes:
what a run killed while writing leaves. A run holds an advisory lock on the file (flock,
where the system has it) from reading it, or from making it, to its end: a second run on
the same file meanwhile is refused.
"""

import contextlib
import dataclasses
import errno
import json
import os
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so runs on one file are not kept apart
    fcntl = None

from smallcnn.data.listing import listed_paths
from smallcnn.errors import UsageError
from smallcnn.inference.classifier import (
    BATCH_SIZE,
    TOP_K,
    Prediction,
    check_counts,
    expand_paths,
)

PREDICTION_KEYS = tuple(field.name for field in dataclasses.fields(Prediction))
ERROR_KEYS = ("path", "error")  # the line of an image that cannot be read
# Far beyond any line this command writes; bounds what reading a file of something else costs.
MAX_LINE_BYTES = 16 * 2**20
# flock's answers on a file system that has no locks (some network ones): go on without.
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}


def image_key(path):
    """One image however its path is written (`./a.jpg`, `a//a.jpg`, absolute), as the
    current folder resolves it."""
    return os.path.normcase(os.path.abspath(path))


def images_of(images, listing=None):
    """The image files of `images` (files and folders) and of the list file `listing`,
    each once: the first way it is written, as pathlib writes it (`./a.jpg` is `a.jpg`)."""
    listed = [str(Path(path)) for path in listed_paths(listing)] if listing else []
    unique = {}
    for path in expand_paths(images) + listed:
        unique.setdefault(image_key(path), path)
    if not unique:
        raise UsageError("No images: give image files or folders, or --list FILE.")
    return list(unique.values())


def _line(record):
    return json.dumps(record) + "\n"


def _line_start(record):
    """How the line of `record`, whose last value is "", begins, up to that value's quote."""
    return _line(record)[: -len('"}\n')]


def _problem(record):
    """Why `record` is not a line of this command, or None."""
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        return "not an object with a path"
    if set(record) == set(ERROR_KEYS):
        return None if isinstance(record["error"], str) else "an error that is not text"
    if set(record) != set(PREDICTION_KEYS):
        return (f"not the keys of a prediction ({', '.join(PREDICTION_KEYS)}) "
                f"or of an unreadable image ({', '.join(ERROR_KEYS)})")
    top = record["top"]
    if not (isinstance(record["label"], str) and isinstance(top, list)
            and isinstance(record["probability"], (int, float))
            and all(isinstance(entry, dict) and isinstance(entry.get("label"), str)
                    for entry in top)):
        return "a label, probability or top list that is not a prediction's"
    return None


def _half_written(fragment):
    """Whether `fragment`, a last line without its end of line, is the beginning of a
    line this command writes (json.dumps: printable ASCII), as a killed run leaves it."""
    try:
        text = fragment.decode("ascii")
    except UnicodeDecodeError:
        return False
    head = _line_start({"path": ""})
    if not text.isprintable():
        return False
    if not text.startswith(head):
        return head.startswith(text)  # cut inside the head
    try:
        path = json.decoder.scanstring(text, len(head))[0]
    except ValueError:
        return True  # cut inside the path
    # Each line's second key: "label", or "error" for an image that cannot be read.
    starts = [_line_start({"path": path, keys[1]: ""}) for keys in (PREDICTION_KEYS, ERROR_KEYS)]
    if not any(text.startswith(start) or start.startswith(text) for start in starts):
        return False
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return True  # cut later in the line
    return _problem(record) is None  # whole but for its end of line


class PredictionsFile:
    """A --jsonl file as this run finds it, checked whole on creation: the images it has
    a line for (`done`) and the classes its lines name. Nothing is written before `appending`.
    The file's lock is held until `close` (or the end of a `with` block)."""

    def __init__(self, path, images=(), listing=None):
        self.path = Path(path)
        self.done, self.labels = set(), set()
        self.size, self.cut = 0, b""  # bytes of whole lines; a half-written last line
        self._held = None  # the open file that holds the lock
        self._refuse_inputs(images, listing)
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            mode = None  # made (with its folder) when the first lines come
        except OSError as error:
            raise UsageError(f"Cannot use --jsonl {str(path)!r} ({error}).") from None
        if mode is not None and stat.S_ISDIR(mode):
            raise UsageError(f"--jsonl {str(path)!r} is a folder: name a file, such as "
                             f"{str(self.path / 'predictions.jsonl')!r}.")
        # A device or a pipe (/dev/stdout) is written to, never read: nothing to resume.
        self.regular = mode is None or stat.S_ISREG(mode)
        if mode is not None and self.regular:
            try:
                self._lock(open(self.path, "rb"))
            except OSError as error:
                raise UsageError(f"Cannot read --jsonl {str(path)!r} ({error}).") from None
            try:
                self._read()
            except BaseException:
                self.close()
                raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Lets go of the file's lock."""
        if self._held is not None:
            self._held.close()
            self._held = None

    def _lock(self, f):
        """Holds an exclusive lock on the open file `f` (closed if another run has it)."""
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise UsageError(f"--jsonl {str(self.path)!r} is being written by another run "
                                 "(it holds the file's lock); it is left as it is: wait for "
                                 "that run to end, or give --jsonl another file.") from None
            except OSError as error:
                if error.errno not in NO_LOCKS:
                    f.close()
                    raise UsageError(f"Cannot lock --jsonl {str(self.path)!r} "
                                     f"({error}).") from None
        self._held = f

    def _refuse_inputs(self, images, listing):
        if listing is not None and _same_file(listing, self.path):
            raise UsageError(f"--list and --jsonl name the same file ({str(listing)!r}), whose "
                             "paths predictions would replace: give --jsonl another file.")
        keys = {image_key(self.path), image_key(os.path.realpath(self.path))}
        clash = next((image for image in images if image_key(image) in keys), None)
        if clash is not None:
            raise UsageError(f"--jsonl {str(self.path)!r} is also an image to predict "
                             f"({clash!r}): give --jsonl another file.")

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                number = 0
                while raw := f.readline(MAX_LINE_BYTES + 1):
                    number += 1
                    if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES:
                        if not _half_written(raw):
                            self._refuse(number, "no end of line, and not the beginning of a "
                                                 "line this command writes")
                        self.cut = raw
                        break
                    self._take(number, raw)
        except OSError as error:
            raise UsageError(f"Cannot read --jsonl {str(self.path)!r} ({error}).") from None

    def _take(self, number, raw):
        """Adds line `number` (its bytes `raw`, end of line included) to what is done."""
        if len(raw) > MAX_LINE_BYTES:
            self._refuse(number, f"longer than {MAX_LINE_BYTES:,} bytes")
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            self._refuse(number, f"not JSON: {error.msg}" if raw.strip() else "an empty line")
        except (ValueError, RecursionError):  # not UTF-8, nested too deep, a giant number
            self._refuse(number, "not JSON that can be read")
        problem = _problem(record)
        if problem:
            self._refuse(number, problem)
        self.done.add(image_key(record["path"]))
        if "label" in record:
            self.labels.update([record["label"], *(entry["label"] for entry in record["top"])])
        self.size += len(raw)

    def _refuse(self, number, why):
        where = str(self.path)
        if number == 1:
            raise UsageError(f"--jsonl {where!r} is not a file of predict --jsonl lines (line 1: "
                             f"{why}); it is left as it was: give --jsonl a new file.")
        raise UsageError(f"--jsonl {where!r}: line {number} is damaged ({why}); the file is "
                         "left as it was: repair or delete that line, or give --jsonl another file.")

    def check_classes(self, class_names):
        """Refuses lines that name classes the model lacks: another model wrote them."""
        unknown = sorted(self.labels - set(class_names))
        if unknown:
            raise UsageError(
                f"--jsonl {str(self.path)!r} has predictions of classes this model does not have "
                f"({', '.join(map(repr, unknown[:3]))}): another model wrote it; give --jsonl "
                "another file.")

    @contextlib.contextmanager
    def appending(self):
        """A function that adds the lines of records to the file, flushed to disk. The file
        is opened, and a half-written last line cut off, when the first records come."""
        opened = []

        def append(records):
            try:
                if not opened:
                    opened.append(self._open())
                opened[0].write("".join(map(_line, records)))
                opened[0].flush()
                if self.regular:
                    os.fsync(opened[0].fileno())
            except OSError as error:
                raise UsageError(f"Cannot write --jsonl {str(self.path)!r} ({error}); the lines "
                                 "written before are kept: run again to go on.") from None

        try:
            yield append
            if not opened and self.cut:  # nothing new, yet the file ends as whole lines
                append([])
        finally:
            for f in opened:
                f.close()

    def _open(self):
        """The file opened to append to, locked (a new file is locked as it is made) and
        still as it was read, a half-written last line cut off."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        appending = open(self.path, "a", encoding="utf-8")
        try:
            if self._held is None:
                self._lock(appending)
            with open(self.path, "r+b" if self.cut else "rb") as f:
                f.seek(self.size)
                # Another run that does not lock (or that made the file first) wrote to it.
                size = os.fstat(f.fileno()).st_size
                if size != self.size + len(self.cut) or f.read() != self.cut:
                    raise UsageError(f"--jsonl {str(self.path)!r} changed while this run read it "
                                     "(another run writing to it?); it is left as it is.")
                if self.cut:
                    f.truncate(self.size)
        except BaseException:
            appending.close()
            raise
        return appending


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return image_key(os.path.realpath(a)) == image_key(os.path.realpath(b))


def predict_jsonl(classifier, paths, out, top_k=TOP_K, batch_size=BATCH_SIZE, tta=False,
                  progress=None):
    """Appends a line per image of `paths` not yet in `out` (a path or a checked
    `PredictionsFile`); `progress`, if given, is called with the number of `paths` done
    (those skipped included).

    Returns:
        `{"written", "skipped", "unreadable"}`: counts of this call.
    """
    from smallcnn.inference.tta import views_of

    if not isinstance(out, PredictionsFile):
        with PredictionsFile(out, paths) as file:
            return predict_jsonl(classifier, paths, file, top_k, batch_size, tta, progress)
    file = out
    file.check_classes(classifier.class_names)
    todo = [str(p) for p in paths if image_key(p) not in file.done]
    counts = {"written": 0, "skipped": len(paths) - len(todo), "unreadable": 0}
    skipped = counts["skipped"]
    advance = (lambda done: progress(skipped + done)) if progress else None
    with file.appending() as append:
        for rows, kept, failures in classifier.iter_probabilities(
                todo, batch_size, advance, views_of(tta)):
            append([classifier.prediction(todo[index], row, top_k).to_dict()
                    for index, row in zip(kept, rows)]
                   + [dict(zip(ERROR_KEYS, (failure.path, str(failure)))) for failure in failures])
            counts["written"] += len(kept)
            counts["unreadable"] += len(failures)
    return counts


def predict_to_file(images, out, model=None, listing=None, top_k=TOP_K, batch_size=BATCH_SIZE,
                    tta=False, reporter=None):
    """`smallcnn predict IMAGES... [--list FILE] --jsonl OUT`: the images (files and
    folders) and those of the list file, predicted into `out`."""
    from smallcnn.inference.predict import load
    from smallcnn.progress import Reporter

    check_counts(top_k, batch_size)
    paths = images_of(images, listing)
    with PredictionsFile(out, paths, listing) as file:  # checked before the model loads
        classifier = load(model)
        reporter = reporter or Reporter()
        with reporter.progress(f"Predicting into {out}", len(paths)) as advance:
            counts = predict_jsonl(classifier, paths, file, top_k, batch_size, tta, advance)
    return counts, classifier.engine
