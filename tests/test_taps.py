"""Intermediate taps: the pooled features of inner blocks, used by a run's head where they
gain on val (smallcnn.model.taps, smallcnn.train.taps)."""

import json
from pathlib import Path

import numpy as np
import pytest

from smallcnn.model.bases import BASES, build_base, get_base
from smallcnn.model.taps import GROUP_NORM, HeadInput, pooling, tap_tensors
from smallcnn.train import taps

QUICK = ("mobilenet_v2", "efficientnet_b0")  # the rest are built in the heavy tier


def _declared_widths_hold(name):
    spec = get_base(name)
    base = build_base(spec, 64, "none")
    assert [t.shape[-1] for t in tap_tensors(base, spec.taps)] == [w for _, w in spec.taps]


@pytest.mark.parametrize("name", QUICK)
def test_declared_taps_are_the_built_layers(name):
    _declared_widths_hold(name)


@pytest.mark.heavy
@pytest.mark.parametrize("name", [n for n, s in BASES.items() if s.taps and n not in QUICK])
def test_every_base_declares_its_taps_as_built(name):
    _declared_widths_hold(name)


def test_head_input_in_numpy_is_the_models_pool_layer():
    """predict's NumPy route (extractor output -> HeadInput) and model.keras's pool layer
    give the head the same numbers."""
    rng = np.random.default_rng(0)
    head_input = HeadInput((8, 3, 5), taps=True)
    maps = [rng.normal(size=(4, 3, 3, w)).astype("float32") for w in head_input.widths]
    raw = pooling(head_input, normalise=False)(maps)
    keras_input = np.asarray(pooling(head_input, normalise=True)(maps))
    np.testing.assert_allclose(head_input(np.asarray(raw)), keras_input, rtol=1e-5, atol=1e-5)
    groups = np.split(keras_input, [8, 11], axis=1)
    np.testing.assert_allclose([np.linalg.norm(g, axis=1) for g in groups], GROUP_NORM,
                               rtol=1e-5)
    last_only = HeadInput((8, 3, 5))
    np.testing.assert_array_equal(last_only(np.asarray(raw)), np.asarray(raw)[:, :8])
    with pytest.raises(ValueError, match="width 7"):
        last_only(np.zeros((2, 7)))


def test_taps_are_kept_only_where_they_gain_on_val():
    spec = get_base("efficientnet_b0")
    last, tapped = taps.candidates(spec, "auto")
    assert (last.taps, tapped.taps) == (False, True)
    assert taps.candidates(spec, "off") == [last] and taps.candidates(spec, "on") == [tapped]
    assert taps.candidates(get_base("small"), "on") == [HeadInput.of(get_base("small"))]

    def kept(taps_only, last_only, taps_loss=0.5, both=80):
        """Which head is kept when the taps' alone get `taps_only` val images right and
        the last layer's alone `last_only` (of 100; `both` right with either)."""
        right = np.zeros((2, 100), bool)
        right[:, :both] = True
        right[1, both : both + taps_only] = True
        right[0, both + taps_only : both + taps_only + last_only] = True
        trained = [taps.Trained(last, None, 0.5, right[0].mean(), right[0]),
                   taps.Trained(tapped, None, taps_loss, right[1].mean(), right[1])]
        return taps._better(trained)[0].head_input

    assert kept(6, 0) == tapped  # 6 more, none fewer: clear
    assert kept(taps.MIN_VAL_GAIN - 1, 0) == last  # within any seed's noise
    assert kept(10, 8) == last  # 2 more, but they disagree on 18: a coin would do that
    assert kept(14, 5) == tapped  # 9 more of 19 disagreements (sqrt 19 = 4.4)
    assert kept(6, 0, taps_loss=0.6) == last  # more right, but less sure of it


@pytest.fixture(scope="module")
def tapped_run(tmp_path_factory, base_weights_file):
    """An extract run whose heads read the taps (--taps on), MobileNetV2 at 32 px."""
    from conftest import make_dataset
    from smallcnn import train as training
    from smallcnn.train import Settings

    root = tmp_path_factory.mktemp("taps")
    data = make_dataset(root / "data", per_class=10, size=32, classes=("red", "green", "blue"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMALLCNN_CACHE", str(root / "cache"))
        result = training.extract(data, Settings(base="mobilenet_v2", image_size=32,
                                                 weights=str(base_weights_file), taps="on",
                                                 heads=1, epochs=5),
                                  out=root / "run")
    return result, data, root / "cache"


@pytest.mark.heavy
def test_a_tapped_run_predicts_as_its_saved_model(tapped_run, monkeypatch):
    import keras

    from smallcnn.inference.predict import Classifier
    from smallcnn.model import runs

    result, data, cache = tapped_run
    monkeypatch.setenv("SMALLCNN_CACHE", str(cache))
    # The base in float32, as the saved model runs (bf16 moves probabilities by ~1e-2).
    monkeypatch.setenv("SMALLCNN_ENGINE", "litert")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["taps"]["used"] is True
    assert metrics["taps"]["layers"] == [n for n, _ in get_base("mobilenet_v2").taps]
    config = runs.read_config(result.run_dir)
    recorded = HeadInput.from_dict(config["prediction"]["head_input"])
    assert recorded.taps and recorded.width == sum(recorded.widths)
    model = keras.saving.load_model(result.run_dir / "model.keras", safe_mode=True)  # plain
    images = sorted((data / "val").rglob("*.png"))
    pixels = np.stack([np.asarray(keras.utils.load_img(p, target_size=(32, 32))) for p in images])
    expected = np.asarray(model(pixels.astype("float32")))
    classifier = Classifier(None, config, result.run_dir)
    got = classifier._runner(len(pixels))(pixels)
    assert "numpy head" in classifier.engine
    np.testing.assert_allclose(got, expected, atol=2e-3)


@pytest.mark.heavy
def test_gradcam_and_export_work_on_a_tapped_run(tapped_run, monkeypatch):
    from smallcnn.inference.predict import load
    from smallcnn.visualize.gradcam import GradCam

    result, data, cache = tapped_run
    monkeypatch.setenv("SMALLCNN_CACHE", str(cache))
    classifier = load(result.run_dir)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    heatmaps, probabilities = GradCam(classifier.model, classifier.config)(pixels)
    assert heatmaps.shape[0] == 2 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    from conftest import invoke

    exported = invoke("export", result.run_dir, "--format", "tflite")
    assert exported.exit_code == 0, exported.output


def test_extract_without_taps_reads_the_last_layer_alone(tiny_data):
    """A base without taps (and --taps off) trains and records as before."""
    from smallcnn import train as training
    from smallcnn.train import Settings

    result = training.extract(tiny_data, Settings(base="small", image_size=32, epochs=2,
                                                  heads=1, taps="on"), out="run")
    assert "taps" not in result.metrics


@pytest.mark.heavy
def test_auto_tries_both_and_label_issues_choose_alike(tapped_run, base_weights_file,
                                                       monkeypatch):
    """--taps auto records both heads' val figures and keeps the taps only by the rule;
    check --label-issues makes the same choice on the same features."""
    from smallcnn import train as training
    from smallcnn.labels.label_issues import find_label_issues
    from smallcnn.progress import Reporter
    from smallcnn.train import Settings

    result, data, cache = tapped_run
    monkeypatch.setenv("SMALLCNN_CACHE", str(cache))  # the features are cached: no base pass
    settings = Settings(base="mobilenet_v2", image_size=32,
                        weights=str(base_weights_file), heads=1, epochs=5)
    auto = training.extract(data, settings, out="auto").metrics["taps"]
    assert set(auto["val_accuracy"]) == set(auto["val_loss"]) == {"last_layer", "with_taps"}
    duel = auto["val_images_right"]
    gained, disagreed = duel["taps_only"] - duel["last_only"], duel["taps_only"] + duel["last_only"]
    expected = gained >= max(taps.MIN_VAL_GAIN, taps.SIGNIFICANCE * disagreed ** 0.5) and \
        auto["val_loss"]["with_taps"] <= auto["val_loss"]["last_layer"]
    assert auto["used"] is expected
    notes = []

    class Notes(Reporter):
        def note(self, message):
            notes.append(message)

    find_label_issues(data, settings, folds=2, reporter=Notes())
    assert any(taps.describe(HeadInput.of(get_base("mobilenet_v2"), expected),
                             get_base("mobilenet_v2")) in n for n in notes)


@pytest.mark.heavy
def test_finetune_from_a_tapped_run_trains_end_to_end(tapped_run, tmp_path, monkeypatch):
    """Fine-tuning a run whose head reads the taps: no cut can hold them, so it trains end
    to end, saying why; the result still predicts."""
    from smallcnn import train as training
    from smallcnn.inference.predict import load
    from smallcnn.progress import Reporter
    from smallcnn.train import Settings

    result, data, cache = tapped_run
    monkeypatch.setenv("SMALLCNN_CACHE", str(cache))
    notes = []

    class Notes(Reporter):
        def note(self, message):
            notes.append(message)

    tuned = training.finetune(from_run=result.run_dir, settings=Settings(epochs=1),
                              out=tmp_path / "tuned", reporter=Notes())
    assert any("intermediate taps" in n for n in notes), notes
    images = sorted((data / "val").rglob("*.png"))[:4]
    assert len(load(tuned.run_dir).predict([str(p) for p in images])) == 4


def test_mixed_precision_keeps_the_pool_in_float32():
    """In float16 a group's sum of squares past 65504 overflows, and a zero group gives
    0 x inf: the pool layer keeps float32 as the output layer does."""
    import keras

    from smallcnn.runtime.devices import with_precision

    head_input = HeadInput((4, 3), taps=True)
    maps = [keras.Input((None, None, width)) for width in head_input.widths]
    model = keras.Model(maps, pooling(head_input, normalise=True)(maps))
    mixed = with_precision(model, "mixed_float16")
    groups = [np.zeros((1, 2, 2, 4), "float32"), np.full((1, 2, 2, 3), 300.0, "float32")]
    out = np.asarray(mixed(groups), dtype="float32")
    np.testing.assert_allclose(out, HeadInput((4, 3), taps=True)(
        np.concatenate([g.mean(axis=(1, 2)) for g in groups], axis=1)), rtol=1e-3)


@pytest.mark.heavy
def test_suggest_on_a_run_whose_taps_were_declared_otherwise(tapped_run, tmp_path,
                                                            monkeypatch):
    """A run made when its base's taps were others (its recorded widths are not today's
    extractor's): suggest ranks on the last layer's features and takes the probabilities
    from the whole model, as predict gives them."""
    import shutil

    from smallcnn.inference.predict import load
    from smallcnn.labels.pool import pool_features
    from smallcnn.model import runs

    result, data, cache = tapped_run
    monkeypatch.setenv("SMALLCNN_CACHE", str(cache))
    run = Path(shutil.copytree(result.run_dir, tmp_path / "older"))
    config = runs.read_config(run)
    config["prediction"]["head_input"]["widths"] = [1280, 50]
    # (its own conversion, of that width, is no longer in the cache: predict runs Keras)
    config["prediction"]["feature_engine"] = "gone.tflite"
    config["data"] = str(data)
    runs.write_json(run / runs.CONFIG_FILE, config)
    images = [str(p) for p in sorted((data / "val").rglob("*.png"))[:6]]
    pool = pool_features(images, run=run)
    assert pool.head_weights is None
    assert pool.features.shape == (6, get_base("mobilenet_v2").feature_width)
    expected = load(run).probabilities_of_files(pool.paths)[0]
    np.testing.assert_allclose(pool.probabilities, expected, atol=1e-4)
