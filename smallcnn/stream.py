"""Predicting any number of images into a JSON-lines file (`smallcnn predict --jsonl FILE`).

One line per image, `predict --json`'s object (or `{"path", "error"}` for a file that
cannot be read), written and flushed a chunk of images at a time, so memory stays that
of one chunk and an interrupted run keeps what it wrote. A rerun skips the images the
file already has a line for, and first cuts off a last line that an interruption left
half-written.
"""

import json
import os
from pathlib import Path

from smallcnn.errors import UsageError


def read_paths(listing):
    """The image paths of a list file: one per line; blank lines and `#` comments skipped."""
    try:
        lines = Path(listing).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"Cannot read --list {str(listing)!r} ({error}).") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def images_of(images, listing=None):
    """The image files of `images` (files and folders) and of the list file `listing`."""
    from smallcnn.predict import expand_paths

    paths = expand_paths(images) + (read_paths(listing) if listing else [])
    if not paths:
        raise UsageError("No images: give image files or folders, or --list FILE.")
    return paths


def done_paths(out):
    """The paths that `out` already has a line for; a half-written last line is cut off."""
    out = Path(out)
    if not out.exists():
        return set()
    done, good_bytes = set(), 0
    with open(out, "rb") as f:
        for raw in f:
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("no end of line")
                done.add(json.loads(raw)["path"])
            except (ValueError, KeyError, TypeError):
                break  # from here on, the interrupted end of an earlier run
            good_bytes += len(raw)
    if good_bytes < out.stat().st_size:
        with open(out, "r+b") as f:
            f.truncate(good_bytes)
    return done


def predict_jsonl(classifier, paths, out, top_k=3, batch_size=32, tta=False, progress=None):
    """Appends a line per image of `paths` not yet in `out`; `progress`, if given, is
    called with the number of `paths` done (those skipped included).

    Returns:
        `{"written", "skipped", "unreadable"}`: counts of this call.
    """
    from smallcnn.tta import views_of

    done = done_paths(out)
    todo = [str(p) for p in paths if str(p) not in done]
    counts = {"written": 0, "skipped": len(paths) - len(todo), "unreadable": 0}
    skipped = counts["skipped"]
    advance = (lambda done: progress(skipped + done)) if progress else None
    with open(out, "a", encoding="utf-8") as f:
        for rows, kept, failures in classifier.iter_probabilities(
                todo, batch_size, advance, views_of(tta)):
            for index, row in zip(kept, rows):
                f.write(json.dumps(classifier.prediction(todo[index], row, top_k).to_dict()) + "\n")
            for failure in failures:
                f.write(json.dumps({"path": failure.path, "error": str(failure)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            counts["written"] += len(kept)
            counts["unreadable"] += len(failures)
    return counts


def predict_to_file(images, out, model=None, listing=None, top_k=3, batch_size=32, tta=False,
                    reporter=None):
    """`smallcnn predict IMAGES... [--list FILE] --jsonl OUT`: the images (files and
    folders) and those of the list file, predicted into `out`."""
    from smallcnn.predict import check_counts, load
    from smallcnn.progress import Reporter

    check_counts(top_k, batch_size)
    paths = images_of(images, listing)
    classifier = load(model)
    reporter = reporter or Reporter()
    with reporter.progress(f"Predicting into {out}", len(paths)) as advance:
        counts = predict_jsonl(classifier, paths, out, top_k, batch_size, tta, advance)
    return counts, classifier.engine
