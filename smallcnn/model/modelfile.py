"""`extract`'s model.keras, written from a cached template without TensorFlow.

A classifier made by `extract` is the pretrained base (millions of weights, the same
in every run with the same base, weights and image size) and a head trained in the
run (a few thousand weights). The first run saves a whole classifier once, through
Keras, as a template in the cache. Every run then writes its model.keras by copying
the template and putting the head's trained weights into the archive's HDF5 weights
file (h5py): the file Keras itself would write for that model, in a fraction of a
second, and with no TensorFlow imported.
"""

import dataclasses
import datetime
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from smallcnn.runtime import cache

WEIGHTS_ENTRY = "model.weights.h5"
METADATA_ENTRY = "metadata.json"


@dataclasses.dataclass
class Template:
    path: Path  # a .keras archive of the whole classifier
    base_layer: str  # the base's layer name in it
    head_datasets: list  # HDF5 paths of the head's weights, in Keras' order
    shapes: list


def template_key(spec, weights, image_size, feature_width, num_classes, hidden, dropout,
                 taps=False):
    """A hex digest naming the classifier template, or None for random base weights."""
    if weights == "none":
        return None  # a random base differs each run: nothing to reuse
    tapped = {"pool": "taps"} if taps else {}  # (a head reading the taps: smallcnn.model.taps)
    return cache.key("templates", base=spec.name, weights=cache.weights_identity(weights),
                     image_size=image_size, preprocessing=spec.preprocessing,
                     head=[feature_width, num_classes, hidden, dropout], **tapped)


def _read_template(meta):
    described = json.loads(meta.read_text())
    archive = meta.with_suffix(".keras")
    with zipfile.ZipFile(archive) as opened:  # a truncated archive fails here
        damaged = opened.testzip()
        if damaged is not None or WEIGHTS_ENTRY not in opened.namelist():
            raise zipfile.BadZipFile(f"{archive.name}: {damaged or WEIGHTS_ENTRY} is damaged")
    return Template(archive, described["base_layer"], described["head_datasets"],
                    [tuple(s) for s in described["shapes"]])


def load_template(key, warn=None):
    """The cached template named `key`, or None (a damaged one is deleted and reported)."""
    if key is None:
        return None
    return cache.load("templates", f"{key}.json", _read_template, warn=warn)


def classifier_template(spec, base, image_size, key, feature_width, num_classes, hidden,
                        dropout, taps=False, warn=None):
    """Builds the classifier extract saves (this base, a new head of this shape, reading
    the base's taps with `taps`) and, with a `key`, caches it as a template. Returns
    `(model, head, template)`; the template is None without a key or when the cache could
    not be written."""
    from smallcnn.model.networks import build_classifier, build_head

    head = build_head(feature_width, num_classes, dropout, hidden)
    model = build_classifier(spec, base, head, image_size, taps=taps)
    template = None if key is None else save_template(model, head, base.name, key, warn=warn)
    return model, head, template


def save_template(model, head, base_layer, key, warn=None):
    """Saves `model` (whose head layer is `head`) as the template named `key`.

    The head's weights are first set to distinct markers, to find where Keras put
    them in the weights file without depending on its naming scheme.
    """
    rng = np.random.default_rng(0)
    markers = [rng.uniform(1.0, 2.0, w.shape).astype(np.float32) for w in head.get_weights()]
    head.set_weights(markers)
    archive = cache.store("templates", f"{key}.keras", lambda temp: model.save(temp), warn=warn)
    if archive is None:
        return None
    found = find_datasets(archive, markers)
    if found is None:
        raise RuntimeError(f"cannot locate the head's weights in {archive.name}")
    template = Template(archive, base_layer, found, [m.shape for m in markers])
    cache.store("templates", f"{key}.json", lambda temp: Path(temp).write_text(json.dumps({
        "base_layer": base_layer, "head_datasets": found,
        "shapes": [list(s) for s in template.shapes]})), warn=warn)
    return template


class AssembledClassifier:
    """A classifier that is a template plus head weights (Keras' order); `save(path)`
    writes it as the .keras file Keras would write, without TensorFlow."""

    def __init__(self, template, head_weights):
        shapes = [tuple(np.shape(w)) for w in head_weights]
        if shapes != [tuple(s) for s in template.shapes]:
            raise ValueError(f"head weights of shapes {shapes} do not fit the template's "
                             f"{template.shapes}")
        self.template = template
        self.head_weights = [np.asarray(w, np.float32) for w in head_weights]

    def save(self, path):
        import h5py

        template = self.template
        with zipfile.ZipFile(template.path) as source, zipfile.ZipFile(path, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == WEIGHTS_ENTRY:
                    buffer = io.BytesIO(data)
                    with h5py.File(buffer, "r+") as weights:
                        for name, value in zip(template.head_datasets, self.head_weights):
                            weights[name][...] = value
                    data = buffer.getvalue()
                    info.date_time = datetime.datetime.now().timetuple()[:6]
                elif info.filename == METADATA_ENTRY:
                    metadata = json.loads(data)
                    metadata["date_saved"] = datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")
                    data = json.dumps(metadata).encode()
                target.writestr(info, data)


def find_datasets(model_file, arrays):
    """The names of the HDF5 datasets of a .keras file that hold `arrays`, in order, or
    None unless each array is found exactly once (by shape, then value)."""
    import h5py

    with zipfile.ZipFile(model_file) as archive:
        with h5py.File(io.BytesIO(archive.read(WEIGHTS_ENTRY)), "r") as weights:
            by_shape = {}

            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    by_shape.setdefault(item.shape, []).append(name)

            weights.visititems(visit)
            found = []
            for array in arrays:
                matches = [name for name in by_shape.get(np.shape(array), [])
                           if np.array_equal(weights[name][()], array)]
                if len(matches) != 1:
                    return None
                found.append(matches[0])
    return found


def read_head_weights(model_file, head_datasets):
    """The head's weights (Keras' order) read from a model.keras file, without Keras."""
    import h5py

    with zipfile.ZipFile(model_file) as archive:
        with h5py.File(io.BytesIO(archive.read(WEIGHTS_ENTRY)), "r") as weights:
            return [np.asarray(weights[name][()], np.float32) for name in head_datasets]
