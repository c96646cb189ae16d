"""Showing the library's progress in a terminal with rich: tables, bars, epoch lines."""

import contextlib
import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from smallcnn.progress import Reporter


def _console(**kwargs):
    console = Console(highlight=False, **kwargs)
    # COLUMNS=0 makes a width of 0, which shows nothing.
    if console.width < 1 or not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=120, **kwargs)  # logs and pipes: no 80-column wrap
    return console


stdout = _console()
stderr = _console(stderr=True)


def dataset_table(dataset):
    counts = dataset.counts()
    table = Table()
    table.add_column("class")
    for split in counts:
        table.add_column(split, justify="right")
    for index, name in enumerate(dataset.class_names):
        table.add_row(name, *(str(counts[split][index]) for split in counts))
    table.add_row("[bold]total", *(f"[bold]{sum(counts[split])}" for split in counts))
    return table


class RichReporter(Reporter):
    def __init__(self, console=stdout, errors=stderr):
        self.console = console
        self.errors = errors

    def dataset(self, dataset):
        self.console.print(f"[bold]{dataset.root}[/bold] ({dataset.layout})")
        self.console.print(dataset_table(dataset))
        if dataset.val_split:
            self.console.print(
                f"No validation folder: held out {dataset.val_split:.0%} of each class "
                "for validation (--val-split, --seed)."
            )

    def check(self, report):
        for line in report.warnings:
            self.warning(line)
        for bad in report.unreadable[:20]:
            self.warning(f"Skipping {bad['path']}: {bad['reason']}.")
        if len(report.unreadable) > 20:
            self.warning(f"... and {len(report.unreadable) - 20} more unreadable files "
                         "(smallcnn check DATA lists them all).")

    @contextlib.contextmanager
    def progress(self, description, total):
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.errors,
            transient=True,
            disable=not self.errors.is_terminal,
        )
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)

    def epoch(self, phase, epoch, epochs, logs):
        parts = [f"{phase} epoch {epoch:>3}/{epochs}"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4f}")
        parts.append(f"{logs.get('seconds', 0.0):.1f}s")
        self.console.print("  ".join(parts), soft_wrap=True)

    def note(self, text):
        self.console.print(text)

    def warning(self, text):
        self.errors.print(f"[yellow]warning:[/yellow] {text}", soft_wrap=True)


def summary_table(result):
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics = result.metrics
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.2%}" if "accuracy" in key else f"{value:.4f}")
    table.add_row("epochs (best)", f"{metrics['epochs']} ({metrics.get('best_epoch')})")
    if result.trainable_params is not None:
        table.add_row("trainable parameters", f"{result.trainable_params:,}")
    if metrics.get("skipped_images"):
        table.add_row("unreadable images skipped", str(metrics["skipped_images"]))
    if metrics.get("ran_on"):
        engine = f"; base engine {metrics['engine']}" if metrics.get("engine") else ""
        table.add_row("ran on", f"{metrics['ran_on']}{engine}")
    table.add_row("seconds", f"{metrics['seconds']:.1f}")
    if metrics.get("timings"):
        from smallcnn.runtime.timings import summary

        table.add_row("where the time went", summary(metrics["timings"]))
    imbalance = metrics.get("class_imbalance") or 1
    if imbalance > 3:
        weighted = "balanced" if metrics.get("class_weights") else "none"
        table.add_row("class imbalance", f"{imbalance:.1f}x (--class-weight {weighted})")
    return table


def cache_table(described):
    """`smallcnn cache info` as a table: entries and size of each part, and the cap."""
    table = Table(title=f"cache: {described['root']}")
    table.add_column("part")
    table.add_column("entries", justify="right")
    table.add_column("size", justify="right")
    for part, figures in described["parts"].items():
        table.add_row(part, str(figures["entries"]), f"{figures['bytes'] / 2**20:.1f} MB")
    table.add_row("all", str(sum(p["entries"] for p in described["parts"].values())),
                  f"{described['bytes'] / 2**20:.1f} MB of {described['max_bytes'] / 2**30:.1f} GB")
    return table


def export_table(result):
    table = Table()
    table.add_column(f"{result.format} export" + ("" if result.quantize == "none"
                                                  else f" ({result.quantize})"))
    table.add_column("value", justify="right")
    table.add_row("file size", f"{result.size_bytes / 1e6:.2f} MB")
    table.add_row("checked on", f"{result.images} validation images")
    table.add_row("top-1 agreement with the run's model", f"{result.agreement:.2%}")
    table.add_row("largest probability difference", f"{result.max_difference:.4f}")
    table.add_row("one-image latency", f"{result.latency_ms:.1f} ms")
    table.add_row("seconds", f"{result.seconds:.1f}")
    return table


def evaluation_tables(evaluation):
    """Renderables for `smallcnn evaluate`: per-class numbers, confusion matrix, mistakes."""
    from rich.console import Group

    per_class = Table()
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in evaluation.per_class:
        per_class.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                          f"{row['f1']:.3f}", str(row["support"]))
    confusion = Table()
    confusion.add_column("true \\ predicted")
    for name in evaluation.classes:
        confusion.add_column(name, justify="right")
    for name, row in zip(evaluation.classes, evaluation.confusion_matrix):
        confusion.add_row(name, *(str(v) for v in row))
    parts = [f"[bold]{evaluation.split}[/bold]: accuracy {evaluation.accuracy:.2%} of "
             f"{evaluation.images} images, macro F1 {evaluation.macro_f1:.3f}", per_class,
             "Confusion matrix (rows: true class, columns: predicted class)", confusion]
    if evaluation.wrong:
        parts.append("Most confidently wrong")
        wrong = Table()
        for column in ("image", "true", "predicted", "probability"):
            wrong.add_column(column, justify="right" if column == "probability" else "left",
                             overflow="fold")
        for w in evaluation.wrong:
            wrong.add_row(_short(w["path"]), w["true"], w["predicted"], f"{w['probability']:.1%}")
        parts.append(wrong)
    return Group(*parts)


def _short(path):
    """A path relative to the working folder when it is inside it."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path


def predictions_table(predictions):
    table = Table()
    table.add_column("image", overflow="fold")
    table.add_column("label")
    table.add_column("probability", justify="right")
    table.add_column("top")
    for p in predictions:
        top = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in p.top)
        table.add_row(_short(p.path), p.label, f"{p.probability:.1%}", top)
    return table


def check_tables(report, limit=50):
    """Renderables for `smallcnn check`: counts, what was found, what is wrong."""
    from rich.console import Group

    def rel(path):
        return os.path.relpath(path, report.root)

    counts = Table()
    counts.add_column("class")
    for split in report.counts:
        counts.add_column(split, justify="right")
    for index, name in enumerate(report.class_names):
        counts.add_row(name, *(str(report.counts[split][index]) for split in report.counts))
    counts.add_row("[bold]total", *(f"[bold]{sum(c)}" for c in report.counts.values()))
    parts = [f"[bold]{report.root}[/bold] ({report.layout}): {report.files} files; readable "
             "images per class (paths below are relative to it):", counts]
    if report.sizes:
        s = report.sizes
        parts.append(f"sizes: width {s['min_width']}-{s['max_width']} px, height "
                     f"{s['min_height']}-{s['max_height']} px; modes: "
                     + ", ".join(f"{m} {n}" for m, n in sorted(report.modes.items()))
                     + "; formats: "
                     + ", ".join(f"{m} {n}" for m, n in sorted(report.formats.items())))
    if report.unreadable:
        bad = Table(title=f"{len(report.unreadable)} unreadable file(s)", title_justify="left")
        bad.add_column("file", overflow="fold")
        bad.add_column("split")
        bad.add_column("reason", overflow="fold")
        for item in report.unreadable:
            bad.add_row(rel(item["path"]), item["split"], item["reason"])
        parts.append(bad)
    if report.duplicates:
        dup = Table(title=f"{len(report.duplicates)} duplicate pair(s), "
                          f"{len(report.leaks)} across splits", title_justify="left")
        dup.add_column("file", overflow="fold")
        dup.add_column("duplicate of", overflow="fold")
        dup.add_column("splits")
        dup.add_column("kind")
        for item in report.duplicates[:limit]:
            splits = item["split_a"] if item["split_a"] == item["split_b"] else (
                f"[bold red]{item['split_a']} / {item['split_b']}[/bold red]")
            kind = "exact" if item["kind"] == "exact" else f"near ({item['distance']} bits)"
            dup.add_row(rel(item["a"]), rel(item["b"]), splits, kind)
        if len(report.duplicates) > limit:
            dup.caption = f"first {limit} shown; --json lists all"
        parts.append(dup)
    for line in report.warnings:
        parts.append(f"[yellow]warning:[/yellow] {line}")
    parts.append("[green]The data can be trained on.[/green]" if report.trainable
                 else f"[bold red]Cannot train:[/bold red] {report.reason}")
    return Group(*parts)


def label_issue_tables(report, root, limit=30):
    """Renderables for `smallcnn check --label-issues`: the likely label errors and the
    outliers, most suspicious first (paths relative to the data folder)."""
    from rich.console import Group

    def rel(path):
        return os.path.relpath(path, root)

    issues = Table(title=f"{len(report.label_issues)} likely label error(s) among "
                         f"{report.images} images (out-of-fold accuracy "
                         f"{report.oof_accuracy:.2%})")
    for column in ("#", "image", "split", "label", "suggested", "p(label)", "p(suggested)"):
        issues.add_column(column, justify="right" if column.startswith(("#", "p(")) else "left")
    for rank, issue in enumerate(report.label_issues[:limit], start=1):
        issues.add_row(str(rank), rel(issue.path), issue.split, issue.label, issue.suggested,
                       f"{issue.probabilities[issue.label]:.1%}",
                       f"{issue.probabilities[issue.suggested]:.1%}")
    outliers = Table(title=f"{len(report.outliers)} outlier(s): farthest from every other image")
    for column in ("#", "image", "split", "label", "distance", "nearest image"):
        outliers.add_column(column, justify="right" if column in ("#", "distance") else "left")
    for rank, outlier in enumerate(report.outliers[:limit], start=1):
        outliers.add_row(str(rank), rel(outlier.path), outlier.split, outlier.label,
                         f"{outlier.distance:.3f}", rel(outlier.neighbours[0]))
    more = len(report.label_issues) - limit
    note = f"... and {more} more (--json or --html lists them all)" if more > 0 else ""
    return Group(issues, *( [note] if note else []), outliers)
