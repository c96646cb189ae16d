"""What every classifier does, whatever runs its model: image paths -> decoded images ->
probabilities -> `Prediction` objects, top-k, test-time augmentation, a chunk of files at
a time. A run folder's `Classifier` (`predict`) and an exported file's
`ExportedClassifier` (`exported`) each say how they run a batch of pixels (`_runner`)."""

import abc
import dataclasses
from pathlib import Path

import numpy as np

from smallcnn.data.images import load_readable
from smallcnn.data.listing import folder_images
from smallcnn.errors import DataError, UsageError, described
from smallcnn.inference.tta import averaged, check_views, views_of

TOP_K = 3  # classes shown per image (predict --top-k, serve's --top-k)
BATCH_SIZE = 32  # images the model runs at once (predict --batch-size)
# numpy's kinds of arrays whose values are pixels: unsigned and signed integers, floats.
PIXEL_KINDS = "uif"


@dataclasses.dataclass
class Prediction:
    path: str  # None for an array given directly
    label: str
    probability: float
    top: list  # [{"label": ..., "probability": ...}], most probable first
    engine: str = None  # what ran the model, and why a faster way was not usable

    def to_dict(self):
        # Not dataclasses.asdict: its deep copy was a third of printing 1,000 predictions.
        return {"path": self.path, "label": self.label, "probability": self.probability,
                "top": [dict(entry) for entry in self.top], "engine": self.engine}


class ImageClassifier(abc.ABC):
    """A model with its class names and input size, ready to predict; a subclass says how
    it runs pixels (`_runner`).

    Attributes:
        class_names: the classes, in the model's output order.
        image_size: the side of the square RGB images the model takes.
        config: what the model records about itself (class names, image size, ...).
        run_dir: the run folder the model comes from; None for an exported file.
        engine: what ran the last predictions, and why a faster way was not usable.
    """

    # Image files are decoded this many at a time (predict, evaluate): any number of them
    # runs in bounded memory (1,000 decoded images at 224 px are 150 MB), at the same speed.
    chunk_images = 256

    def __init__(self, config, run_dir=None, engine=None):
        self.config = config
        self.run_dir = run_dir
        self.class_names = list(config["class_names"])
        self.image_size = int(config["image_size"])
        self.engine = engine

    @abc.abstractmethod
    def _runner(self, count, batch_size):
        """A function of a `(n, size, size, 3)` pixel array that returns probabilities,
        for `count` images in all; sets `self.engine`."""

    def batch_runner(self, batch_size=BATCH_SIZE):
        """The engine for a stream of images (a server): a function of `(n, size, size, 3)`
        pixel arrays, chosen once as for a folder of many images; `self.engine` says which."""
        return self._runner(None, batch_size)

    def probabilities(self, images, batch_size=BATCH_SIZE, tta_views=1):
        """Class probabilities for a `(n, size, size, 3)` array of RGB pixels in [0, 255],
        averaged over `tta_views` views of each image (see `smallcnn.inference.tta`)."""
        check_counts(batch_size=batch_size)
        views = check_views(tta_views)
        images = self._checked(images)
        if not len(images):  # no engine runs an empty batch (LiteRT's XNNPack refuses it)
            return self._no_probabilities()
        return averaged(self._runner(len(images) * views, batch_size), images, views)

    def _checked(self, images):
        """`images` as an array the engines can run, or a UsageError saying why not."""
        side = self.image_size
        expected = (f"Images must be an array of shape (n, {side}, {side}, 3) of integers or "
                    "floats (RGB pixels in [0, 255]).")
        try:
            images = np.asarray(images)
        except (ValueError, TypeError) as error:  # a ragged list, items of several kinds
            raise UsageError(f"{expected} Received: a {type(images).__name__} that numpy "
                             f"cannot make one array of ({described(error)}).") from None
        if images.shape[1:] != (side, side, 3) or images.dtype.kind not in PIXEL_KINDS:
            raise UsageError(f"{expected} Received: shape={images.shape}, dtype={images.dtype}")
        return images

    def _no_probabilities(self):
        """The probabilities of no image: an empty `(0, classes)` array."""
        return np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images, top_k=TOP_K, batch_size=BATCH_SIZE, tta=False):
        """Predicts classes for image paths (files or folders) or for a pixel array.

        `tta`: average over test-time augmented views (True: `smallcnn.inference.tta.DEFAULT_VIEWS`,
        or a number of views).

        Returns:
            A list of `Prediction`, one per image, in input order (folders expanded in
            sorted order).

        Raises:
            DataError: a path does not exist, or an image cannot be read (see
                `predict_paths` to predict the readable ones and list the others).
        """
        check_counts(top_k, batch_size)
        views = views_of(tta)
        if isinstance(images, np.ndarray):
            probabilities = self.probabilities(images, batch_size, views)
            return [self.prediction(None, row, top_k) for row in probabilities]
        predictions, failures = self.predict_paths(images, top_k, batch_size, tta=views)
        if failures:
            raise failures[0]
        return predictions

    def predict_paths(self, paths, top_k=TOP_K, batch_size=BATCH_SIZE, tta=False):
        """Like `predict` for files and folders, without stopping at unreadable images.

        Returns:
            `(predictions, failures)`: a `Prediction` for each readable image, and an
            `UnreadableImage` error for each image that cannot be read.
        """
        check_counts(top_k, batch_size)
        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = expand_paths(paths)
        probabilities, kept, failures = self.probabilities_of_files(paths, batch_size,
                                                                    tta_views=views_of(tta))
        return [self.prediction(paths[i], row, top_k)
                for i, row in zip(kept, probabilities)], failures

    def probabilities_of_files(self, paths, batch_size=BATCH_SIZE, progress=None, tta_views=1):
        """Class probabilities for image files, decoded `chunk_images` at a time.

        Args:
            progress: an optional callable, called with the number of files done so far.
            tta_views: views of each image to average over (see `smallcnn.inference.tta`).

        Returns:
            `(probabilities, kept, failures)`: a row per readable image, the indices into
            `paths` the rows come from (in order), and an `UnreadableImage` error for each
            file that cannot be read.
        """
        rows, kept, failures = [], [], []
        for chunk_rows, chunk_kept, chunk_failures in self.iter_probabilities(
                paths, batch_size, progress, tta_views):
            rows.append(chunk_rows)
            kept.append(chunk_kept)
            failures += chunk_failures
        if not rows:
            return self._no_probabilities(), np.zeros(0, int), failures
        return np.concatenate(rows), np.concatenate(kept), failures

    def iter_probabilities(self, paths, batch_size=BATCH_SIZE, progress=None, tta_views=1):
        """`probabilities_of_files`, one chunk of files at a time: yields `(probabilities,
        kept, failures)` per chunk, `kept` indexing `paths`; memory stays that of a chunk."""
        paths = [str(p) for p in paths]
        run = None
        for start in range(0, len(paths), self.chunk_images):
            chunk = paths[start : start + self.chunk_images]
            pixels, chunk_kept, failed = load_readable(chunk, self.image_size)
            rows = self._no_probabilities()
            if len(chunk_kept):
                # One engine for every chunk: LiteRT and Keras differ in the last digits.
                run = run or self._runner(len(paths) * check_views(tta_views), batch_size)
                rows = averaged(run, pixels, tta_views)
            if progress is not None:
                progress(start + len(chunk))
            yield rows, chunk_kept + start, failed

    def prediction(self, path, row, top_k=TOP_K):
        """The `Prediction` of one row of probabilities."""
        order = np.argsort(row)[::-1][: max(1, top_k)]
        top = [{"label": self.class_names[i], "probability": float(row[i])} for i in order]
        return Prediction(path, top[0]["label"], top[0]["probability"], top, self.engine)


def check_counts(top_k=TOP_K, batch_size=BATCH_SIZE):
    """Refuses a --top-k or --batch-size below 1."""
    for name, value in (("top-k", top_k), ("batch-size", batch_size)):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1. Received: {value}")


def expand_paths(paths):
    """Image files from a list of files and folders (searched recursively)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            files = folder_images(path)
            if not files:
                raise DataError(f"No images (jpg, png, bmp, gif, webp) in the folder {str(path)!r}.")
            found.extend(files)
        elif path.is_file():
            found.append(str(path))
        else:
            raise DataError(f"No such image file or folder: {str(path)!r}.")
    return found
