"""The numbers to read before trusting a model: accuracy, per-class precision, recall
and F1, the confusion matrix, and the images it gets most confidently wrong."""

import dataclasses
from pathlib import Path

import numpy as np

from smallcnn.errors import DataError, UsageError
from smallcnn.model import runs
from smallcnn.progress import Reporter

CONFUSION_FILE = "confusion.png"
SPLITS = ("val", "test", "train")  # what --split takes; the first is the default
TOP_WRONG = 10  # the most confidently wrong images listed


@dataclasses.dataclass
class Evaluation:
    run_dir: str
    data: str
    split: str
    classes: list
    accuracy: float
    per_class: list  # [{"class", "precision", "recall", "f1", "support"}], in class order
    confusion_matrix: list  # rows: true classes; columns: predicted classes
    wrong: list  # [{"path", "true", "predicted", "probability"}], most confident first
    images: int
    skipped: list  # [[path, reason]] of unreadable images
    confusion_png: str = None

    @property
    def macro_f1(self):
        return float(np.mean([c["f1"] for c in self.per_class]))

    def to_dict(self):
        return {**dataclasses.asdict(self), "macro_f1": self.macro_f1}


def scores(true, predicted, num_classes):
    """Confusion matrix (rows true, columns predicted) and per-class precision, recall, F1,
    support. A class never predicted has precision 0; one absent from `true`, recall 0."""
    true = np.asarray(true, dtype=int)
    predicted = np.asarray(predicted, dtype=int)
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (true, predicted), 1)
    rows = []
    for c in range(num_classes):
        hits = matrix[c, c]
        predicted_c = matrix[:, c].sum()
        support = matrix[c].sum()
        precision = hits / predicted_c if predicted_c else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": float(precision), "recall": float(recall), "f1": float(f1),
                     "support": int(support)})
    return matrix, rows


def split_of(config, data=None, split=SPLITS[0], table=None):
    """The data set of a run (or `data`) and its split to evaluate on."""
    from smallcnn.data.dataset import dataset_of_run

    dataset = dataset_of_run(config, data, table)
    if split not in dataset.splits:
        have = ", ".join(dataset.splits)
        raise DataError(f"{dataset.root!r} has no {split} split (it has: {have}).")
    return dataset, dataset.splits[split]


def evaluate(run=None, data=None, split=SPLITS[0], top_wrong=TOP_WRONG, out=None,
             reporter=None, classifier=None, table=None, tta=False):
    """Evaluates a run's model on a split of its data set (or of `data`).

    Args:
        run: a run folder; default the most recent run.
        data: a data folder with the model's classes; default the one the run trained on.
        split: one of `SPLITS`: 'val', 'test' or 'train'.
        top_wrong: how many of the most confidently wrong images to list.
        out: folder for confusion.png; default the run folder.
        table: a `smallcnn.data.table.TableOptions` for `data` given as a table (or a folder
            with `labels`); default the options the run recorded.
        tta: average over test-time augmented views (True, or a number of views; see
            `smallcnn.inference.tta`).

    Returns:
        An `Evaluation`.
    """
    from smallcnn.inference.predict import load_run
    from smallcnn.inference.tta import views_of
    from smallcnn.runtime.plots import confusion_figure, save_figure

    reporter = reporter or Reporter()
    if split not in SPLITS:
        raise UsageError(f"--split must be one of: {', '.join(SPLITS)}. Received: {split!r}")
    if classifier is None:
        classifier = load_run(run)
    run_dir = classifier.run_dir
    config = runs.read_config(run_dir)
    dataset, chosen = split_of(config, data, split, table)
    with reporter.progress(f"Predicting the {split} images", len(chosen)) as advance:
        probabilities, kept, failures = classifier.probabilities_of_files(
            chosen.paths, progress=advance, tta_views=views_of(tta))
    if not len(kept):
        raise DataError(f"No readable image in the {split} split of {dataset.root!r}.")
    paths = [chosen.paths[i] for i in kept]
    true = chosen.labels[kept]
    predicted = probabilities.argmax(1)
    classes = classifier.class_names
    matrix, per_class = scores(true, predicted, len(classes))
    per_class = [{"class": name, **row} for name, row in zip(classes, per_class)]
    wrong = np.flatnonzero(predicted != true)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:top_wrong]
    result = Evaluation(
        run_dir=str(run_dir), data=dataset.root, split=split, classes=classes,
        accuracy=float(np.mean(predicted == true)), per_class=per_class,
        confusion_matrix=matrix.tolist(),
        wrong=[{"path": paths[i], "true": classes[true[i]], "predicted": classes[predicted[i]],
                "probability": float(probabilities[i, predicted[i]])} for i in wrong],
        images=len(kept), skipped=[[f.path, f.reason] for f in failures],
    )
    folder = Path(out) if out is not None else Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (CONFUSION_FILE if split == "val" else f"confusion-{split}.png")
    save_figure(confusion_figure(matrix, classes,
                                 f"{split}: {result.accuracy:.1%} of {result.images} images"),
                target)
    result.confusion_png = str(target)
    return result
