"""The registry: every entry builds, and the names and widths it stores are real."""

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from smallcnn.model.bases import (BASES, DEFAULT_BASE, PACKAGED_WEIGHTS, build_base, get_base,
                                   resolve_weights)
from smallcnn.errors import UsageError, WeightsError
from smallcnn.model.taps import HeadInput

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "ants-bees"


# The default base, the fastest and the classic convnet in the quick tier; building the
# other seven (about 20 s on 2 cores) in the full run.
QUICK_BASES = {DEFAULT_BASE, "mobilenet_v2", "small"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[] if name in QUICK_BASES else [pytest.mark.heavy])
    for name in sorted(BASES)])
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


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No connection can be made, and Keras' download folder is empty."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("the network is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))


@pytest.mark.heavy  # builds MobileNetV2 at 224 px from the shipped weights (8 s)
def test_packaged_mobilenet_v2_weights_load_offline(offline):
    """Offline, ImageNet features of the bundled sample tell ants from bees: 20 of each,
    each put with the nearer mean of the others' features (random weights: about half)."""
    from smallcnn.data.images import load_images
    from smallcnn.model.networks import feature_extractor

    spec, per_class = get_base("mobilenet_v2"), 20
    paths = [str(path) for name in ("ants", "bees")
             for path in sorted((SAMPLE / "val" / name).iterdir())[:per_class]]
    pixels = load_images(paths, spec.default_size)[0].astype("float32")
    features = feature_extractor(spec, build_base(spec, spec.default_size, "imagenet"),
                                 spec.default_size)(pixels).numpy()
    features = HeadInput.of(spec)(features)  # the last layer's (the taps follow)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.repeat([0, 1], per_class)
    right = 0
    for i, feature in enumerate(features):
        others = np.arange(len(features)) != i
        means = [features[others & (labels == label)].mean(axis=0) for label in (0, 1)]
        right += int(np.argmax([feature @ mean for mean in means]) == labels[i])
    assert right / len(features) >= 0.8


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


@pytest.mark.slow
@pytest.mark.skipif(not MOBILENET_V1.exists(), reason=f"real weights not found at {MOBILENET_V1}")
def test_real_mobilenet_weights_from_a_path():
    import h5py

    base = build_base(get_base("mobilenet"), 64, resolve_weights(get_base("mobilenet"), str(MOBILENET_V1)))
    loaded = base.get_layer("conv1").get_weights()[0]
    with h5py.File(MOBILENET_V1, "r") as f:
        stored = []
        f.visititems(lambda name, obj: stored.append(obj[()]) if hasattr(obj, "shape") and obj.shape == loaded.shape else None)
    assert any(np.array_equal(loaded, s) for s in stored)


REFERENCE = SHARED / "weights" / "reference"
PACKAGED = sorted(name for name, spec in BASES.items() if spec.packaged_imagenet)


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.exists(), reason=f"reference features not found at {REFERENCE}")
@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_weights_give_the_reference_features(name, offline):
    """Offline, the packaged weights (float16 for the EfficientNets) through smallcnn's own
    preprocessing give the features the original float32 weights give, to cosine 0.9999."""
    import json

    from PIL import Image

    from smallcnn.model.networks import feature_extractor

    described = json.loads((REFERENCE / "reference_features.json").read_text())
    reference = described["models"][name]
    size = reference["input_size"][0]
    folder = SHARED / "datasets" / "ants-bees" / "val" / "ants"  # the project's copy differs
    images = np.stack([
        np.asarray(Image.open(folder / image).convert("RGB").resize((size, size), Image.BILINEAR),
                   dtype="float32")
        for image in described["images"]])
    spec = get_base(name)
    features = feature_extractor(spec, build_base(spec, size, "imagenet"), size)(images).numpy()
    features = HeadInput.of(spec)(features)  # the last layer's (the taps follow)
    expected = np.load(REFERENCE / reference["file"])
    cosine = (features * expected).sum(1) / (
        np.linalg.norm(features, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.9999


@pytest.mark.heavy
def test_efficientnet_lite_is_exact_at_any_size():
    """One model built for any size gives what a model built for that size gives, odd
    feature maps included (where keras.applications' fixed padding goes wrong)."""
    import keras

    from smallcnn.model import efficientnet_lite

    keras.utils.set_random_seed(0)
    fixed = efficientnet_lite.build("lite2", (67, 67, 3))
    any_size = efficientnet_lite.build("lite2", (None, None, 3))
    any_size.set_weights(fixed.get_weights())
    images = np.random.default_rng(0).uniform(-1, 1, (2, 67, 67, 3)).astype("float32")
    assert any_size(images).shape == fixed(images).shape == (2, 3, 3, 1280)
    np.testing.assert_allclose(any_size(images), fixed(images), atol=1e-5)


LITE2_TENSORS = SHARED / "weights" / "efficientnet_lite2_imagenet_torch_names.npz"


@pytest.mark.slow
@pytest.mark.skipif(not LITE2_TENSORS.exists(), reason=f"original tensors not at {LITE2_TENSORS}")
def test_efficientnet_lite_mapping_uses_every_original_tensor():
    """Every layer with weights gets its tensors, in Keras shapes, and every original
    tensor but the ImageNet classifier's finds a layer."""
    from smallcnn.model import efficientnet_lite

    class Recording(dict):
        used = set()

        def __getitem__(self, key):
            self.used.add(key)
            return super().__getitem__(key)

    with np.load(LITE2_TENSORS) as original:
        tensors = Recording(original)
    model = efficientnet_lite.build("lite2", (64, 64, 3))
    efficientnet_lite.set_original_weights(model, tensors, "lite2")  # raises on a wrong shape
    assert set(tensors) - tensors.used == {"_fc.weight", "_fc.bias"}


def test_packaged_weights_of_another_base_are_refused():
    lite2 = PACKAGED_WEIGHTS / get_base("efficientnet_lite2").packaged_imagenet
    with pytest.raises(WeightsError, match="does not fit the 'efficientnet_b0' base"):
        build_base(get_base("efficientnet_b0"), 64, str(lite2))


# The architectures' own blocks: EfficientNet-B0 16 + stem + top (+ its input
# Normalization); Lite2 21 + stem + top; MobileNetV2 16 + expanded_conv + Conv1 + Conv_1;
# ResNet50 16 residual blocks + conv1; MobileNet 13 depthwise-separable pairs + conv1.
@pytest.mark.parametrize("name, count", [("efficientnet_b0", 19), ("efficientnet_lite2", 23),
                                         ("mobilenet_v2", 19), ("resnet50", 17),
                                         ("mobilenet", 14)])
def test_blocks_are_the_architectures_blocks(name, count):
    from smallcnn.model.networks import base_blocks, unfreeze_candidates

    spec = get_base(name)
    base = build_base(spec, 64, "none")
    blocks = base_blocks(base, spec.block_pattern)
    assert [layer for block in blocks for layer in block] == unfreeze_candidates(base)
    assert len(blocks) == count


def test_top_blocks_of_efficientnet_and_mobilenet_v2():
    from smallcnn.model.networks import layers_to_unfreeze

    b0 = build_base(get_base("efficientnet_b0"), 64, "none")
    names = [layer.name for layer in layers_to_unfreeze(
        b0, None, 2, get_base("efficientnet_b0").block_pattern)]
    assert names[-1] == "top_conv" and {n.split("_")[0] for n in names} == {"block7a", "top"}
    assert {"block7a_expand_conv", "block7a_dwconv", "block7a_se_reduce",
            "block7a_project_conv"} <= set(names)
    v2 = build_base(get_base("mobilenet_v2"), 64, "none")
    names = [layer.name for layer in layers_to_unfreeze(
        v2, None, 2, get_base("mobilenet_v2").block_pattern)]
    assert names == ["block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"]
    with pytest.raises(UsageError, match="--unfreeze-blocks must be between 1 and"):
        layers_to_unfreeze(v2, None, 1000, get_base("mobilenet_v2").block_pattern)


def test_the_default_base_is_the_one_the_bench_chooses():
    """The README's rule, applied to the recorded bench/bases.py results, names the default."""
    from tools import default_base

    chosen, candidates = default_base.rule(default_base.load())
    assert set(candidates) == set(default_base.BUNDLED), \
        f"{default_base.RESULTS} lacks an extract cell"
    assert chosen == DEFAULT_BASE
