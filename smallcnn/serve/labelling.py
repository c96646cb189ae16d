"""`smallcnn label POOL --data DATA`: a local page to label the images worth labelling.

    smallcnn label POOL --data DATA [--model RUN] [--table TABLE.csv] [--every 10]
                   [--strategy auto] [--port 8000]

The pool's images are ranked by `smallcnn.labels.strategies` as suggest ranks them
(`--strategy`; auto: coverage first when there are few labels, the model's doubt later) and shown one at a time with the model's guess;
each answer is written into DATA at once (`label_store.py`). Every `--every` answers the
heads retrain on the cached features (`smallcnn.model.head`, seconds, no TensorFlow) in a
thread of their own, and the ranking and guesses follow the new head; the validation
accuracy after each retraining is shown as labels grow. `Labelling` is the session,
`label_routes.py` its routes, `label_page.html` the page.
"""

import dataclasses
import logging
import os
import threading

import numpy as np

from smallcnn.errors import DataError, UsageError, first_line
from smallcnn.labels.strategies import STRATEGIES
from smallcnn.progress import Reporter
from smallcnn.runtime.ranges import Range
from smallcnn.serve.label_store import NOT_ANY, SKIP, LabelStore
from smallcnn.serve.settings import ServeSettings, option
from smallcnn.serve.uploads import RequestError

EVERY = 10  # answers between two retrainings of the heads
SKIP_KEY, NOT_ANY_KEY, ACCEPT_KEY = " ", "0", "Enter"  # the page's keys besides the classes'
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    host: str = ServeSettings.host
    port: int = ServeSettings.port
    every: int = EVERY
    strategy: str = STRATEGIES[0]  # suggest's choices and default

    RANGES = {"port": ServeSettings.RANGES["port"], "every": Range(1, 100_000)}

    def check(self):
        """Raises UsageError, in one line, for a setting out of its range or choices."""
        from smallcnn.labels.strategies import chosen_strategy

        for name, allowed in self.RANGES.items():
            allowed.check(option(name), getattr(self, name))
        if self.strategy not in STRATEGIES:
            chosen_strategy(self.strategy, 0, None)  # says which names there are


def class_keys(classes):
    """{class: its keys}: the digits 1 to 9 for the first nine classes, and each class's
    first letter where no other class starts with it."""
    firsts = [name[:1].lower() for name in classes]
    keys = {}
    for index, name in enumerate(classes):
        keys[name] = [str(index + 1)] if index < 9 else []
        if firsts[index].isalpha() and firsts.count(firsts[index]) == 1:
            keys[name].append(firsts[index])
    return keys


def refuse_answer_names(classes, where):
    """Refuses a class named as an answer that is not a class: the page's "skip" or "not
    any class" would copy the image into that class's folder."""
    for name in classes:
        if name in (SKIP, NOT_ANY):
            raise DataError(f"The class {name!r} (in {where} or --classes) has the name of the "
                            f"page's {SKIP!r} / {NOT_ANY!r} answer: rename that class to label "
                            "with this page.")


def refuse_unreadable(count, skipped):
    """Refuses a pool of which none of the `count` new images can be read (`skipped`:
    `[(path, reason)]`), naming one."""
    example = "".join(f" (e.g. {path}: {reason})" for path, reason in skipped[:1])
    raise DataError(f"Nothing to label: none of the {count} new images of the pool can be "
                    f"read{example}; give a folder of images (jpg, png, bmp, gif, webp).")


def train_head(x, y, val, num_classes, settings):
    """Extract's heads trained on the labelled rows `x`, `y` not in `val` (a mask); returns
    `(weights, validation accuracy)`, or None while there are too few labels (two classes
    to train on, one image to validate on)."""
    from smallcnn.model import head

    train = ~val
    if len(np.unique(y[train])) < 2 or not val.any():
        return None
    weights, _ = head.train(x[train], y[train], (x[val], y[val]), settings, num_classes,
                            members=settings.heads)
    return weights, float(head.evaluate(weights, x[val], y[val])[1])


def model_features(model, reporter):
    """`featurize(paths, classes, scan_root=None)` as `pool.pool_features` computes it:
    the base of the run `model` (with its head's probabilities), or without one the
    default base."""
    from smallcnn.labels.pool import pool_features

    return lambda paths, classes, scan_root=None: pool_features(
        paths, run=model, classes=None if model else classes, reporter=reporter,
        scan_root=scan_root)


class Labelling:
    """A labelling session: the pool, what DATA labels, the head, the ranking, the answers.

    `featurize(paths, classes, scan_root=None)` returns a `pool.PoolFeatures` of those
    paths (their features, those skipped, the classes: the model's, or `classes` without a
    model; the model's probabilities; the files known by the data check's scan cached
    under `scan_root`, as `LabelStore` scans DATA), as `model_features` makes it; `model` says whether it has a
    model (without one, DATA or `classes` must name two classes). All the
    state is behind `lock`; a retraining runs in a thread of its own and swaps its head in.
    """

    def __init__(self, pool, store, featurize, classes=None, model=None, every=EVERY,
                 strategy="auto", reporter=Reporter()):
        from smallcnn.train.settings import Settings

        self.store, self.every, self.strategy, self.reporter = store, every, strategy, reporter
        self.lock = threading.RLock()
        self.head_settings = Settings().resolve("extract")
        from smallcnn.labels.pool import refuse_folder_names

        labelled = store.labelled(reporter)
        candidates, self.digests = self._candidates(pool, labelled)
        named = sorted({item.label for item in labelled} | set(store.classes()) |
                       set(classes or ()))
        if model is None and len(named) < 2:
            raise UsageError(f"Labelling needs at least 2 classes; found "
                             f"{', '.join(named) or 'none'} in {store.where}: name them with "
                             "--classes a,b (or give --model RUN).")
        refuse_answer_names(named, store.where)
        pooled = featurize(pool, None if model else named)  # the whole pool's: cached as is
        self.classes = list(pooled.class_names)
        refuse_answer_names(self.classes, "the model's classes")
        if store.table is None:  # each answer is copied into its class's folder
            refuse_folder_names(self.classes, "the model's classes" if model else store.where,
                                "label into a table with --table FILE, or use class names",
                                DataError)
        extra = sorted(set(named) - set(self.classes))
        if extra:
            raise DataError(f"{', '.join(extra)} (in {store.where} or --classes) is not one "
                            f"of the model's classes ({', '.join(self.classes)}).")
        rows = [i for i, path in enumerate(pooled.paths) if path in self.digests]
        self.paths = [pooled.paths[i] for i in rows]
        self.features = np.asarray(pooled.features, np.float32)[rows]
        if not self.paths:
            refuse_unreadable(len(candidates), pooled.skipped)
        for path, reason in pooled.skipped:
            reporter.warning(f"left out of the pool: {path} ({reason})")
        self.probabilities = (None if pooled.probabilities is None else
                              np.asarray(pooled.probabilities, np.float32)[rows])
        self.x, self.y, self.val = [], [], []
        trained_on = [item for item in labelled if item.split != "test"]
        if trained_on:
            known = featurize([item.path for item in trained_on], None if model else named,
                              scan_root=store.scan_root)
            rows = dict(zip(known.paths, np.asarray(known.features, np.float32)))
            for item in trained_on:
                if item.path in rows:
                    self._add(rows[item.path], item.label, item.split)
        self.answers, self.gone = {}, set()
        self.history = [e for e in store.entries if "accuracy" in e]
        self.training, self.again, self.error, self.version = False, False, None, 0
        self.since = 0  # answers since the last retraining
        self._thread = None
        self.queue = self._rank()
        if self.probabilities is None and len(set(self.y)) > 1:
            self._start_training()  # DATA's labels make a first head

    def _candidates(self, pool, labelled):
        """The pool's files that DATA and the journal do not know (by path or content),
        each content once, and the digest of each (the data check's cached scan's, which
        featurize then reads from its cache)."""
        from smallcnn.labels.pool import scanned

        known = {item.digest for item in labelled} | self.store.answered_digests()
        known_paths = {os.path.realpath(item.path) for item in labelled}
        candidates, digests = [], {}
        readable, scan, skipped = scanned(pool, self.reporter)
        if not readable:
            refuse_unreadable(len(pool), skipped)
        for path in readable:
            digest = scan[path]
            if os.path.realpath(path) in known_paths:
                continue
            if digest not in known:
                known.add(digest)
                candidates.append(path)
                digests[path] = digest
        if not candidates:
            raise DataError(f"Nothing to label: every image of the pool is in {self.store.where} "
                            f"or answered in {str(self.store.journal)!r}.")
        return candidates, digests

    def _add(self, row, label, split):
        self.x.append(row)
        self.y.append(self.classes.index(label))
        self.val.append(split == "val")

    def _remaining(self):
        return [i for i in range(len(self.paths)) if i not in self.answers and i not in self.gone]

    def _rank(self):
        """The unanswered pool images, the ones worth labelling first."""
        return ranked(self.features, self._remaining(), self.strategy,
                      np.asarray(self.x, np.float32), self.probabilities)

    def item(self, index):
        """What the page shows of pool image `index`."""
        guess, probabilities = None, None
        if self.probabilities is not None:
            row = self.probabilities[index]
            guess = self.classes[int(row.argmax())]
            probabilities = {c: round(float(p), 4) for c, p in zip(self.classes, row)}
        return {"id": index, "name": os.path.basename(self.paths[index]), "guess": guess,
                "probabilities": probabilities}

    def describe(self, index):
        """`item(index)`, for an id a request gives (404 if unknown)."""
        with self.lock:
            self._path(index)
            return self.item(index)

    def next(self, count=1):
        """The next `count` images to label, best first."""
        with self.lock:
            queue = [i for i in self.queue if i not in self.answers and i not in self.gone]
            if not queue:
                queue = self._rank()  # the ranked batch is used up: the next batch
            self.queue = queue
            return [self.item(i) for i in queue[:count]]

    def image_path(self, index):
        """The file of pool image `index`; 404 for an unknown id, 410 for a file gone."""
        with self.lock:
            path = self._path(index)
            if not os.path.isfile(path):
                self.gone.add(index)
                raise RequestError(410, f"The pool file {path!r} is not there any more; it is "
                                        "left out.")
            return path

    def _path(self, index):
        if not 0 <= index < len(self.paths):
            raise RequestError(404, f"No image {index} in this labelling session; ids are "
                                    f"0 to {len(self.paths) - 1}, as GET /api/next gives them.")
        return self.paths[index]

    def answer(self, index, answer):
        """Writes the answer for pool image `index`: a class (into DATA), SKIP or NOT_ANY
        (into the journal). A second answer for the same image is a no-op: the first
        stands (and is returned, `repeated` true)."""
        with self.lock:
            path = self._path(index)
            if index in self.answers:
                return {**self.answers[index], "repeated": True}
            if answer not in self.classes and answer not in (SKIP, NOT_ANY):
                raise RequestError(422, f"{answer!r} is not a class of this session "
                                        f"({', '.join(self.classes)}), nor {SKIP!r} or "
                                        f"{NOT_ANY!r}.")
            written = None
            if answer in self.classes:
                try:
                    written = self.store.write(path, answer)
                except RequestError as error:
                    if error.status == 410:
                        self.gone.add(index)
                    raise
            digest = self.digests[path]
            entry = {"path": path, "digest": digest, "answer": answer, "written": written}
            self.answers[index] = entry  # in DATA now, whether the journal takes it or not
            try:
                self.store.record(entry)
            except RequestError:
                if written is None:
                    del self.answers[index]
                raise
            if written is not None:
                self._add(self.features[index], answer, self.store.split_of(digest))
            self.since += 1
            if self.since >= self.every:
                self._start_training()
            return {**entry, "repeated": False}

    def _start_training(self):
        """Retrains the heads in a thread of their own; asked while one runs, once more after."""
        with self.lock:
            if self.training:
                self.again = True
                return
            self.since, self.training, self.again = 0, True, False
            snapshot = (np.asarray(self.x, np.float32), np.asarray(self.y, np.int64),
                        np.asarray(self.val, bool))
            self._thread = threading.Thread(target=self._train, args=snapshot, daemon=True,
                                            name="smallcnn-label-train")
            self._thread.start()

    def _train(self, x, y, val):
        from smallcnn.model import head

        try:
            trained = train_head(x, y, val, len(self.classes), self.head_settings)
            probabilities = queue = None
            if trained is not None:  # the new ranking made outside the lock: answers go on
                probabilities = head.probabilities(trained[0], self.features)
                with self.lock:
                    remaining = self._remaining()
                queue = ranked(self.features, remaining, self.strategy, x, probabilities)
        except Exception as error:  # a bug: logged in full; labelling goes on with the last head
            log.exception("retraining the heads failed")
            with self.lock:
                self.error, self.training = f"retraining failed: {first_line(error)}", False
            return
        with self.lock:
            self.training = False
            if trained is not None:
                point = {"labels": len(y), "accuracy": round(trained[1], 4)}
                self.probabilities, self.version = probabilities, self.version + 1
                self.history.append(point)
                self.queue = queue
                try:
                    self.store.record(point)
                except RequestError as error:
                    self.error = error.detail
            if self.again:
                self._start_training()

    def wait_for_training(self, timeout=60):
        """Waits until no retraining runs (for tests and a clean exit)."""
        while True:
            thread = self._thread
            if thread is None or not thread.is_alive():
                return
            thread.join(timeout)
            if thread.is_alive():
                return

    def state(self):
        """What the page shows besides the image: classes and keys, counts, the accuracy
        as labels grew, whether the heads are retraining, the last error."""
        with self.lock:
            return {"classes": self.classes, "keys": class_keys(self.classes),
                    "skip": {"answer": SKIP, "key": SKIP_KEY},
                    "not_any": {"answer": NOT_ANY, "key": NOT_ANY_KEY}, "accept_key": ACCEPT_KEY,
                    "labels": len(self.y), "answered": len(self.answers),
                    "remaining": len(self._remaining()), "history": list(self.history),
                    "training": self.training, "every": self.every,
                    "until_retraining": max(0, self.every - self.since),
                    "model_version": self.version, "data": self.store.where,
                    "error": self.error}


def ranked(features, remaining, strategy, labelled, probabilities):
    """`remaining` (indices of pool rows in `features`), those worth labelling first
    (suggest's `rank`, at most its N); `labelled`: the labelled images' features."""
    from smallcnn.labels.strategies import rank

    if not remaining:
        return []
    order = rank(features[remaining], strategy=strategy,
                 labelled_features=labelled if len(labelled) else None,
                 probabilities=None if probabilities is None else probabilities[remaining])
    return [remaining[j] for j in order]


def label(pool, data, model=None, table=None, classes=None, settings=LabelSettings(),
          reporter=Reporter()):
    """Serves the labelling page of `pool` (image files and folders) into `data` (see
    `LabelStore`; `table`: a table of labels to add the answers to) until SIGINT or
    SIGTERM; every answer is already written by then. `classes` ("a,b" or a list) adds
    to DATA's classes without a `model` (a run folder)."""
    from smallcnn.inference.stream import images_of
    from smallcnn.labels.strategies import chosen_strategy
    from smallcnn.labels.pool import class_list
    from smallcnn.serve import is_loopback
    from smallcnn.serve.app import run_server
    from smallcnn.serve.label_routes import create_label_app

    settings.check()
    named = None if classes is None else class_list(classes)
    store = LabelStore(data, table)
    if model is None and settings.strategy != STRATEGIES[0]:  # margin needs a model
        chosen_strategy(settings.strategy, 0, None)
    session = Labelling(images_of(pool), store, model_features(model, reporter), named,
                        model, settings.every, settings.strategy, reporter)
    app = create_label_app(session, settings)
    if not is_loopback(settings.host):
        reporter.warning(f"labelling on {settings.host}, beyond this machine: anyone who can "
                         "reach it can write into DATA.")
    reporter.note(f"labelling {len(session.paths)} images into {store.where} at "
                  f"http://{settings.host}:{settings.port}/")

    run_server(app, settings.host, settings.port)
    session.wait_for_training()
