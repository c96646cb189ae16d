"""Using a trained model: `smallcnn.load(RUN).predict(images)`."""

import dataclasses
from pathlib import Path

import numpy as np

from smallcnn import runs
from smallcnn.errors import DataError, UsageError
from smallcnn.images import UnreadableImage, is_image_file, load_image


@dataclasses.dataclass
class Prediction:
    path: str  # None for an array given directly
    label: str
    probability: float
    top: list  # [{"label": ..., "probability": ...}], most probable first

    def to_dict(self):
        return dataclasses.asdict(self)


class Classifier:
    """A trained model with its class names and input size, ready to predict."""

    def __init__(self, model, config, run_dir=None):
        self.model = model
        self.config = config
        self.run_dir = run_dir
        self.class_names = list(config["class_names"])
        self.image_size = int(config["image_size"])

    def probabilities(self, images, batch_size=32):
        """Class probabilities for a `(n, size, size, 3)` array of RGB pixels in [0, 255]."""
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise UsageError(
                f"Images must be an array of shape (n, {self.image_size}, {self.image_size}, 3). "
                f"Received: shape={images.shape}"
            )
        return np.asarray(self.model.predict(images.astype("float32"), batch_size=batch_size,
                                             verbose=0))

    def predict(self, images, top_k=3, batch_size=32):
        """Predicts classes for image paths (files or folders) or for a pixel array.

        Returns:
            A list of `Prediction`, one per image, in input order (folders expanded in
            sorted order).

        Raises:
            DataError: a path does not exist, or an image cannot be read (see
                `predict_paths` to predict the readable ones and list the others).
        """
        if isinstance(images, np.ndarray):
            probabilities = self.probabilities(images, batch_size)
            return [self._prediction(None, row, top_k) for row in probabilities]
        predictions, failures = self.predict_paths(images, top_k, batch_size)
        if failures:
            raise failures[0]
        return predictions

    def predict_paths(self, paths, top_k=3, batch_size=32):
        """Like `predict` for files and folders, without stopping at unreadable images.

        Returns:
            `(predictions, failures)`: a `Prediction` for each readable image, and an
            `UnreadableImage` error for each image that cannot be read.
        """
        if isinstance(paths, (str, Path)):
            paths = [paths]
        readable, pixels, failures = [], [], []
        for path in expand_paths(paths):
            try:
                pixels.append(load_image(path, self.image_size))
                readable.append(path)
            except UnreadableImage as error:
                failures.append(error)
        if not readable:
            return [], failures
        probabilities = self.probabilities(np.stack(pixels), batch_size)
        return [self._prediction(p, row, top_k) for p, row in zip(readable, probabilities)], failures

    def _prediction(self, path, row, top_k):
        order = np.argsort(row)[::-1][: max(1, top_k)]
        top = [{"label": self.class_names[i], "probability": float(row[i])} for i in order]
        return Prediction(path, top[0]["label"], top[0]["probability"], top)


def expand_paths(paths):
    """Image files from a list of files and folders (searched recursively)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not files:
                raise DataError(f"No images (jpg, png, bmp, gif, webp) in the folder {str(path)!r}.")
            found.extend(str(p) for p in files)
        elif path.is_file():
            found.append(str(path))
        else:
            raise DataError(f"No such image file or folder: {str(path)!r}.")
    return found


def load(path=None):
    """Loads a trained model from a run folder (default: the most recent run in ./runs).

    Example:

        import smallcnn
        classifier = smallcnn.load("runs/extract-20261128-101500")
        for p in classifier.predict(["cat.jpg", "photos/"]):
            print(p.path, p.label, p.probability)
    """
    run_dir = runs.resolve_run(path) if path is not None else runs.latest_run()
    config = runs.read_config(run_dir)
    model = runs.load_model(run_dir)
    return Classifier(model, config, run_dir)


__all__ = ["Classifier", "Prediction", "UnreadableImage", "load", "expand_paths"]
