"""`extract --unlabeled POOL`: learning from unlabelled images by self-training.

The heads train on the labelled features as `extract` trains them; then, for a few
rounds, their confident guesses on the pool's features (computed and cached as a
split's) join the training rows with those guesses as labels, and the heads train again
from scratch. Each round tries every candidate confidence threshold and keeps the one
whose heads do best on the validation split (never the test split). A round is kept only
if it gains beyond noise on val (`gains`: at least `MIN_VAL_GAIN` more val images right
and a val loss no higher; val also chose the threshold and the round, so a smaller gain
is optimistic); a pool that does not help leaves the run as it would have been without it.

A pool that shares images (the same file, or identical or near-identical content, as
`smallcnn.data.check` finds them) with the validation or test split is refused before
any work: its pseudo-labels would be judged by the images they came from.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np

from smallcnn.data.dataset import Dataset, Split
from smallcnn.data.images import is_image_file
from smallcnn.data.listing import folder_images, listed_paths
from smallcnn.errors import UsageError
from smallcnn.model import head as numpy_head

POOL_SPLIT = "unlabeled"  # the pool's name among the feature source's splits
ROUNDS = 3  # most rounds of pseudo-labelling; fewer when a round does not gain on val
# Candidate confidences (the merged heads' top probability) a pool image needs to be used;
# each round keeps the one whose retrained heads do best on val.
THRESHOLDS = (0.5, 0.7, 0.9)
# At most this many pool images per class, as a multiple of the largest labelled class:
# an easy class with many confident guesses does not swamp the rest.
PER_CLASS_FACTOR = 4
# A round is kept only if its heads get at least this many more val images right than the
# heads it would replace, with a val loss no higher (`gains`): on ants-bees, 16 cats and
# dogs pseudo-labelled as ants were kept for one val image more.
MIN_VAL_GAIN = 2
EXAMPLES = 3  # pool files named in a refusal or note


@dataclasses.dataclass
class Pool:
    """The unlabelled images to learn from: a split of usable files (labels -1), their
    SHA-1 digests, and what was left out of it."""

    source: str  # what --unlabeled named
    split: Split
    digests: dict
    unreadable: list  # [(path, reason)]
    in_train: list  # paths that are (copies of) DATA's training images


def pool_files(pool):
    """The image files of POOL: a folder (searched recursively), one image file, or a list
    file, one path a line (as predict --list reads it; relative paths from the current
    folder). Listed paths are kept as written, missing ones included: the check names
    them unreadable."""
    path = Path(pool)
    if path.is_dir():
        found = folder_images(path)
    elif path.is_file():
        found = [str(path)] if is_image_file(path) else listed_paths(path, "the --unlabeled list")
    else:
        raise UsageError(f"--unlabeled {str(pool)!r}: no such folder or list file; give a "
                         "folder of images (searched recursively) or a text file of paths.")
    if not found:
        raise UsageError(f"--unlabeled {str(pool)!r} holds no image (jpg, png, bmp, gif, "
                         "webp); give a folder of images or a text file of their paths.")
    return list(dict.fromkeys(found))


def read_pool(dataset, pool, reporter):
    """Checks POOL against `dataset` with the data check's duplicate detection, before any
    image is decoded: refuses a pool that shares images with a split other than train,
    leaves out (with a note) its copies of training images and (named) its unreadable files.
    """
    from smallcnn.data.check import check_dataset

    paths = pool_files(pool)
    labels = np.zeros(len(paths), np.int32)  # the check tallies them under a class: unused
    both = Dataset(dataset.root, dataset.class_names,
                   {**dataset.splits, POOL_SPLIT: Split(POOL_SPLIT, paths, labels)},
                   dataset.layout)
    report = check_dataset(both, reporter)
    in_pool = set(paths)
    held_out, in_train = [], []
    for pair in report.duplicates:
        ends = [(pair["a"], pair["split_a"]), (pair["b"], pair["split_b"])]
        pooled = [p for p, split in ends if split == POOL_SPLIT and p in in_pool]
        others = [(p, split) for p, split in ends if split != POOL_SPLIT]
        if not pooled or not others:
            continue
        (other, split), = others
        (held_out if split != "train" else in_train).append((pooled[0], other, split))
    if held_out:
        pooled, other, split = held_out[0]
        count = len({p for p, _, _ in held_out})
        raise UsageError(
            f"--unlabeled {str(pool)!r} shares {count} image(s) with DATA's validation or test "
            f"split (the same file, or identical or near-identical content), e.g. {pooled} and "
            f"{other} ({split}); take them out of the pool: images that judge the model "
            "cannot teach it.")
    dropped = sorted({p for p, _, _ in in_train})
    if dropped:
        reporter.note(f"{len(dropped)} pool image(s) are DATA's training images (or copies): "
                      f"left out of the pool, e.g. {', '.join(dropped[:EXAMPLES])}.")
    unreadable = [(bad["path"], bad["reason"]) for bad in report.unreadable
                  if bad["split"] == POOL_SPLIT]
    for path, reason in unreadable:
        reporter.warning(f"Skipping {path}: {reason}.")
    left_out = set(dropped) | {path for path, _ in unreadable}
    kept = [p for p in paths if p not in left_out]
    if not kept:
        raise UsageError(f"There is no image of --unlabeled {str(pool)!r} to learn from: "
                         f"{len(unreadable)} unreadable, {len(dropped)} of DATA's training "
                         "images (or copies); give new images of the classes.")
    split = Split(POOL_SPLIT, kept, np.full(len(kept), -1, np.int32))
    return Pool(os.path.abspath(pool), split, {p: report.digests[p] for p in kept},
                unreadable, dropped)


def pseudo_labels(probabilities, threshold, cap):
    """`(rows, labels)`: the pool rows whose top probability reaches `threshold`, with their
    top class, at most `cap` per class (the most confident)."""
    confidence = probabilities.max(axis=1)
    guesses = probabilities.argmax(axis=1)
    rows = []
    for label in range(probabilities.shape[1]):
        candidates = np.nonzero((guesses == label) & (confidence >= threshold))[0]
        rows.append(candidates[np.argsort(-confidence[candidates], kind="stable")][:cap])
    rows = np.sort(np.concatenate(rows)).astype(np.int64)
    return rows, guesses[rows].astype(np.int32)


def per_class_cap(labels, num_classes):
    """The most pool images one class may take: `PER_CLASS_FACTOR` x the largest labelled
    class of `labels` (the training split's)."""
    return PER_CLASS_FACTOR * int(np.bincount(labels, minlength=num_classes).max())


def gains(score, than, val_images):
    """The keep rule: whether val `(loss, accuracy)` `score` gains beyond noise on `than`,
    over `val_images` val images: at least `MIN_VAL_GAIN` more of them right, and a val
    loss no higher. A pool that does not gain so leaves the supervised heads."""
    more_right = round((score[1] - than[1]) * val_images)
    return more_right >= MIN_VAL_GAIN and score[0] <= than[0]


def _better(score, than):
    """Whether val `(loss, accuracy)` `score` beats `than` among one round's thresholds:
    a higher accuracy, or the same with a lower loss."""
    return score[1] > than[1] or (score[1] == than[1] and score[0] < than[0])


def self_train(supervised, train, val, pool_x, fit, class_names, cap, stopped=lambda: False,
               note=lambda text: None):
    """Self-training from the `supervised` head weights.

    Args:
        supervised: the heads trained on the labelled rows alone.
        train: `(features, labels)` the heads trained on; val: `(features, labels)`.
        pool_x: the pool's features.
        fit: `fit(x, y)` trains heads from scratch as `extract` does: `(weights, history)`.
        class_names: for the per-class counts.
        cap: the most pool images of one class a round uses (see `per_class_cap`).
        stopped: true once training should end (Ctrl-C): the best heads so far are kept.
        note: one line per round.

    Returns:
        `(weights, histories, record)`: the heads kept, the training histories of the kept
        rounds (none when the supervised heads are kept) and what metrics.json records.
    """
    train_x, train_y = train
    best = current = supervised
    best_score = supervised_score = numpy_head.evaluate(supervised, *val)
    rounds, histories, kept_round = [], [], 0
    for number in range(1, ROUNDS + 1):
        if stopped() or not len(pool_x) or best_score[1] >= 1.0:  # nothing left to gain
            break
        guesses = numpy_head.probabilities(current, pool_x)
        trial = _best_threshold(guesses, train_x, train_y, val, pool_x, fit, cap)
        if trial is None:  # no pool image is confident enough at any threshold
            break
        weights, history, score, threshold, labels = trial
        per_class = np.bincount(labels, minlength=len(class_names))
        rounds.append({"round": number, "threshold": threshold, "pool_images_used": len(labels),
                       "per_class": dict(zip(class_names, per_class.tolist())),
                       "val_accuracy": score[1], "val_loss": score[0]})
        histories.append(history)
        note(f"Self-training round {number}: {len(labels)} pool images at confidence "
             f"{threshold} or more, val accuracy {score[1]:.2%} (best so far {best_score[1]:.2%}).")
        if not gains(score, best_score, len(val[1])):
            break
        best, best_score, kept_round, current = weights, score, number, weights
    record = {"rounds": rounds, "kept": kept_round > 0, "kept_round": kept_round,
              "thresholds": list(THRESHOLDS), "per_class_cap": cap,
              "min_val_gain": MIN_VAL_GAIN, "supervised_val_accuracy": supervised_score[1],
              "supervised_val_loss": supervised_score[0]}
    return best, histories[:kept_round], record


def _best_threshold(guesses, train_x, train_y, val, pool_x, fit, cap):
    """The heads retrained with each candidate threshold's pseudo-labels, the best on val:
    `(weights, history, (val_loss, val_accuracy), threshold, pseudo-labels)`, or None."""
    best = None
    for threshold in THRESHOLDS:
        rows, labels = pseudo_labels(guesses, threshold, cap)
        if not len(rows):
            continue
        weights, history = fit(np.concatenate([train_x, pool_x[rows]]),
                               np.concatenate([train_y, labels]))
        score = numpy_head.evaluate(weights, *val)
        if best is None or _better(score, best[2]):
            best = (weights, history, score, threshold, labels)
    return best


def describe_pool(pool):
    """metrics.json's account of the pool itself."""
    return {"pool": pool.source, "pool_images": len(pool.split),
            "pool_unreadable": [path for path, _ in pool.unreadable],
            "pool_in_train": len(pool.in_train)}
