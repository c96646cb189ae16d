"""smallcnn: accurate image classifiers from a few hundred labelled images, by transfer learning."""

__version__ = "0.3.0"


def load(path=None):
    """Loads a trained model; see `smallcnn.inference.predict.load`."""
    from smallcnn.inference.predict import load as _load

    return _load(path)
