"""The pool's features: unlabelled images through a run's frozen base (or the default
base, without a model) by the same engine and feature cache as extract's, the run's
head's probabilities for them, and the run's labelled images' features. What `smallcnn
suggest` ranks and the labelling page (`smallcnn label`) starts from.
"""

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

from smallcnn.errors import UsageError
from smallcnn.progress import Reporter

FEATURE_CHUNK = 256  # pool images decoded at a time: memory of a chunk, any pool size
NO_LABEL = -1  # the label of a pool image in its cached features' entry

@dataclasses.dataclass
class PoolFeatures:
    """The base's features of a pool of unlabelled images, and a model's view of them."""

    paths: list  # the readable images, one per feature row
    features: np.ndarray  # float32, (images, feature width)
    skipped: list  # [(path, reason)] of the images that could not be read
    class_names: list
    head_weights: Optional[list] = None  # the run's head (NumPy, Keras' order), if it has one
    probabilities: Optional[np.ndarray] = None  # (images, classes), None without a model
    digests: dict = dataclasses.field(default_factory=dict, repr=False)  # path -> check.DIGEST


@dataclasses.dataclass
class LabelledSet:
    """A run's labelled training images: features, labels, paths and their digests."""

    features: np.ndarray
    labels: np.ndarray
    paths: list
    digests: set


def class_list(classes):
    """`--classes a,b` (or a list) as a list of distinct names, refused when fewer than 2."""
    names = classes.split(",") if isinstance(classes, str) else list(classes or [])
    names = [name.strip() for name in names if name.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"--classes needs two or more distinct class names, separated by "
                         f"commas (ants,bees). Received: {classes!r}")
    refuse_folder_names(names, "--classes", "give names")
    return names


def refuse_folder_names(names, where, remedy, error=UsageError):
    """Refuses (`error`, one line) a class name from `where` that cannot be a class folder's:
    a / or \\ would copy an answer out of DATA, a leading . or _ into a folder DATA's
    reader skips. `remedy` starts what would work ("give names")."""
    for name in names:
        if "/" in name or "\\" in name or name.startswith((".", "_")):
            raise error(f"{where}: {name!r} cannot be a class folder's name; {remedy} without "
                        "/ or \\ that start with neither . nor _.")


def _base_of(run, classes):
    """`(spec, weights, image size, class names, config, run folder)`: the run's base,
    or the default base with `classes` when there is no run."""
    from smallcnn.model import runs
    from smallcnn.model.bases import DEFAULT_BASE, get_base, resolve_weights

    if run is None:
        if classes is None:
            raise UsageError("Without --model, name the classes to label: --classes ants,bees.")
        spec = get_base(DEFAULT_BASE)
        return spec, resolve_weights(spec, None), spec.default_size, class_list(classes), \
            None, None
    if classes is not None:
        raise UsageError("--classes goes without --model: a run's classes are its own.")
    run_dir = runs.resolve_run(run)
    config = runs.read_config(run_dir)
    spec = get_base(config["base"])
    weights = resolve_weights(spec, config.get("settings", {}).get("weights"))
    return spec, weights, int(config["image_size"]), list(config["class_names"]), config, \
        run_dir


def _engine(spec, weights, image_size, reporter):
    """The frozen base's engine, as extract's (its LiteRT conversion cached)."""
    from smallcnn.runtime.engine import feature_engine
    from smallcnn.train.feature_store import seed_keras

    def extractor():  # built only if the conversion is not cached
        seed_keras(0)
        from smallcnn.model.bases import build_base
        from smallcnn.model.networks import feature_extractor

        return feature_extractor(spec, build_base(spec, image_size, weights), image_size)

    return feature_engine(spec, weights, image_size, extractor, reporter=reporter)


def scanned(paths, reporter, what="the pool", root=None):
    """`(readable paths, digests, skipped)` from the data check's cached file scan (cached
    per `root`, by default the folder the paths share): the digest (`check.DIGEST`) of
    every file whose bytes could be read, decodable or not."""
    from smallcnn.data.check import DIGEST, scan_files

    root = root or os.path.commonpath([os.path.abspath(p) for p in paths])
    with reporter.progress(f"Scanning {what}", len(paths)) as advance:
        facts = scan_files(paths, root, advance, reporter.warning)
    readable = [p for p in paths if facts[p]["ok"]]
    skipped = [(p, facts[p]["reason"]) for p in paths if not facts[p]["ok"]]
    return readable, {p: facts[p][DIGEST] for p in paths if DIGEST in facts[p]}, skipped


def _features(paths, spec, weights, image_size, reporter, scan_root=None):
    """`(features, kept paths, skipped, digests)` of the pool, from the feature cache
    where an entry names the same base and the same file contents."""
    from smallcnn.data.images import load_readable
    from smallcnn.runtime.engine import compute_features, expected_engine
    from smallcnn.runtime.litert import base_conversion
    from smallcnn.train import feature_store

    readable, digests, skipped = scanned(paths, reporter, root=scan_root)
    if not readable:  # nothing for the base to run on: not even converted
        return np.zeros((0, 0), np.float32), [], skipped, digests
    files = [[digests[p], NO_LABEL] for p in readable]
    # feature_engine's choice, as "auto" makes it (its race's winner, once it ran)
    expected = expected_engine(model=base_conversion(spec, weights, image_size))
    key = feature_store.files_key(spec, weights, image_size, files, expected)
    cached = feature_store.load(key, reporter.warning)
    if cached is not None:
        values, _, failed = cached
        bad = {path for path, _ in failed}
        reporter.note(f"pool: {len(values)} feature vectors from the cache")
        return values, [p for p in readable if p not in bad], skipped + \
            [tuple(f) for f in failed], digests
    engine = _engine(spec, weights, image_size, reporter)
    rows, kept, failed = [], [], []
    with reporter.progress(f"Extracting pool features ({engine.name})", len(readable)) as advance:
        for start in range(0, len(readable), FEATURE_CHUNK):
            chunk = readable[start : start + FEATURE_CHUNK]
            pixels, chunk_kept, failures = load_readable(chunk, image_size)
            if len(chunk_kept):
                rows.append(compute_features(engine, pixels))
            kept += [chunk[i] for i in chunk_kept]
            failed += [[f.path, f.reason] for f in failures]
            advance(start + len(chunk))
    width = rows[0].shape[1] if rows else 0
    values = np.concatenate(rows) if rows else np.zeros((0, width), np.float32)
    ran = (engine.name, getattr(engine, "precision", None))
    if ran != expected:  # auto fell back: cached under the name of the engine that ran
        key = feature_store.files_key(spec, weights, image_size, files, ran)
    feature_store.store(key, values, np.full(len(kept), NO_LABEL, np.int32), failed,
                        reporter.warning)
    return values, kept, skipped + [tuple(f) for f in failed], digests


def head_input_of(config, spec):
    """What the run's head reads of today's extractor's output (`smallcnn.model.taps`): as
    it recorded, else (no run, a run before taps, or one made when its base's taps were
    declared otherwise) the last layer's features."""
    from smallcnn.model.taps import HeadInput

    today = HeadInput.of(spec)
    recorded = _recorded_head_input(config)
    return recorded if recorded is not None and recorded.widths == today.widths else today


def _recorded_head_input(config):
    from smallcnn.model.taps import HeadInput

    route = (config or {}).get("prediction") or {}
    return HeadInput.from_dict(route.get("head_input"))


def _head_weights(config, run_dir, spec):
    """The run's head (Keras' order) where the run recorded it over its frozen base (see
    `Session.prediction_route`), model.keras is still the file it wrote, and the head
    reads what today's extractor gives (`head_input_of`); else None."""
    from smallcnn.model import modelfile, runs

    route = config.get("prediction")
    model_file = Path(run_dir) / runs.MODEL_FILE
    if not route or runs.file_sha256(model_file) != config.get("model_sha256"):
        return None
    recorded = _recorded_head_input(config)
    if recorded is not None and recorded.taps and head_input_of(config, spec) != recorded:
        return None  # its taps were others: the whole model gives its probabilities
    return modelfile.read_head_weights(model_file, route["head_datasets"])


def pool_features(pool_paths, run=None, classes=None, reporter=None, scan_root=None):
    """The base's features of a pool of images, and the run's probabilities for them.

    Args:
        pool_paths: image files and folders (searched recursively).
        run: a run folder, or None (no model yet: the default base, with `classes`).
        classes: the class names when there is no run (a list, or "a,b").
        scan_root: the folder whose scan cache knows the files (see `scanned`).

    Returns:
        A `PoolFeatures`; unreadable images are in its `skipped`, with their reasons.
    """
    from smallcnn.inference.classifier import expand_paths

    reporter = reporter or Reporter()
    spec, weights, size, names, config, run_dir = _base_of(run, classes)
    # Folders searched; files kept as given, a missing one (a stale --list line) included:
    # the scan names it unreadable, as it does a damaged one.
    paths = [path for given in map(str, pool_paths)
             for path in (expand_paths([given]) if os.path.isdir(given) else [given])]
    if not paths:
        raise UsageError("The pool holds no image; give a folder or a list of images.")
    features, kept, skipped, digests = _features(paths, spec, weights, size, reporter, scan_root)
    if kept:  # as the run's head reads them
        features = head_input_of(config, spec)(features)
    pool = PoolFeatures(kept, features, skipped, names, digests=digests)
    if run_dir is None or not kept:
        return pool
    pool.head_weights = _head_weights(config, run_dir, spec)
    if pool.head_weights is not None:
        from smallcnn.model import head

        pool.probabilities = head.probabilities(pool.head_weights, features)
        return pool
    # Fine-tuned or unfrozen: the base's features are the pretrained one's, not the
    # model's; its probabilities come from the whole model.
    from smallcnn.inference.predict import load

    probabilities, rows, failures = load(run_dir).probabilities_of_files(kept)
    pool.skipped += [(f.path, f.reason) for f in failures]
    pool.paths = [kept[i] for i in rows]
    pool.features, pool.probabilities = features[rows], probabilities
    return pool


def labelled_set(run, reporter=None):
    """The `LabelledSet` of a run's training split, from extract's feature cache (its
    features computed and cached if missing)."""
    from smallcnn.data.dataset import run_data_folder
    from smallcnn.data.table import TableOptions
    from smallcnn.labels.label_review import AfterCheck
    from smallcnn.model import runs
    from smallcnn.runtime.timings import Timings
    from smallcnn.train import Settings
    from smallcnn.train.feature_store import FeatureSource
    from smallcnn.train.session import plan_run, scan

    reporter, timings = reporter or Reporter(), Timings()
    config = runs.read_config(runs.resolve_run(run))
    recorded = config.get("settings", {})
    table = dataclasses.asdict(TableOptions.of(recorded))
    settings = Settings(base=config["base"], image_size=int(config["image_size"]),
                        weights=recorded.get("weights"), val_split=recorded.get("val_split"),
                        seed=recorded.get("seed"), **table)
    data = run_data_folder(config, "train a run on the data where it is now")
    plan = plan_run("extract", data, settings, reporter, timings)
    source = FeatureSource(plan, AfterCheck(reporter), timings)
    source.head_input = head_input_of(config, plan.spec)
    check = scan(plan, source, AfterCheck(reporter), timings)
    features, labels = source.features("train")
    paths = [p for p in plan.dataset.train.paths if p not in source.skipped]
    return LabelledSet(features, labels, paths, set(check.digests.values()))


def labelled_features(run, reporter=None):
    """`(features, labels)` of a run's training split (see `labelled_set`)."""
    labelled = labelled_set(run, reporter)
    return labelled.features, labelled.labels
