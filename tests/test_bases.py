"""The registry: every entry builds, and the names and widths it stores are real."""

import numpy as np
import pytest

from conftest import SHARED
from smallcnn.bases import BASES, build_base, get_base, resolve_weights
from smallcnn.errors import UsageError, WeightsError


@pytest.mark.parametrize("name", sorted(BASES))
def test_entry_matches_the_real_model(name):
    spec = BASES[name]
    size = max(spec.min_size, 32)
    base = build_base(spec, size, "none")
    assert base.get_layer(spec.last_conv_layer) is not None
    assert base.output.shape[-1] == spec.feature_width


def test_unknown_base_and_too_small_image():
    with pytest.raises(UsageError, match="Unknown base: 'vgg17'.*mobilenet_v2"):
        get_base("vgg17")
    with pytest.raises(UsageError, match="at least 75 pixels"):
        build_base(get_base("inception_v3"), 40, "none")


def test_resolve_weights():
    assert resolve_weights(get_base("mobilenet_v2"), None) == "imagenet"
    assert resolve_weights(get_base("small"), None) == "none"
    with pytest.raises(UsageError, match="no pretrained weights"):
        resolve_weights(get_base("small"), "imagenet")
    with pytest.raises(UsageError, match="no file at 'missing.h5'"):
        resolve_weights(get_base("vgg16"), "missing.h5")


def test_packaged_mobilenet_v2_weights_load_offline():
    base = build_base(get_base("mobilenet_v2"), 96, "imagenet")
    kernel = base.get_layer("Conv1").get_weights()[0]
    assert kernel.shape == (3, 3, 3, 32) and np.abs(kernel).sum() > 0


def test_failed_download_says_what_to_do(monkeypatch, tmp_path):
    import urllib.request

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", no_network)
    with pytest.raises(WeightsError, match=r"Could not download.*--weights PATH.*--weights none"):
        build_base(get_base("vgg16"), 32, "imagenet")


def test_weights_file_that_does_not_fit(base_weights_file):
    with pytest.raises(WeightsError, match="does not fit the 'vgg16' base"):
        build_base(get_base("vgg16"), 32, str(base_weights_file))


MOBILENET_V1 = SHARED / "weights" / "mobilenet_1.0_224_imagenet_notop.weights.h5"


@pytest.mark.skipif(not MOBILENET_V1.exists(), reason=f"real weights not found at {MOBILENET_V1}")
def test_real_mobilenet_weights_from_a_path():
    import h5py

    base = build_base(get_base("mobilenet"), 64, resolve_weights(get_base("mobilenet"), str(MOBILENET_V1)))
    loaded = base.get_layer("conv1").get_weights()[0]
    with h5py.File(MOBILENET_V1, "r") as f:
        stored = []
        f.visititems(lambda name, obj: stored.append(obj[()]) if hasattr(obj, "shape") and obj.shape == loaded.shape else None)
    assert any(np.array_equal(loaded, s) for s in stored)
