"""DINOv2 through KerasHub: a tiny randomly initialised DINOV2Backbone (its presets are a
download from Kaggle) built through the registry, with the features, blocks, cut, Grad-CAM
layer and weights folders the registry says it has."""

import dataclasses
import json

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from conftest import invoke, make_image  # noqa: E402
from smallcnn.errors import UsageError, WeightsError  # noqa: E402
from smallcnn.model import bases, dinov2  # noqa: E402
from smallcnn.model.bases import build_base, get_base, resolve_weights  # noqa: E402

NAME = "dinov2_vits14"
SIZE = 3 * dinov2.PATCH  # 3 x 3 patches
TINY = dict(patch_size=dinov2.PATCH, num_layers=3, hidden_dim=16, num_heads=2,
            intermediate_dim=32)


@pytest.fixture
def tiny(monkeypatch):
    """The registry's DINOv2 entries made tiny (3 blocks of width 16): their spec."""
    for name in dinov2.ARCHITECTURES:
        monkeypatch.setitem(dinov2.ARCHITECTURES, name, TINY)
        monkeypatch.setitem(bases.BASES, name, dataclasses.replace(
            bases.BASES[name], feature_width=dinov2.feature_width(name)))
    return get_base(NAME)


def pixels(count, seed=0, size=SIZE):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def backbone(architecture=TINY, size=SIZE):
    return keras_hub.models.DINOV2Backbone(**architecture, image_shape=(size, size, 3))


def test_the_entries_are_the_published_models():
    """Widths twice the hidden size (CLS and mean patch token), KerasHub's presets, raw
    pixels in (normalised inside), no DeepDream or style layers (one image size)."""
    presets = keras_hub.models.DINOV2Backbone.presets
    for name, hidden in (("dinov2_vits14", 384), ("dinov2_vitb14", 768)):
        spec = get_base(name)
        assert spec.feature_width == 2 * hidden == dinov2.feature_width(name)
        assert spec.preprocessing == "none" and spec.default_size % dinov2.PATCH == 0
        assert spec.weights_folder and spec.default_weights == "imagenet"
        assert dinov2.PRESETS[name] in presets
        assert not (spec.dream_layers or spec.style_layers or spec.content_layer)
        assert spec in bases.MODERN_BASES


def test_features_are_the_cls_and_mean_patch_token(tiny):
    """Through the registry: (B, 1, 1, 2 x hidden) pooled to 2 x hidden; directly: the
    backbone's CLS token beside its mean patch token on normalised pixels."""
    from smallcnn.model.networks import feature_extractor

    base = build_base(tiny, SIZE, "none")
    assert tuple(base.output.shape) == (None, 1, 1, tiny.feature_width)
    assert tuple(base.get_layer(tiny.last_conv_layer).output.shape) == (None, 3, 3, 16)
    features = feature_extractor(tiny, base, SIZE)(pixels(2)).numpy()
    assert features.shape == (2, tiny.feature_width) and np.isfinite(features).all()

    original = backbone()
    wrapped = dinov2.wrap(NAME, original)
    normalised = (pixels(2) - np.asarray(dinov2.MEAN)) / np.asarray(dinov2.STD)
    tokens = original({"images": normalised.astype("float32")}).numpy()
    expected = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=1)
    np.testing.assert_allclose(wrapped(pixels(2)).numpy()[:, 0, 0], expected, atol=1e-5)


def test_blocks_are_the_embedding_each_transformer_block_and_the_final_norm(tiny):
    from smallcnn.model.networks import base_blocks, unfreeze_candidates, unfreeze_top

    base = build_base(tiny, SIZE, "none")
    grouped = base_blocks(base, tiny.block_pattern)
    assert [[layer.name for layer in block] for block in grouped] == \
        [[dinov2.EMBEDDINGS], ["block_0"], ["block_1"], ["block_2"], [dinov2.FINAL_NORM]]
    assert [layer for block in grouped for layer in block] == unfreeze_candidates(base)
    assert unfreeze_top(base, None, 2, tiny.block_pattern) == [dinov2.FINAL_NORM, "block_2"]
    assert {layer.name for layer in base.layers if layer.trainable_weights} == \
        {dinov2.FINAL_NORM, "block_2"}


@pytest.mark.heavy  # ~3 s: two bases saved and loaded
def test_trained_position_embeddings_survive_a_model_keras(tiny, tmp_path):
    """KerasHub interpolates position embeddings back to 518 px to save them (and only
    when their sum fell); the base keeps them at the image's size, so a model.keras
    loaded by plain Keras gives the trained base's outputs, whichever way they moved."""
    import keras

    for sign in (1, -1):
        base = build_base(tiny, SIZE, "none")
        position = base.get_layer(dinov2.EMBEDDINGS).interpolated_position_embeddings
        moved = np.random.default_rng(4).uniform(0, 1, position.shape)  # as training would
        position.assign(position + sign * moved)
        base.save(tmp_path / "base.keras")
        loaded = keras.saving.load_model(tmp_path / "base.keras", safe_mode=True)
        np.testing.assert_allclose(loaded(pixels(2)), base(pixels(2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocks, expected", [(2, "block_1"), (4, "embeddings"),
                                              (5, "normalize")])
def test_finetune_finds_a_cut_between_blocks(tiny, blocks, expected):
    from smallcnn.model.networks import layers_to_unfreeze
    from smallcnn.train import cut

    base = build_base(tiny, SIZE, "none")
    at = cut.find_cut(base, layers_to_unfreeze(base, None, blocks, tiny.block_pattern))
    assert base.layers[at].name == expected
    bottom, top = cut.split_base(base, at)
    np.testing.assert_allclose(top(bottom(pixels(2))), base(pixels(2)), rtol=1e-4, atol=1e-4)


def test_gradcam_maps_the_patch_grid(tiny):
    from smallcnn.model.networks import build_classifier, build_head
    from smallcnn.visualize.gradcam import GradCam

    base = build_base(tiny, SIZE, "none")
    model = build_classifier(tiny, base, build_head(tiny.feature_width, 3), SIZE)
    heatmaps, probabilities = GradCam(model, {"base": NAME, "base_layer": base.name})(pixels(2))
    assert heatmaps.shape == (2, 3, 3) and probabilities.shape == (2, 3)
    assert heatmaps.min() >= 0 and heatmaps.max() == pytest.approx(1.0)


@pytest.mark.heavy  # ~3 s: a conversion
def test_litert_conversion_gives_the_keras_features(tiny, tmp_path):
    from smallcnn.model.networks import feature_extractor
    from smallcnn.runtime.litert import LiteRTEngine, convert_to_litert

    extractor = feature_extractor(tiny, build_base(tiny, SIZE, "none"), SIZE)
    convert_to_litert(extractor, tmp_path / "base.tflite")
    expected = extractor(pixels(3, seed=2)).numpy()
    np.testing.assert_allclose(LiteRTEngine(tmp_path / "base.tflite")(pixels(3, seed=2)),
                               expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_weights_path_loads_a_preset_folder_or_a_weights_file(tiny, tmp_path):
    """A random preset saved in KerasHub's published layout, and the base's
    `save_weights` file, both load through --weights into the same features."""
    saved = backbone()
    expected = dinov2.wrap(NAME, saved)(pixels(2)).numpy()
    folder = tmp_path / "dinov2_small"
    saved.save_to_preset(str(folder))
    assert all((folder / file).is_file() for file in dinov2.PRESET_FILES)
    resolved = resolve_weights(tiny, str(folder))
    assert resolved == str(folder.resolve())
    np.testing.assert_allclose(build_base(tiny, SIZE, resolved)(pixels(2)), expected,
                               rtol=1e-5, atol=1e-5)
    build_base(tiny, SIZE, resolved).save_weights(tmp_path / "base.weights.h5")
    loaded = build_base(tiny, SIZE, resolve_weights(tiny, str(tmp_path / "base.weights.h5")))
    np.testing.assert_allclose(loaded(pixels(2)), expected, rtol=1e-5, atol=1e-5)


def test_a_preset_at_another_size_interpolates_its_position_embeddings(tiny, tmp_path):
    """Saved at 42 px (3 x 3 patches), loaded at 56 (4 x 4): the features fit the entry."""
    backbone().save_to_preset(str(tmp_path / "preset"))
    base = build_base(tiny, 4 * dinov2.PATCH, str(tmp_path / "preset"))
    assert tuple(base.get_layer(tiny.last_conv_layer).output.shape) == (None, 4, 4, 16)
    assert np.isfinite(base(pixels(1, size=4 * dinov2.PATCH)).numpy()).all()


def test_wrong_folders_are_refused_in_one_line(tiny, tmp_path):
    backbone({**TINY, "hidden_dim": 24}).save_to_preset(str(tmp_path / "wide"))
    (tmp_path / "empty").mkdir()
    for folder, expected in (("wide", "is not dinov2_vits14's architecture"),
                             ("empty", "is not a KerasHub DINOv2 preset")):
        with pytest.raises(WeightsError, match=expected) as raised:
            build_base(tiny, SIZE, resolve_weights(tiny, str(tmp_path / folder)))
        assert "\n" not in str(raised.value)
    with pytest.raises(UsageError, match="or a KerasHub preset folder; no file at 'missing'"):
        resolve_weights(tiny, "missing")
    with pytest.raises(UsageError, match="or a weights file; no file at"):  # other bases
        resolve_weights(get_base("efficientnet_b0"), str(tmp_path / "empty"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """KerasHub's downloads fail at once (the real ones retry for ~15 s), other presets
    (local folders) load; kagglehub's cache is an empty folder."""
    original = keras_hub.models.DINOV2Backbone.from_preset

    def from_preset(preset, **kwargs):
        if preset in dinov2.PRESETS.values():
            raise OSError("HTTPSConnectionPool(host='api.kaggle.com', port=443): Max "
                          "retries exceeded with url: /v1/models.ModelApiService/DownloadModel"
                          "InstanceVersion\nwith a second line")
        return original(preset, **kwargs)

    monkeypatch.setattr(keras_hub.models.DINOV2Backbone, "from_preset", from_preset)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    return tmp_path / "kagglehub"


def test_failed_download_names_the_preset_where_from_and_where_to_put_it(tiny, offline):
    with pytest.raises(WeightsError) as raised:
        build_base(tiny, SIZE, "imagenet")
    message = str(raised.value)
    folder = offline / "models" / "keras" / "dinov2" / "keras" / "dinov2_small" / "1"
    assert "\n" not in message
    assert "Could not download KerasHub's dinov2_small preset for 'dinov2_vits14' from " \
           "Kaggle (kaggle://keras/dinov2/keras/dinov2_small/1: OSError: HTTPSConnectionPool" \
           in message
    reason = message.split("dinov2_small/1: ", 1)[1].split("). Offline", 1)[0]
    assert len(reason) == dinov2.REASON_CHARS and reason.endswith("...")  # cut short
    assert "--weights PATH" in message and "--weights none" in message
    assert f"into {folder};" in message and dinov2.preset_folder(NAME) == folder


@pytest.mark.heavy  # ~3 s: a preset saved and loaded
def test_a_preset_in_kagglehubs_cache_loads_without_a_network(tiny, offline):
    saved = backbone()
    saved.save_to_preset(str(dinov2.preset_folder(NAME)))
    np.testing.assert_allclose(build_base(tiny, SIZE, "imagenet")(pixels(2)),
                               dinov2.wrap(NAME, saved)(pixels(2)), rtol=1e-5, atol=1e-5)


def test_without_keras_hub_the_extra_is_named(tiny, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub fails
    for weights in ("none", "imagenet"):
        with pytest.raises(UsageError, match=r'pip install "smallcnn\[dinov2\]"') as raised:
            build_base(tiny, SIZE, weights)
        assert "\n" not in str(raised.value)


def test_dream_and_style_refuse_it_in_one_line(tiny, tmp_path):
    image = tmp_path / "photo.png"
    make_image(np.random.default_rng(0), (200, 120, 40), 64).save(image)
    for command in (["dream", image], ["style", image, image]):
        result = invoke("visualize", *command, "--base", NAME, "--weights", "none")
        assert result.exit_code == UsageError.exit_code, result.output
        assert "built for one image size" in result.output
        assert "--base efficientnet_b0" in result.output


@pytest.mark.heavy  # extract, finetune, predict and pictures on a tiny preset (~30 s)
def test_extract_finetune_and_predict_from_a_preset_folder(tiny, tiny_data, tmp_path):
    """The commands on a random preset (as --weights PATH): finetune trains the top two
    blocks from activations cached below them, and its model.keras predicts; Grad-CAM and
    the activations (no conv layer: the patch grid) are drawn."""
    backbone().save_to_preset(str(tmp_path / "preset"))
    common = ["--base", NAME, "--weights", tmp_path / "preset", "--image-size", SIZE,
              "--batch-size", "8", "--engine", "litert"]
    result = invoke("extract", tiny_data, *common, "--out", "runs/ex")
    assert result.exit_code == 0, result.output
    result = invoke("finetune", tiny_data, *common, "--head-epochs", "1", "--epochs", "1",
                    "--unfreeze-blocks", "2", "--out", "runs/ft")
    assert result.exit_code == 0, result.output
    assert "Fine-tuning from activations at 'block_1'" in result.output
    metrics = json.loads((tmp_path / "runs/ft/metrics.json").read_text())
    assert metrics["unfrozen_layers"][:2] == [dinov2.FINAL_NORM, "block_2"]
    for run in ("runs/ex", "runs/ft"):
        result = invoke("predict", tiny_data / "val" / "red", "--model", run)
        assert result.exit_code == 0, result.output
    image = next((tiny_data / "val" / "red").iterdir())
    for command in ("gradcam", "activations"):
        result = invoke("visualize", command, image, "--model", "runs/ex")
        assert result.exit_code == 0, result.output
    assert (tmp_path / f"runs/ex/visualize/{image.stem}-activations-{dinov2.PATCH_GRID}.png"
            ).is_file()
