"""Likely label errors and outliers, from the base's features (`smallcnn check --label-issues`).

Every labelled image of train and val gets out-of-fold class probabilities: the images
are dealt into `folds` stratified folds, and for each fold extract's dense heads train
on the others (early-stopped on a tenth of them) and predict it, on the base's cached
features. Then confident learning (Northcutt, Jiang and Chuang, 2021), as the cleanlab
project does it by default: each class j gets a threshold, the mean probability of j
over the images labelled j; counting, for the images labelled i, which confident class
is most probable estimates how many of them are truly j; that many, those with the
largest margin p(j) - p(i), are flagged (see `label_issue_indices`). Tried first, the
plain confident-joint rule (flag an image when its most probable confident class is not
its label) found 89.2% of 130 labels flipped in cats-dogs-small's train split (precision
98.3%) where this finds 97.7% (precision 92.0%); bench/label_issues.py measures it.

Outliers are the images farthest from their nearest neighbours in feature space: the
mean cosine distance to their `neighbours` nearest other images, in the top
`1 - outlier_quantile` of the data set's own distribution. Strangers that come as a
group are each other's neighbours and escape it (bench/label_issues.py: 10 food photos
among 408 ants and bees).
"""

import dataclasses

import numpy as np

from smallcnn.errors import DataError

FOLDS = 5
NEIGHBOURS = 5
OUTLIER_QUANTILE = 0.99  # the top 1% of kNN distances


@dataclasses.dataclass
class LabelIssue:
    path: str
    split: str
    label: str
    suggested: str
    probabilities: dict  # class -> out-of-fold probability
    margin: float  # p(suggested) - p(label)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Outlier:
    path: str
    split: str
    label: str
    distance: float  # mean cosine distance to the nearest neighbours
    neighbours: list  # their paths, nearest first

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LabelReport:
    class_names: list
    images: int
    label_issues: list  # LabelIssue, most suspicious first
    outliers: list  # Outlier, farthest first
    thresholds: dict  # class -> average self-confidence
    oof_accuracy: float  # of the out-of-fold predictions
    paths: list = dataclasses.field(repr=False, default=None)
    labels: np.ndarray = dataclasses.field(repr=False, default=None)
    probabilities: np.ndarray = dataclasses.field(repr=False, default=None)
    features: np.ndarray = dataclasses.field(repr=False, default=None)  # the base's, per image

    def to_dict(self):
        return {"label_issues": [i.to_dict() for i in self.label_issues],
                "outliers": [o.to_dict() for o in self.outliers],
                "thresholds": self.thresholds, "out_of_fold_accuracy": self.oof_accuracy,
                "images": self.images}


def stratified_folds(labels, folds, seed):
    """A fold number for each label, every class dealt evenly over the folds."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return assignment


def _choose_taps(source, settings, reporter):
    """The heads read the base's intermediate taps where extract's would: where they gain
    on val (`smallcnn.train.taps`); `source.features` then serves that input."""
    from smallcnn.model import head
    from smallcnn.train import taps

    train_x, train_y = source.raw_features("train")
    taps.choose(source, settings.taps, lambda head_input: head.train(
        head_input(train_x), train_y, source.features("val"), settings,
        len(source.plan.dataset.class_names), members=settings.heads), reporter.note)


def out_of_fold_probabilities(features, labels, num_classes, settings, folds=FOLDS,
                              progress=None):
    """Each row's class probabilities from a head that never saw it; `progress` (if
    given) is called with the number of folds done."""
    from smallcnn.model import head

    features = np.asarray(features, np.float32)
    assignment = stratified_folds(labels, folds, settings.seed)
    probabilities = np.zeros((len(labels), num_classes), np.float32)
    rng = np.random.default_rng(settings.seed)
    for fold in range(folds):
        held = assignment == fold
        rest = np.flatnonzero(~held)
        rng.shuffle(rest)
        stop_on, fit_on = rest[: max(1, len(rest) // 10)], rest[len(rest) // 10:]
        weights, _ = head.train(features[fit_on], labels[fit_on],
                                (features[stop_on], labels[stop_on]), settings, num_classes,
                                members=settings.heads)
        probabilities[held] = head.probabilities(weights, features[held])
        if progress is not None:
            progress(fold + 1)
    return probabilities


def class_thresholds(probabilities, labels):
    """Each class's average self-confidence: the mean probability of the class over the
    images labelled with it."""
    return np.array([probabilities[labels == j, j].mean() if np.any(labels == j) else 1.0
                     for j in range(probabilities.shape[1])])


def confident_joint(probabilities, labels, thresholds):
    """counts[i, j]: images labelled i whose most probable confident class is j (a class
    is confident for an image when its probability reaches the class's threshold)."""
    num_classes = probabilities.shape[1]
    confident = probabilities >= thresholds[None, :]
    best = np.where(confident, probabilities, -1.0).argmax(axis=1)
    counted = confident.any(axis=1)
    joint = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(joint, (labels[counted], best[counted]), 1)
    return joint


def label_issue_indices(probabilities, labels):
    """Indices of likely label errors, most suspicious first, and their suggested classes.

    Prune by noise rate, cleanlab's default: the confident joint, calibrated so that each
    row sums to its class's number of images, estimates how many images labelled i truly
    belong to j; that many images labelled i with the largest margin p(j) - p(i) are
    flagged, for every i != j, except those whose most probable class is their label.
    Ranked by self-confidence (the label's probability), lowest first.
    """
    probabilities = np.asarray(probabilities, np.float64)
    num_classes = probabilities.shape[1]
    joint = confident_joint(probabilities, labels, class_thresholds(probabilities, labels))
    counts = np.bincount(labels, minlength=num_classes)
    calibrated = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1) * counts[:, None]
    flagged = np.zeros(len(labels), bool)
    for given in range(num_classes):
        members = np.flatnonzero(labels == given)
        for true in range(num_classes):
            count = int(round(calibrated[given, true]))
            if true == given or count == 0:
                continue
            margins = probabilities[members, true] - probabilities[members, given]
            flagged[members[np.argsort(-margins, kind="stable")[:count]]] = True
    flagged &= probabilities.argmax(axis=1) != labels
    indices = np.flatnonzero(flagged)
    indices = indices[np.argsort(probabilities[indices, labels[indices]], kind="stable")]
    others = probabilities.copy()
    others[np.arange(len(labels)), labels] = -1.0
    return indices, others.argmax(axis=1)[indices]


def nearest_neighbours(features, k=NEIGHBOURS):
    """`(indices, mean distance)`: each row's k nearest other rows by cosine distance."""
    x = np.asarray(features, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(x) - 1)
    indices = np.zeros((len(x), k), np.int64)
    distances = np.zeros(len(x), np.float32)
    for start in range(0, len(x), 1024):  # 1,024 rows of similarities at a time
        similarity = x[start : start + 1024] @ x.T
        rows = np.arange(len(similarity))
        similarity[rows, rows + start] = -np.inf  # not its own neighbour
        nearest = np.argsort(-similarity, axis=1)[:, :k]
        indices[start : start + 1024] = nearest
        distances[start : start + 1024] = 1 - np.take_along_axis(similarity, nearest, 1).mean(1)
    return indices, distances


def find_label_issues(data, settings=None, table=None, folds=FOLDS, neighbours=NEIGHBOURS,
                      outlier_quantile=OUTLIER_QUANTILE, reporter=None, before_data=None):
    """Likely label errors and outliers among the train and val images of a data set.

    Args:
        data: a data folder or table (see `smallcnn.data.dataset.find_dataset`).
        settings: a `smallcnn.train.Settings` (base, image size, head options); unset
            values take extract's defaults. The features come from extract's cache.
        table: table options, as `find_dataset` takes them (or in `settings`).
        before_data: called with the run's `smallcnn.train.session.RunPlan` (its
            settings and data set) once the data set is found, before any image is
            read: for refusals that need no analysis.

    Returns:
        `(report, dataset)`: a `LabelReport` and the `smallcnn.data.dataset.Dataset` it is about.
    """
    from smallcnn.progress import Reporter
    from smallcnn.runtime.timings import Timings
    from smallcnn.train import Settings
    from smallcnn.train.feature_store import FeatureSource
    from smallcnn.train.session import plan_run, scan

    if folds < 2:
        raise DataError(f"--folds must be at least 2. Received: {folds}")
    settings = settings or Settings()
    if table is not None:
        settings = dataclasses.replace(settings, **{k: v for k, v in
                                                    dataclasses.asdict(table).items() if v})
    # The features are extract's (and its cache's): asked of a source of features alone.
    reporter, timings = reporter or Reporter(), Timings()
    plan = plan_run("extract", data, settings, reporter, timings)
    # In float32: the labels it suggests should not hang on bf16's rounding (on a small
    # set of flat-coloured images, bf16 features lost two of four planted label errors).
    source = FeatureSource(plan, reporter, timings, precision="float32")
    if before_data is not None:
        before_data(plan)
    scan(plan, source, reporter, timings)
    s = plan.settings
    _choose_taps(source, s, reporter)
    features, labels, paths, splits = [], [], [], []
    for name in ("train", "val"):
        x, y = source.features(name)
        kept = [p for p in plan.dataset.splits[name].paths if p not in source.skipped]
        features.append(x)
        labels.append(y)
        paths += kept
        splits += [name] * len(kept)
    features, labels = np.concatenate(features), np.concatenate(labels).astype(np.int64)
    names = plan.dataset.class_names
    counts = np.bincount(labels, minlength=len(names))
    if counts.min() < folds:
        raise DataError(f"Class {names[int(counts.argmin())]!r} has {int(counts.min())} images; "
                        f"finding label errors with {folds} folds needs at least {folds} per class.")
    with reporter.progress(f"Out-of-fold probabilities ({folds} folds)", folds) as advance:
        probabilities = out_of_fold_probabilities(features, labels, len(names), s, folds,
                                                  advance)
    flagged, suggested = label_issue_indices(probabilities, labels)
    issues = [LabelIssue(paths[i], splits[i], names[labels[i]], names[j],
                         {c: float(probabilities[i, k]) for k, c in enumerate(names)},
                         float(probabilities[i, j] - probabilities[i, labels[i]]))
              for i, j in zip(flagged, suggested)]
    thresholds = class_thresholds(probabilities, labels)
    nearest, distances = nearest_neighbours(features, neighbours)
    limit = np.quantile(distances, outlier_quantile)
    far = np.flatnonzero(distances > limit)
    far = far[np.argsort(-distances[far], kind="stable")]
    outliers = [Outlier(paths[i], splits[i], names[labels[i]], float(distances[i]),
                        [paths[j] for j in nearest[i]]) for i in far]
    accuracy = float((probabilities.argmax(1) == labels).mean())
    return LabelReport(names, len(labels), issues, outliers,
                       {c: float(t) for c, t in zip(names, thresholds)}, accuracy, paths, labels,
                       probabilities, features), plan.dataset
