"""One self-contained HTML page about a run: data, curves, evaluation, and each
misclassified validation image with its Grad-CAM overlay. Pictures are embedded as
data: URIs, so the file can be mailed or archived on its own."""

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from smallcnn.model import runs
from smallcnn.progress import Reporter

REPORT_FILE = "report.html"
MAX_WRONG = 60  # misclassified images shown with their heatmaps

_STYLE = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 24px; color: #1f2328; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 20px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 32px; }
.sub { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
.cards { display: flex; gap: 16px; flex-wrap: wrap; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 12px 16px; min-width: 140px; }
.card .value { font-size: 24px; font-weight: 600; }
.card .label { color: #59636e; font-size: 13px; }
.wrong { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
.wrong figure { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; }
.wrong img { width: 49%; image-rendering: auto; }
.wrong figcaption { font-size: 13px; margin-top: 4px; word-break: break-all; }
.bad { color: #cf222e; font-weight: 600; }
img.plot { max-width: 100%; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 12px; }
"""


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_png(pixels):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(header, rows):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(run=None, data=None, out=None, reporter=None):
    """Writes RUN/report.html (or `out`); returns its path."""
    from smallcnn.inference.evaluate import evaluate
    from smallcnn.inference.predict import load_run

    reporter = reporter or Reporter()
    classifier = load_run(run)
    run_dir = Path(classifier.run_dir)
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text()) \
        if (run_dir / runs.METRICS_FILE).is_file() else {}
    evaluation = evaluate(run_dir, data, "val", top_wrong=MAX_WRONG, reporter=reporter,
                          classifier=classifier)
    title = f"smallcnn report: {run_dir.name}"
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _subtitle(classifier, metrics),
        _cards(_summary(evaluation, metrics)),
        *_data_section(classifier.config.get("data_counts", {}), evaluation),
        *_curves_section(run_dir, metrics),
        *_validation_section(classifier, evaluation),
        "<h2>Settings</h2><details><summary>the resolved settings of the run</summary>",
        f"<pre>{html.escape(json.dumps(classifier.config.get('settings', {}), indent=2))}"
        "</pre></details>",
        "</body></html>",
    ]
    target = Path(out) if out is not None else run_dir / REPORT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    runs.write_text(target, "\n".join(parts))
    return target


def _subtitle(classifier, metrics):
    """The command line, the date, the base and what the run ran on."""
    config = classifier.config
    ran_on = f" &middot; ran on {html.escape(metrics['ran_on'])}" if metrics.get("ran_on") else ""
    return (f"<p class=sub>{html.escape(config.get('command_line', ''))} &middot; "
            f"{html.escape(str(config.get('created', '')))} &middot; base "
            f"{html.escape(str(config.get('base')))} ({html.escape(str(config.get('weights')))}), "
            f"{classifier.image_size} px{ran_on}</p>")


def _summary(evaluation, metrics):
    """`[(label, value)]` of the figures at the top of the page."""
    wrong = evaluation.wrong
    summary = [("validation accuracy", f"{evaluation.accuracy:.2%}"),
               ("macro F1", f"{evaluation.macro_f1:.3f}"),
               ("misclassified", f"{len(wrong)} of {evaluation.images}"
                if len(wrong) < MAX_WRONG else f"{MAX_WRONG}+ of {evaluation.images}")]
    if "test_accuracy" in metrics:
        summary.append(("test accuracy", f"{metrics['test_accuracy']:.2%}"))
    if metrics.get("epochs"):
        summary.append(("epochs (kept)", f"{metrics['epochs']} ({metrics.get('best_epoch')})"))
    return summary


def _cards(summary):
    cards = "".join(f'<div class=card><div class=value>{html.escape(v)}</div>'
                    f'<div class=label>{html.escape(k)}</div></div>' for k, v in summary)
    return f"<div class=cards>{cards}</div>"


def _data_section(counts, evaluation):
    """Images per class and split (`counts`: the run's data_counts), and those left out."""
    rows = [[name, *(counts[s][i] for s in counts)] for i, name in enumerate(evaluation.classes)]
    rows.append(["total", *(sum(counts[s]) for s in counts)])
    parts = [f"<h2>Data</h2><p class=sub>{html.escape(str(evaluation.data))}</p>",
             _table(["class", *counts], rows)]
    if evaluation.skipped:
        parts.append(f"<p>{len(evaluation.skipped)} unreadable validation images left out.</p>")
    return parts


def _curves_section(run_dir, metrics):
    """The training curves, if the run has a history."""
    from smallcnn.runtime.plots import curves_figure, png_bytes

    rows = runs.read_history(run_dir)
    if not rows:
        return []
    curves = _data_uri(png_bytes(curves_figure(rows, metrics.get("best_epoch"))))
    return ["<h2>Training curves</h2>"
            f'<img class=plot src="{curves}" alt="loss and accuracy per epoch">']


def _validation_section(classifier, evaluation):
    """Per-class figures, the confusion matrix and the misclassified images."""
    from smallcnn.runtime.plots import confusion_figure, png_bytes

    confusion = _data_uri(png_bytes(confusion_figure(
        evaluation.confusion_matrix, evaluation.classes,
        f"validation: {evaluation.accuracy:.1%} of {evaluation.images} images")))
    per_class = [[c["class"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}",
                  c["support"]] for c in evaluation.per_class]
    wrong = evaluation.wrong
    return [
        "<h2>Validation: per class</h2>",
        _table(["class", "precision", "recall", "F1", "support"], per_class),
        f'<img class=plot src="{confusion}" alt="confusion matrix" style="max-width:560px">',
        f"<h2>Misclassified validation images ({len(wrong)})</h2>",
        "<p class=sub>Most confident mistakes first; right: Grad-CAM of the predicted class "
        "(where the model looked).</p>" if wrong else "<p>None: every validation image is "
        "classified right.</p>",
        f"<div class=wrong>{''.join(_wrong_figures(classifier, wrong))}</div>",
    ]


def _wrong_figures(classifier, wrong):
    """Each misclassified image beside its Grad-CAM overlay, captioned."""
    from smallcnn.data.images import load_images
    from smallcnn.visualize import gradcam_overlays

    if not wrong:
        return []
    pixels, _ = load_images([w["path"] for w in wrong], classifier.image_size)
    overlays, _, _ = gradcam_overlays(classifier, pixels)
    figures = []
    for item, image, heat in zip(wrong, pixels, overlays):
        name = html.escape(Path(item["path"]).name)
        figures.append(
            f'<figure><img src="{_data_uri(_image_png(image))}" alt="{name}">'
            f'<img src="{_data_uri(_image_png(heat))}" alt="Grad-CAM of {name}">'
            f"<figcaption><b>{name}</b><br>true {html.escape(item['true'])}, predicted "
            f"<span class=bad>{html.escape(item['predicted'])}</span> "
            f"({item['probability']:.1%})</figcaption></figure>"
        )
    return figures
