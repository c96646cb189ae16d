"""ConvNeXt and EfficientNetV2: built with random weights (their ImageNet weights are a
download), with the names, widths, blocks and cuts the registry says they have."""

import re

import numpy as np
import pytest

from smallcnn.errors import WeightsError
from smallcnn.model import modern
from smallcnn.model.bases import MODERN_BASES, build_base, get_base, resolve_weights

SIZE = 32  # the smallest image both families take (they downsample 32 times)
# The smallest of each family in the quick tier; the others are built in test_bases.py's
# heavy run and checked here only through the registry.
SMALL = ("convnext_tiny", "efficientnetv2_b0")


@pytest.fixture(scope="module")
def built():
    return {name: build_base(get_base(name), SIZE, "none") for name in SMALL}


def test_every_modern_entry_is_consistent():
    """Cheap checks of all eight: Keras' names, the published sizes, a download URL with
    the file name Keras caches it under, raw pixels in (their preprocessing is inside)."""
    import keras

    for spec in (spec for spec in MODERN_BASES if not spec.weights_folder):  # DINOv2 apart
        family = "ConvNeXt" if spec.name.startswith("convnext") else "EfficientNetV2"
        assert spec.preprocessing == "none" and spec.min_size == SIZE
        assert spec.default_size >= 224 and spec.weights_url.endswith("_notop.h5")
        assert spec.weights_url.startswith(
            modern.CONVNEXT_URL if family == "ConvNeXt" else modern.EFFICIENTNET_V2_URL)
        assert any(name.startswith(family) for name in dir(keras.applications))
        assert spec.dream_layers and spec.style_layers and spec.content_layer
        assert not spec.int8_friendly  # not measured


@pytest.mark.parametrize("name", SMALL)
def test_build_features_and_gradcam_layer(built, name):
    from smallcnn.model.networks import feature_extractor
    from smallcnn.model.taps import HeadInput

    spec, base = get_base(name), built[name]
    assert len(base.get_layer(spec.last_conv_layer).output.shape) == 4
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    features = feature_extractor(spec, base, SIZE)(images).numpy()  # the taps' too
    assert features.shape == (2, HeadInput.of(spec, taps=True).width)
    assert HeadInput.of(spec)(features).shape == (2, spec.feature_width)
    assert np.isfinite(features).all()


@pytest.mark.parametrize("name, blocks", [("convnext_tiny", 3 + 3 + 9 + 3 + 3 + 2),
                                          ("efficientnetv2_b0", 1 + 1 + 2 + 2 + 3 + 5 + 8 + 1)])
def test_blocks_are_the_architectures_blocks(built, name, blocks):
    """ConvNeXt-T: stem, 18 blocks, 3 downsamplings, its final norm; EfficientNetV2-B0:
    stem, 21 blocks, top. Every layer with weights is in one, in order."""
    from smallcnn.model.networks import base_blocks, unfreeze_candidates

    spec, base = get_base(name), built[name]
    grouped = base_blocks(base, spec.block_pattern)
    assert [layer for block in grouped for layer in block] == unfreeze_candidates(base)
    assert all(re.search(spec.block_pattern, layer.name)
               for layer in unfreeze_candidates(base))
    assert len(grouped) == blocks


@pytest.mark.parametrize("name, blocks, expected", [
    # ConvNeXt's residual sums are operations, not layers: the cut falls at a stage's input
    ("convnext_tiny", 2, "convnext_tiny_downsampling_block_2"),
    ("convnext_tiny", 4, "convnext_tiny_downsampling_block_2"),
    ("convnext_tiny", 5, "convnext_tiny_downsampling_block_1"),  # with stage 3's downsampling
    ("efficientnetv2_b0", 2, "block6g_add"),
])
def test_finetune_finds_a_cut_at_a_block_boundary(built, name, blocks, expected):
    from smallcnn.model.networks import layers_to_unfreeze
    from smallcnn.train import cut

    base = built[name]
    unfrozen = layers_to_unfreeze(base, None, blocks, get_base(name).block_pattern)
    at = cut.find_cut(base, unfrozen)
    assert base.layers[at].name == expected
    bottom, top = cut.split_base(base, at)
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(top(bottom(images)), base(images), rtol=1e-4, atol=1e-4)


@pytest.mark.heavy
@pytest.mark.parametrize("name", SMALL)
def test_litert_conversion_gives_the_keras_features(built, name, tmp_path):
    from smallcnn.model.networks import feature_extractor
    from smallcnn.runtime.litert import LiteRTEngine, convert_to_litert

    spec = get_base(name)
    extractor = feature_extractor(spec, built[name], SIZE)
    convert_to_litert(extractor, tmp_path / "base.tflite")
    images = np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    expected = extractor(images).numpy()
    np.testing.assert_allclose(LiteRTEngine(tmp_path / "base.tflite")(images), expected,
                               rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("name", SMALL)
def test_failed_download_names_the_file_the_url_and_where_to_put_it(monkeypatch, tmp_path,
                                                                    name):
    def no_network(fname, origin, **kwargs):
        raise OSError(f"URL fetch failure on {origin}: None -- network is unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network)
    spec = get_base(name)
    file = spec.weights_url.rsplit("/", 1)[-1]
    with pytest.raises(WeightsError) as raised:
        build_base(spec, SIZE, "imagenet")
    message = str(raised.value)
    assert "\n" not in message
    assert f"Could not download {file} for {name!r} from {spec.weights_url}" in message
    assert "--weights PATH" in message and "--weights none" in message
    assert str(tmp_path / "keras" / "models" / file) in message


def _save_published(base, path):
    """Writes `base`'s weights as keras.applications' published notop .h5 files are."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)


# About 3 s each: one in the quick tier.
@pytest.mark.parametrize("name, layout", [
    pytest.param(name, layout, marks=[] if (name, layout) == ("efficientnetv2_b0", "published")
                 else [pytest.mark.heavy])
    for name in SMALL for layout in ("published", "keras")])
def test_weights_path_loads_a_checkpoint(built, name, layout, tmp_path):
    """A random checkpoint, as Keras downloads it (the published name) or as
    `save_weights` writes it, loads through --weights into a fresh build (whose
    automatic layer names differ: other models were built before it)."""
    spec, saved = get_base(name), built[name]
    if layout == "published":
        path = tmp_path / spec.weights_url.rsplit("/", 1)[-1]
        _save_published(saved, path)
    else:
        path = tmp_path / f"{name}.weights.h5"
        saved.save_weights(path)
    loaded = build_base(spec, SIZE, resolve_weights(spec, str(path)))
    images = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images), saved(images), rtol=1e-5, atol=1e-5)


def test_the_checkpoint_of_the_other_family_is_refused(built, tmp_path):
    path = tmp_path / "b0.weights.h5"
    built["efficientnetv2_b0"].save_weights(path)
    with pytest.raises(WeightsError,
                       match="does not fit the 'convnext_tiny' base.*convnext_tiny_notop.h5"):
        build_base(get_base("convnext_tiny"), SIZE, str(path))


@pytest.mark.heavy
def test_finetune_of_convnext_trains_from_its_cut(built, tiny_data, tmp_path):
    """The whole command on a random checkpoint (as --weights PATH): the top two blocks
    train from activations cached at stage 3's input (LayerNorm keeps them in float16's
    range even with random weights)."""
    import json

    from conftest import invoke

    path = tmp_path / "convnext_tiny.weights.h5"
    built["convnext_tiny"].save_weights(path)
    result = invoke("finetune", tiny_data, "--base", "convnext_tiny", "--weights", str(path),
                    "--image-size", str(SIZE), "--head-epochs", "1", "--epochs", "1",
                    "--unfreeze-blocks", "2", "--batch-size", "8", "--engine", "litert",
                    "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    assert "Fine-tuning from activations at 'convnext_tiny_downsampling_block_2'" \
        in result.output
    metrics = json.loads((tmp_path / "runs/ft/metrics.json").read_text())
    assert metrics["unfrozen_layers"][0] == f"convnext_tiny_{modern.FINAL_NORM}"
    assert "convnext_tiny_stage_3_block_2_depthwise_conv" in metrics["unfrozen_layers"]
