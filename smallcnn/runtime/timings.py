"""Where a run's wall time goes: seconds per stage, recorded in metrics.json.

A stage timed inside another (decoding while features are computed, the TensorFlow
import while the base is built) is not counted twice: the enclosing stage pauses, so
the stages add up to at most the total, and `other` is what no stage claimed.

    timings = Timings()
    with timings("decode"):
        ...
    timings.report()   # {"decode": 1.23, "other": 0.01, "total": 1.24}
"""

import contextlib
import time

# The stages, in the order a run goes through them.
STAGES = {
    "scan": "the data check (cached per file)",
    "import": "importing TensorFlow and Keras",
    "build": "building the base and loading its weights (finetune --from: loading the run's model)",
    "convert": "the base's LiteRT conversion, or opening a cached one",
    "decode": "decoding and resizing images",
    "prepare": "waiting for the helper process that prepares the base (what decoding did not hide)",
    "base": "the frozen base's forward pass for features",
    "head": "training the head (extract: on features; train: on augmented images)",
    "train": "training with base layers unfrozen",
    "evaluate": "evaluating on val and test",
    "model": "assembling the classifier",
    "save": "writing the run folder",
    "pictures": "drawing curves.png",
    "convert_model": "converting the saved model for predict",
}


class Timings:
    """Exclusive wall seconds per stage (see the module's docstring)."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._started = clock()
        self._open = []  # [stage, when its current slice started], innermost last
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, stage):
        if stage not in STAGES:
            raise ValueError(f"Unknown stage {stage!r}. Expected one of {tuple(STAGES)}.")
        now = self._clock()
        if self._open:  # the enclosing stage pauses
            self._add(self._open[-1][0], now - self._open[-1][1])
        self._open.append([stage, now])
        try:
            yield
        finally:
            now = self._clock()
            stage, since = self._open.pop()
            self._add(stage, now - since)
            if self._open:
                self._open[-1][1] = now  # and resumes

    def _add(self, stage, seconds):
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def report(self):
        """{stage: seconds} in STAGES' order, plus `other` and `total`, rounded to 10 ms."""
        total = self._clock() - self._started
        shown = {stage: round(self.seconds[stage], 2) for stage in STAGES
                 if stage in self.seconds}
        shown["other"] = round(max(0.0, total - sum(self.seconds.values())), 2)
        shown["total"] = round(total, 2)
        return shown


def summary(timings, limit=6):
    """The largest stages as one line: 'base 21.0 s, import 5.9 s, ...'."""
    stages = sorted(((s, v) for s, v in timings.items() if s != "total" and v >= 0.05),
                    key=lambda item: -item[1])
    return ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in stages[:limit])
