"""The base prepared in a helper process while the run reads and decodes its images.

A cold run spends about 10 s importing TensorFlow, building the base and converting it
to LiteRT before the first feature is computed, and about as long checking and
decoding images, which needs no TensorFlow. Threads cannot overlap the two (the import
holds Python's GIL: measured here slower than one after the other); a second process
can. The helper writes the cache entries the run would write itself (the base's LiteRT
conversion and, for extract, the model templates); the run then opens them, so its own
process never imports TensorFlow. If the helper fails, the run says why in one line
and does the work itself.

    python -m smallcnn.train.warmup JOB    # JOB: the JSON that `start` writes
"""

import atexit
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smallcnn.runtime import cache

# What the helper says (its last line, which the run repeats) when the cache refused an entry.
ENGINE_NOT_WRITTEN = "could not write the base's LiteRT conversion to the cache"
TEMPLATE_NOT_WRITTEN = "could not write the model template to the cache"


class Warmup:
    """A running helper process; `wait()` for its end, `cancel()` to stop it."""

    def __init__(self, job):
        import smallcnn

        self.job = job
        self._log = tempfile.TemporaryFile()
        # The same smallcnn as this process, wherever it was imported from.
        package_root = str(Path(smallcnn.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "smallcnn.train.warmup", json.dumps(job)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            env={**os.environ, "PYTHONPATH": path})
        self._outcome = None
        atexit.register(self.cancel)  # a run that ends early leaves no helper behind

    def running(self):
        return self._outcome is None and self._process.poll() is None

    def wait(self, engine_only=False):
        """Waits for the helper's end or, with `engine_only`, only until the base's LiteRT
        conversion is in the cache (it goes on with the template meanwhile); returns None
        when it did its work so far, else why not (one line)."""
        while engine_only and self.running():
            if "engine" not in self.job or cache.is_stored("engines", self.job["engine"],
                                                           checksum=True):
                return None
            time.sleep(0.05)
        if self._outcome is None:
            code = self._process.wait()
            self._outcome = "" if code == 0 else _last_line(self._log) or f"exit code {code}"
            self._log.close()
            atexit.unregister(self.cancel)
        return self._outcome or None

    def cancel(self):
        """Stops the helper if it still runs (what it wrote so far is discarded)."""
        if self._outcome is None and self._process.poll() is None:
            self._process.terminate()  # SIGTERM: the helper removes its temporary files
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._outcome = "cancelled"


def start(spec, weights, image_size, seed, templates=(), warn=None):
    """Starts a helper for what the cache lacks, or returns None when it lacks nothing,
    when TensorFlow is already imported here (nothing to overlap), or when LiteRT is
    not installed (the base then runs in TensorFlow, in this process).

    Args:
        weights: 'imagenet' or a weights file (random weights are never cached).
        templates: for extract, the `modelfile.template_key` arguments after the base,
            weights and size of each head it may train, as dicts (feature_width,
            num_classes, hidden, dropout, taps).
        warn: called with one line when no process can be started (the run then
            prepares the base itself).
    """
    from smallcnn.model import modelfile
    from smallcnn.runtime.litert import litert_name

    if weights == "none" or _tensorflow_imported() or \
            importlib.util.find_spec("ai_edge_litert") is None:
        return None
    job = {"base": spec.name, "image_size": image_size, "seed": seed,
           "weights": weights if weights == "imagenet" else os.path.abspath(weights)}
    engine = litert_name(spec, weights, image_size)
    if not cache.is_stored("engines", engine):
        job["engine"] = engine
    missing = []
    for template in templates:
        key = modelfile.template_key(spec, weights, image_size, **template)
        if modelfile.load_template(key) is None:
            missing.append({"key": key, **template})
    if missing:
        job["templates"] = missing
    if "engine" not in job and "templates" not in job:
        return None
    try:
        return Warmup(job)
    except OSError as error:  # no process can be started here (a sandbox, a process limit)
        from smallcnn.errors import described

        (warn or print)(f"Could not start a helper process to prepare the base "
                        f"({described(error)}); preparing it in this process.")
        return None


def _tensorflow_imported():
    return "tensorflow" in sys.modules


def _last_line(file):
    file.seek(0)
    lines = [line.strip() for line in file.read().decode(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def run(job):
    """The helper's work: the base built once, converted and/or saved as a template."""
    from smallcnn.runtime.quiet import import_tensorflow

    import_tensorflow()
    import keras

    from smallcnn.model.bases import build_base, get_base
    from smallcnn.model.modelfile import classifier_template
    from smallcnn.model.networks import feature_extractor
    from smallcnn.runtime.litert import convert_to_litert

    keras.utils.set_random_seed(job["seed"])
    spec, size = get_base(job["base"]), job["image_size"]
    base = build_base(spec, size, job["weights"])
    if "engine" in job:
        model = feature_extractor(spec, base, size)
        stored = cache.store("engines", job["engine"],
                             lambda temp: convert_to_litert(model, Path(temp)), checksum=True)
        if stored is None:
            raise RuntimeError(ENGINE_NOT_WRITTEN)
    for template in job.get("templates", []):
        template = dict(template)
        _, _, saved = classifier_template(spec, base, size, template.pop("key"), **template)
        if saved is None:
            raise RuntimeError(TEMPLATE_NOT_WRITTEN)


def main(argv):
    # SIGTERM (`Warmup.cancel`) unwinds like an exception: temporary files are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        run(json.loads(argv[1]))
    except Exception as error:
        from smallcnn.errors import described

        print(described(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
