"""Acting on `smallcnn check --label-issues`: a page to review the flags, and a corrected
copy of the data set with the relabels a person accepted.

    smallcnn check DATA --label-issues --html review.html
    smallcnn check DATA --label-issues --fix DATA-fixed --accept accepted.txt

The page shows each flagged image beside its nearest neighbours (by the base's
features) among the images of its given class and of the suggested class, so a person
can decide in seconds. `--fix` never touches DATA: it writes a new folder (or, for a
table, a new table) where only the files listed in --accept carry the suggested label.
"""

import base64
import csv
import html
import io
import os
import shutil
from pathlib import Path

import numpy as np

from smallcnn.errors import UsageError
from smallcnn.images import load_picture

THUMBNAIL = 112  # pixels, longer side
NEIGHBOURS_SHOWN = 3  # per class

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1f2328; }
.flag { display: flex; gap: 18px; align-items: flex-start; border-bottom: 1px solid #d0d7de;
        padding: 12px 0; }
.flag figure { margin: 0; }
.flag img { height: 112px; border-radius: 4px; }
.group { display: flex; gap: 4px; }
.name { font-size: 12px; color: #59636e; word-break: break-all; max-width: 260px; }
.label { font-weight: 600; }
h2 { margin-top: 28px; }
"""


def _thumbnail(path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(load_picture(path, THUMBNAIL)).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _nearest_in_class(report, features, index, label):
    """Paths of the images labelled `label` nearest to image `index`."""
    members = np.flatnonzero(report.labels == label)
    members = members[members != index]
    similarity = features[members] @ features[index]
    return [report.paths[i] for i in members[np.argsort(-similarity)[:NEIGHBOURS_SHOWN]]]


def _figure(path, caption):
    return (f'<figure><img src="{_thumbnail(path)}" alt="{html.escape(path)}">'
            f'<figcaption class="name">{html.escape(caption)}</figcaption></figure>')


def review_page(report, out):
    """Writes the review page of a `LabelReport`."""
    features = np.asarray(report.features, np.float32)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    index_of = {path: i for i, path in enumerate(report.paths)}
    names = report.class_names
    parts = [f"<h1>Label review: {len(report.label_issues)} likely label error(s), "
             f"{len(report.outliers)} outlier(s) among {report.images} images</h1>",
             "<p>Each flagged image, then the images nearest to it by the base's features "
             "among those labelled with its given class and with the suggested one. To "
             "relabel some: list their paths, one per line, in a file, and run <code>smallcnn "
             "check DATA --label-issues --fix NEW_FOLDER --accept FILE</code>.</p>",
             "<h2>Likely label errors</h2>"]
    for issue in report.label_issues:
        i = index_of[issue.path]
        given = _nearest_in_class(report, features, i, names.index(issue.label))
        suggested = _nearest_in_class(report, features, i, names.index(issue.suggested))
        parts.append(
            '<div class="flag">' + _figure(issue.path, issue.path) +
            f'<div><div>labelled <span class="label">{html.escape(issue.label)}</span> '
            f'({issue.probabilities[issue.label]:.0%}), suggested '
            f'<span class="label">{html.escape(issue.suggested)}</span> '
            f'({issue.probabilities[issue.suggested]:.0%})</div>'
            f'<div>nearest {html.escape(issue.label)}:</div><div class="group">' +
            "".join(_figure(p, Path(p).name) for p in given) +
            f'</div><div>nearest {html.escape(issue.suggested)}:</div><div class="group">' +
            "".join(_figure(p, Path(p).name) for p in suggested) + "</div></div></div>")
    parts.append("<h2>Outliers: far from every other image</h2>")
    for outlier in report.outliers:
        parts.append('<div class="flag">' + _figure(outlier.path, outlier.path) +
                     f'<div>labelled <span class="label">{html.escape(outlier.label)}</span>, '
                     f"mean distance to its nearest images {outlier.distance:.3f}; they are:"
                     '<div class="group">' +
                     "".join(_figure(p, Path(p).name) for p in outlier.neighbours[:4]) +
                     "</div></div></div>")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>smallcnn "
            f"label review</title><style>{STYLE}</style></head><body>{''.join(parts)}"
            "</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(out)
    return str(out)


def read_accepted(path, report):
    """{image path: suggested class} for the paths listed in `path` (one per line)."""
    flagged = {os.path.abspath(i.path): i for i in report.label_issues}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"Cannot read --accept {str(path)!r} ({error}).") from None
    accepted = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        issue = flagged.get(os.path.abspath(line))
        if issue is None:
            raise UsageError(f"Line {number} of --accept {str(path)!r}: {line!r} is not one of "
                             "the likely label errors found now; list only flagged images.")
        accepted[issue.path] = issue.suggested
    return accepted


def write_fixed(dataset, accepted, out, table=None):
    """A copy of the data set in `out` with the `accepted` relabels: the same layout of
    folders, the files copied; or, for a table, the same table with those labels changed.

    Returns:
        The folder (or table) written.
    """
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--fix {str(out)!r} exists and is not empty; name a new folder.")
    inside = Path(dataset.root).resolve()
    if out.resolve() == inside or inside in out.resolve().parents:
        raise UsageError(f"--fix {str(out)!r} is inside the data set; name a folder outside it.")
    out.mkdir(parents=True, exist_ok=True)
    if dataset.layout == "csv table":
        return _fixed_table(dataset, accepted, out, table)
    class_roots = _class_roots(dataset)
    copies = []  # (source, target, relabelled)
    for split in dataset.splits.values():
        for path, label in zip(split.paths, split.labels):
            name = dataset.class_names[label]
            relative = Path(path).relative_to(class_roots[split.name, name])
            folder = [] if dataset.layout == "class folders" else [_split_folder(dataset, split)]
            copies.append((path, out.joinpath(*folder, accepted.get(path, name), relative),
                           f"-from-{name}" if path in accepted else None))
    # The relabelled files last, each under a name that no file of its new class has.
    for path, target, mark in sorted(copies, key=lambda copy: copy[2] is not None):
        if mark is not None:
            target = _free_name(target, mark)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return str(out)


def _free_name(target, mark):
    """`target` if no file is there yet, else the first free of target+mark,
    target+mark-2, ..."""
    candidate, number = target, 1
    while candidate.exists():
        number += 1
        tail = mark if number == 2 else f"{mark}-{number - 1}"
        candidate = target.with_name(f"{target.stem}{tail}{target.suffix}")
    return candidate


def _split_folder(dataset, split):
    """The name of a split's folder in the data set (val may be validation/)."""
    if split.name != "val":
        return split.name
    return "validation" if (Path(dataset.root) / "validation").is_dir() else "val"


def _class_roots(dataset):
    """{(split, class): the folder its files are under}."""
    root = Path(dataset.root)
    roots = {}
    for split in dataset.splits.values():
        for name in dataset.class_names:
            if dataset.layout == "class folders":
                roots[split.name, name] = root / name
            else:
                roots[split.name, name] = root / _split_folder(dataset, split) / name
    return roots


def _fixed_table(dataset, accepted, out, options):
    """The data set's table, written into `out` with the accepted labels, its file names
    made relative to `out`."""
    from smallcnn.table import TableOptions, _columns, _delimiter, _text

    source = Path(dataset.data)
    if not source.is_file():
        raise UsageError("--fix with --labels: give the table as DATA (and --images FOLDER) "
                         "instead.")
    text = _text(source)
    delimiter = _delimiter(text)
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    columns = _columns([c.strip() for c in rows[0]], source, options or TableOptions(),
                       delimiter)
    relabel = {os.path.normpath(p): label for p, label in accepted.items()}
    for row in rows[1:]:
        if len(row) <= max(columns.values()):
            continue
        file = os.path.normpath(Path(dataset.root) / row[columns["path"]].strip())
        row[columns["path"]] = os.path.relpath(file, out)
        if file in relabel:
            row[columns["label"]] = relabel[file]
    target = out / source.name
    with open(target, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return str(target)


def check_labels(data, settings=None, table=None, folds=None, html_out=None, fix=None,
                 accept=None, reporter=None):
    """`smallcnn check DATA --label-issues`: finds likely label errors and outliers, and
    writes the review page (`html_out`) and the corrected copy (`fix`, with the paths
    listed in `accept`), each if asked.

    Returns:
        `(report, dataset, written)`: the `LabelReport`, the data set, and the paths written.
    """
    from smallcnn.label_issues import FOLDS, find_label_issues

    if (fix is None) != (accept is None):
        raise UsageError("--fix DIR and --accept FILE go together: the copy takes the "
                         "relabels listed in FILE.")
    if accept is not None and not Path(accept).is_file():
        raise UsageError(f"--accept {str(accept)!r} is not a file (one image path per line).")
    if fix is not None and Path(fix).exists() and any(Path(fix).iterdir()):
        raise UsageError(f"--fix {str(fix)!r} exists and is not empty; name a new folder.")
    report, dataset = find_label_issues(data, settings, table, folds or FOLDS,
                                        reporter=_AfterCheck(reporter))
    written = []
    if html_out is not None:
        written.append(review_page(report, html_out))
    if fix is not None:
        written.append(write_fixed(dataset, read_accepted(accept, report), fix, table))
    return report, dataset, written


class _AfterCheck:
    """A reporter for the analysis that follows `smallcnn check`'s own tables: the data
    set and its check are not shown twice."""

    def __init__(self, reporter):
        self._reporter = reporter

    def dataset(self, dataset):
        pass

    def check(self, report):
        pass

    def __getattr__(self, name):
        return getattr(self._reporter, name)
