"""The page of `smallcnn suggest --html`: each suggested image with the model's guess, and
beside it its nearest labelled images (by the base's features) with their labels, so a
person sees what the model has to go on; pictures embedded, one file. The thumbnails and
figures are the review page's."""

import html
from pathlib import Path

import numpy as np

from smallcnn.labels.review_page import NEIGHBOURS_SHOWN, thumbnail_figure, write_page
from smallcnn.labels.strategies import normalised

TITLE = "smallcnn suggestions"  # the page's title: suggest --html replaces only such a page


def _nearest(found, labelled, index):
    """`(path, class name)` of the labelled images nearest to pool image `index`."""
    if labelled is None or not len(labelled.labels):
        return []
    similarity = normalised(labelled.features) @ normalised(found.features[index : index + 1])[0]
    order = np.argsort(-similarity, kind="stable")[:NEIGHBOURS_SHOWN]
    return [(labelled.paths[i], found.class_names[int(labelled.labels[i])]) for i in order]


def _suggestion_html(number, suggestion, neighbours):
    guess = ("no model yet" if suggestion.guess is None else
             f'guess <span class="label">{html.escape(suggestion.guess)}</span> '
             f"({suggestion.probability:.0%})")
    parts = ['<div class="flag">',
             thumbnail_figure(suggestion.path, f"{number}. {suggestion.path}"),
             f"<div><div>{guess}</div>"]
    if neighbours:
        parts.append("<div>nearest labelled images:</div><div class=\"group\">")
        parts += [thumbnail_figure(path, f"{label}: {Path(path).name}")
                  for path, label in neighbours]
        parts.append("</div>")
    parts.append("</div></div>")
    return "".join(parts)


def suggest_page(result, found, ranked, labelled, out):
    """Writes the page of a `suggest.Suggestions` (`ranked`: its rows' indices in `found`,
    the `PoolFeatures`; `labelled`: the `LabelledSet`, or None)."""
    parts = [f"<h1>Suggested for labelling: {len(result.suggestions)} of {result.pool} "
             f"images ({html.escape(result.strategy)})</h1>",
             "<p>Most worth labelling first. Fill in the label column of the table that "
             "<code>smallcnn suggest --out</code> wrote, and append its rows to the data "
             "set's table.</p>"]
    for number, (suggestion, index) in enumerate(zip(result.suggestions, ranked), start=1):
        parts.append(_suggestion_html(number, suggestion, _nearest(found, labelled, index)))
    return write_page(out, TITLE, parts)
