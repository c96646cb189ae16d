"""A model written by `smallcnn export`, run in its own runtime (LiteRT, ONNX Runtime,
TensorFlow or Keras) with its labels: what `smallcnn.load` returns for an exported file."""

from pathlib import Path

import numpy as np

from smallcnn.errors import ModelError
from smallcnn.inference.classifier import BATCH_SIZE, ImageClassifier
from smallcnn.model import runs


class ExportedClassifier(ImageClassifier):
    """An exported model (`smallcnn export`) run in its own runtime: LiteRT, ONNX Runtime,
    TensorFlow (SavedModel) or Keras.

    Attributes:
        runtime: the opened model (`smallcnn.runtime.formats`).
        path: the exported file or folder.
    """

    def __init__(self, runtime, class_names, path):
        size = int(runtime.input_shape[1])
        super().__init__({"class_names": list(class_names), "image_size": size,
                          "format": runtime.format},
                         engine=f"{runtime.format} file in its own runtime")
        self.runtime = runtime
        self.path = str(path)

    def _runner(self, count, batch_size=BATCH_SIZE):
        from smallcnn.runtime.formats import run_batches

        def run(images):
            if images.dtype != np.uint8:
                images = np.clip(np.round(images), 0, 255).astype(np.uint8)
            return run_batches(self.runtime, images, batch_size)

        return run


def is_exported(path):
    """Whether `path` names an exported model rather than a run folder (or a run's model)."""
    from smallcnn.runtime.formats import format_of

    path = Path(path).expanduser()
    if format_of(path) is None:
        return False
    return not (path.parent / runs.CONFIG_FILE).is_file() or path.name != runs.MODEL_FILE


def load_exported(path):
    """Opens a model written by `smallcnn export`, with its labels (from the contract JSON
    beside it, or labels.txt)."""
    import json

    from smallcnn.runtime.formats import LABELS_FILE, contract_path, open_model

    path = Path(path).expanduser()
    runtime = open_model(path)
    contract, labels_file = contract_path(path), path.parent / LABELS_FILE
    try:
        if contract.is_file():
            labels = json.loads(contract.read_text(encoding="utf-8"))["labels"]
        elif labels_file.is_file():
            labels = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines()
                      if line.strip()]
        else:
            raise ModelError(
                f"No labels for {str(path)!r}: put {contract.name} or {LABELS_FILE} (one class "
                "per line, in the model's output order) beside it."
            )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"Cannot read the labels beside {str(path)!r}: {error}") from None
    outputs = runtime(np.zeros((1, *runtime.input_shape[1:]), dtype=runtime.input_dtype)).shape[-1]
    if outputs != len(labels):
        raise ModelError(f"{str(path)!r} has {outputs} outputs but its labels name {len(labels)} "
                         "classes; export the model again.")
    return ExportedClassifier(runtime, labels, path)
