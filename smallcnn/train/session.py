"""What every training command starts from: the plan of its run and a `Session`.

A `RunPlan` is the immutable description of a run: its settings (resolved and checked),
base, weights, devices and data set. A `Session` joins it to the parts that do the work:
the source of its images and features (`feature_store.FeatureSource`) and the writer of
its run folder (`runfolder.RunWriter`).
"""

import contextlib
import dataclasses
import shlex
import sys
import time

import numpy as np

from smallcnn.data.dataset import find_dataset
from smallcnn.data.table import TableOptions
from smallcnn.model.bases import DEFAULT_BASE, get_base, resolve_weights, weights_label
from smallcnn.progress import Reporter
from smallcnn.runtime.devices import needs_tensorflow, place
from smallcnn.runtime.timings import Timings
from smallcnn.train.feature_store import FeatureSource, seed_keras
from smallcnn.train.runfolder import RunResult, RunWriter

__all__ = ["RunPlan", "RunResult", "Session", "plan_run", "scan", "seed_keras"]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What one training command runs: settings, base, weights, devices and data set."""

    command: str
    command_line: str
    settings: object  # a resolved `Settings`
    spec: object  # the base's `BaseSpec`
    weights: str  # 'imagenet', 'none' or a weights file
    placement: object  # `smallcnn.runtime.devices.Placement`
    dataset: object  # `smallcnn.data.dataset.Dataset`
    started: float  # time.time() as the command started

    @property
    def weights_source(self):
        return weights_label(self.weights)

    def data_paths(self):
        """The data set's folder and, for a table, the table (no run goes inside them)."""
        return tuple(p for p in (self.dataset.root, self.dataset.source) if p)

    def eval_splits(self):
        return [name for name in self.dataset.splits if name != "train"]

    def class_weights(self):
        """{class index: weight} for --class-weight balanced, else None."""
        if self.settings.class_weight != "balanced":
            return None
        counts = np.bincount(self.dataset.train.labels, minlength=len(self.dataset.class_names))
        return {i: float(counts.sum() / (len(counts) * c)) for i, c in enumerate(counts) if c}


def plan_run(command, data_dir, settings, reporter, timings, command_line=None):
    """Resolves and checks the settings, places the devices and finds the data set; reads
    no image."""
    started = time.time()
    spec = get_base(settings.base or DEFAULT_BASE)
    settings = settings.resolve(command, spec)  # every option checked here
    weights = resolve_weights(spec, settings.weights)
    settings.weights = weights
    in_cluster = command != "extract"  # extract runs on one machine only
    timed = needs_tensorflow(settings.devices, in_cluster)  # else none is imported
    with timings("import") if timed else contextlib.nullcontext():
        placement = place(settings.devices, settings.precision, note=reporter.note,
                          use_cluster=in_cluster)
    dataset = find_dataset(data_dir, settings.val_split, settings.seed,
                           TableOptions.of(settings))
    return RunPlan(command, command_line or shlex.join(["smallcnn", *sys.argv[1:]]), settings,
                   spec, weights, placement, dataset, started)


def run_check(dataset, reporter):
    """Checks a data set (cached per file), shows what is wrong, refuses what cannot train."""
    from smallcnn.data.check import check_dataset, require_trainable

    report = check_dataset(dataset, reporter)
    reporter.check(report)
    require_trainable(report)
    return report


def scan(plan, source, reporter, timings):
    """Checks the plan's data set; its unreadable files are left out of every split (and
    told to `source`) before anything is decoded."""
    reporter.dataset(plan.dataset)
    with timings("scan"):
        try:
            check = run_check(plan.dataset, reporter)
        except BaseException:  # a data set that cannot train: the helper is not needed
            source.close()
            raise
    source.use_check(check)
    for name, split in plan.dataset.splits.items():
        plan.dataset.splits[name] = split.without(source.skipped)
    return check


class Session:
    """One training command: its `plan`, the `source` of its images and features, the
    `writer` of its run folder, and the `reporter` and `timings` they share."""

    def __init__(self, command, data_dir, settings, reporter=None, command_line=None,
                 before_data=None):
        """`before_data`, if given, is called with the session once every option is
        checked and the data folder is found, before any image is read: for refusals
        and preparations that need no image (an existing --out, the model)."""
        self.reporter = reporter or Reporter()
        self.timings = Timings()  # where the run's time goes (metrics.json "timings")
        self.plan = plan_run(command, data_dir, settings, self.reporter, self.timings,
                             command_line)
        self.source = FeatureSource(self.plan, self.reporter, self.timings)
        if before_data is not None:
            before_data(self)
        scan(self.plan, self.source, self.reporter, self.timings)
        if command != "extract":  # extract needs TensorFlow only to compute features
            with self.timings("import"):
                seed_keras(self.plan.settings.seed)
        self.writer = RunWriter(self.plan, self.source, self.reporter, self.timings)

    # The plan's and the source's, as scripts written against earlier versions read them.
    @property
    def settings(self):
        return self.plan.settings

    @property
    def dataset(self):
        return self.plan.dataset

    @property
    def spec(self):
        return self.plan.spec

    def data_paths(self):
        return self.plan.data_paths()

    def features(self, name):
        return self.source.features(name)

    def class_weights(self):
        return self.plan.class_weights()
