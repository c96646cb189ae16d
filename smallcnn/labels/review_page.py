"""The review page of `smallcnn check --label-issues --html`: each flagged image beside its
nearest neighbours (by the base's features) among the images of its given class and of the
suggested class, so a person can decide in seconds; pictures embedded, one file."""

import base64
import html
import io
from pathlib import Path

import numpy as np

from smallcnn.data.images import load_picture
from smallcnn.runtime.files import write_text

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


def thumbnail_figure(path, caption):
    """An image's embedded thumbnail, captioned (the review and suggestion pages')."""
    return (f'<figure><img src="{_thumbnail(path)}" alt="{html.escape(path)}">'
            f'<figcaption class="name">{html.escape(caption)}</figcaption></figure>')


def _group(paths):
    """Thumbnails side by side, each captioned with its file name."""
    return ('<div class="group">' + "".join(thumbnail_figure(p, Path(p).name) for p in paths)
            + "</div>")


def _issue_html(issue, given, suggested):
    """A likely label error, then its nearest images of its given and suggested classes."""
    return ('<div class="flag">' + thumbnail_figure(issue.path, issue.path) +
            f'<div><div>labelled <span class="label">{html.escape(issue.label)}</span> '
            f'({issue.probabilities[issue.label]:.0%}), suggested '
            f'<span class="label">{html.escape(issue.suggested)}</span> '
            f'({issue.probabilities[issue.suggested]:.0%})</div>'
            f'<div>nearest {html.escape(issue.label)}:</div>' + _group(given) +
            f'<div>nearest {html.escape(issue.suggested)}:</div>' + _group(suggested) +
            "</div></div>")


def _outlier_html(outlier):
    """An outlier, then the images nearest to it."""
    return ('<div class="flag">' + thumbnail_figure(outlier.path, outlier.path) +
            f'<div>labelled <span class="label">{html.escape(outlier.label)}</span>, '
            f"mean distance to its nearest images {outlier.distance:.3f}; they are:" +
            _group(outlier.neighbours[:4]) + "</div></div>")


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
        parts.append(_issue_html(
            issue, _nearest_in_class(report, features, i, names.index(issue.label)),
            _nearest_in_class(report, features, i, names.index(issue.suggested))))
    parts.append("<h2>Outliers: far from every other image</h2>")
    parts += [_outlier_html(outlier) for outlier in report.outliers]
    return write_page(out, "smallcnn label review", parts)


def write_page(out, title, parts):
    """Writes a standalone HTML page of `parts` (HTML strings) with the pages' style at
    `out` (its folder made); returns its path as a str."""
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}"
            "</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, page)
    return str(out)
