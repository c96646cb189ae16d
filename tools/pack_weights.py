"""Writes the ImageNet weights that smallcnn ships (smallcnn/model/weights/*.f16.npz) from the
originals in ../shared/weights (see their README for provenance and licences).

Each file holds, for every layer of the base with weights, in the model's order, the
arrays of Keras' `layer.save_own_variables` under "<position>/<index>" (layer names are
not stable: Keras numbers a second `normalization` layer `normalization_1` in the same
process), floating-point arrays in float16
(half the size; the pooled features stay within cosine 0.9999 of float32's, which
tests/test_bases.py checks against the reference features).

    .venv/bin/python tools/pack_weights.py
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "weights"
sys.path.insert(0, str(ROOT))

from smallcnn.model import efficientnet_lite  # noqa: E402
from smallcnn.model.bases import PACKAGED_WEIGHTS, get_base  # noqa: E402


def packed(model):
    arrays = {}
    for position, layer in enumerate(layer for layer in model.layers if layer.weights):
        store = {}
        layer.save_own_variables(store)
        for index, value in store.items():
            value = np.asarray(value)
            if value.dtype == np.float32:
                value = value.astype(np.float16)
            arrays[f"{position}/{index}"] = value
    return arrays


def efficientnet_b0():
    spec = get_base("efficientnet_b0")
    model = spec.constructor((spec.default_size, spec.default_size, 3), None)
    model.load_weights(str(SHARED / "efficientnet_b0_imagenet_notop.weights.h5"))
    return model


def efficientnet_lite2():
    spec = get_base("efficientnet_lite2")
    model = spec.constructor((spec.default_size, spec.default_size, 3), None)
    tensors = dict(np.load(SHARED / "efficientnet_lite2_imagenet_torch_names.npz"))
    efficientnet_lite.set_original_weights(model, tensors, "lite2")
    return model


def main():
    for name, build in (("efficientnet_b0", efficientnet_b0),
                        ("efficientnet_lite2", efficientnet_lite2)):
        target = PACKAGED_WEIGHTS / get_base(name).packaged_imagenet
        np.savez_compressed(target, **packed(build()))
        print(f"{target.relative_to(ROOT)}: {target.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
