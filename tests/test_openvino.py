"""OpenVINO as the frozen base's engine: parity with LiteRT, its compiled-model cache, what
auto and a forced engine do where it cannot run, and what runs record of it."""

import json
import time
import types

import numpy as np
import pytest

from conftest import invoke

from smallcnn.errors import UsageError
from smallcnn.runtime import cache, openvino, race
from smallcnn.runtime.engine import expected_engine, open_engine
from smallcnn.runtime.litert import LiteRTEngine

pytest.importorskip("openvino")


class Said:
    """A reporter that keeps what it is told."""

    def __init__(self):
        self.lines = []

    def note(self, text):
        self.lines.append(text)

    warning = note


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A small random-weight conv base (conv, batch norm, ReLU6, depthwise conv, pooled) as
    a .tflite file, as the cache holds a base's conversion."""
    import keras

    from smallcnn.runtime.litert import convert_to_litert

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((32, 32, 3)), layers.Rescaling(1 / 127.5, -1),
        layers.Conv2D(16, 3, strides=2, padding="same"), layers.BatchNormalization(),
        layers.ReLU(6.0), layers.DepthwiseConv2D(3, padding="same"), layers.Conv2D(32, 1),
        layers.ReLU(6.0), layers.GlobalAveragePooling2D()])
    path = tmp_path_factory.mktemp("base") / "base.tflite"
    convert_to_litert(model, path)
    return path


@pytest.fixture
def float32_cpu(monkeypatch):
    """A CPU without BF16: auto's OpenVINO runs float32 and races LiteRT."""
    monkeypatch.setattr(openvino, "best_precision", lambda: "float32")


def images(count=24, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_openvino_features_match_litert(tiny_base):
    x = images()
    reference = LiteRTEngine(tiny_base)(x)
    exact = open_engine(tiny_base, "openvino", precision="float32")
    assert (exact.name, exact.precision) == ("openvino", "float32")
    np.testing.assert_allclose(exact(x), reference, rtol=1e-4, atol=1e-4)
    fast = open_engine(tiny_base, "openvino")  # the CPU's best: bfloat16 where it has BF16
    assert fast.precision == openvino.best_precision()
    assert cosines(fast(x), reference).min() >= 0.99
    assert fast(x[:0]).shape == (0, reference.shape[1])
    assert exact(x.astype(np.float32)).dtype == np.float32  # float batches too


def test_auto_and_a_forced_openvino_run_the_cpus_best_precision(tiny_base, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    if openvino.best_precision() != "bfloat16":
        pytest.skip("this CPU has no BF16")
    calls = _timed_as(monkeypatch, {"litert": 1.0, "openvino": 2.0})
    said = Said()
    auto = open_engine(tiny_base, "auto", said)
    assert (auto.name, auto.precision) == ("openvino", "bfloat16") and calls == []  # no race
    assert said.lines == ["Frozen base engine: OpenVINO, bfloat16 (--engine auto)."]
    assert expected_engine("auto") == ("openvino", "bfloat16")
    forced = open_engine(tiny_base, "openvino")
    assert forced.precision == "bfloat16"
    assert expected_engine("openvino") == ("openvino", "bfloat16")
    trained = open_engine(tiny_base, "auto", precision="float32")
    assert trained.precision == "float32"  # a run's own precision


def test_without_bf16_auto_runs_float32(tiny_base, tmp_path, monkeypatch, float32_cpu):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    _timed_as(monkeypatch, {"litert": 2.0, "openvino": 1.0})
    said = Said()
    auto = open_engine(tiny_base, "auto", said)
    assert (auto.name, auto.precision) == ("openvino", "float32")
    assert said.lines == ["Frozen base engine: OpenVINO, float32 (auto: measured 2.00x "
                          "faster here than LiteRT float32)."]
    assert expected_engine("auto") == ("openvino", "float32")


def test_the_compiled_model_is_cached_and_reused(tiny_base, tmp_path, monkeypatch):
    from smallcnn.runtime import cache

    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    open_engine(tiny_base, "openvino")
    compiled = sorted(cache.root("engines").glob("*.blob"))
    assert compiled, "no compiled model in the cache"
    files = [blob.stat().st_ino for blob in compiled]  # a blob written anew is a new file
    again = open_engine(tiny_base, "openvino")
    assert sorted(cache.root("engines").glob("*.blob")) == compiled  # read, not compiled anew
    assert [blob.stat().st_ino for blob in compiled] == files
    assert again(images(2)).shape[0] == 2
    assert [e[0] for e in cache.entries()] == ["engines"] * len(compiled)  # under the cap


def test_a_cached_compiled_model_is_imported_without_reading_the_tflite(tiny_base, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    x = images(4)
    compiled_now = open_engine(tiny_base, "openvino", precision="float32")(x)
    real = openvino._core()

    class Core:  # OpenVINO's, except that reading a model fails
        def __getattr__(self, name):
            return getattr(real, name)

        def read_model(self, *args):
            raise AssertionError("the .tflite was read although its compiled model is cached")

    monkeypatch.setattr(openvino, "_core", Core)
    imported = open_engine(tiny_base, "openvino", precision="float32")
    assert imported.input_shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(imported(x), compiled_now)


def _timed_as(monkeypatch, seconds):
    """Races timed as `seconds` {engine name: seconds a batch} say, whichever engine is
    really faster here; returns the engines timed, one name a call."""
    calls = []

    def timed(run, images):
        calls.append(run.name)
        return seconds[run.name]

    monkeypatch.setattr(race, "_timed", timed)
    return calls


def test_auto_races_a_model_once_and_reuses_the_recorded_winner(tiny_base, tmp_path,
                                                                monkeypatch, float32_cpu):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    calls = _timed_as(monkeypatch, {"litert": 1.0, "openvino": 1.5})
    said = Said()
    first = open_engine(tiny_base, "auto", said)
    assert (first.name, first.precision) == ("litert", "float32")
    assert said.lines == ["Frozen base engine: LiteRT, float32 (auto: measured 1.50x faster "
                          "here than OpenVINO float32)."]
    assert calls and calls.count("litert") == calls.count("openvino") <= race.RACE_ROUNDS
    assert calls[:4] == ["litert", "openvino", "openvino", "litert"]  # in turns
    assert (cache.root("engines") / openvino.race_name(tiny_base)).is_file()
    assert expected_engine("auto", model=tiny_base) == ("litert", "float32")
    raced = len(calls)
    said.lines.clear()

    def never(*args, **kwargs):
        raise AssertionError("OpenVINO opened although LiteRT's win is recorded")

    monkeypatch.setattr(openvino, "OpenVINOEngine", never)
    again = open_engine(tiny_base, "auto", said)  # the recorded LiteRT win: no race
    assert again.name == "litert" and len(calls) == raced
    assert said.lines == ["Frozen base engine: LiteRT, float32 (auto: measured 1.50x faster "
                          "here than OpenVINO float32)."]


def test_a_recorded_openvino_win_opens_openvino_without_racing(tiny_base, tmp_path,
                                                               monkeypatch, float32_cpu):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    calls = _timed_as(monkeypatch, {"litert": 3.0, "openvino": 2.0})
    assert open_engine(tiny_base, "auto").name == "openvino"
    raced = len(calls)
    said = Said()
    again = open_engine(tiny_base, "auto", said)
    assert (again.name, again.precision) == ("openvino", "float32") and len(calls) == raced
    assert said.lines == ["Frozen base engine: OpenVINO, float32 (auto: measured 1.50x "
                          "faster here than LiteRT float32)."]


def test_a_damaged_race_record_is_raced_again_with_one_line(tiny_base, tmp_path, monkeypatch,
                                                             float32_cpu):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    calls = _timed_as(monkeypatch, {"litert": 1.0, "openvino": 2.0})
    open_engine(tiny_base, "auto")
    record = cache.root("engines") / openvino.race_name(tiny_base)
    record.write_text('{"winner": "tensorflow"')
    raced = len(calls)
    said = Said()
    engine = open_engine(tiny_base, "auto", said)
    assert engine.name == "litert" and len(calls) > raced
    assert len(said.lines) == 2 and said.lines[0].startswith(
        f"Removed a damaged cache entry {record} (") and "\n" not in said.lines[0]
    assert said.lines[1].startswith("Frozen base engine: LiteRT, float32 (auto: measured")
    assert race.recorded(record.name, ("litert", "openvino"))["winner"] == "litert"


@pytest.mark.parametrize("forced", ["openvino", "litert"])
def test_forced_engines_never_race(tiny_base, tmp_path, monkeypatch, forced):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    calls = _timed_as(monkeypatch, {"litert": 1.0, "openvino": 2.0})
    assert open_engine(tiny_base, forced).name == forced
    monkeypatch.setenv("SMALLCNN_ENGINE", forced)
    assert open_engine(tiny_base, "auto").name == forced
    assert expected_engine("auto", model=tiny_base)[0] == forced
    assert calls == [] and not (cache.root("engines") / openvino.race_name(tiny_base)).exists()


def test_a_run_trained_on_bf16_features_keeps_bf16_without_racing(tiny_base, tmp_path,
                                                                  monkeypatch):
    if openvino.best_precision() != "bfloat16":
        pytest.skip("this CPU has no BF16")
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    calls = _timed_as(monkeypatch, {"litert": 1.0, "openvino": 2.0})
    trained = open_engine(tiny_base, "auto", precision="bfloat16")
    assert (trained.name, trained.precision) == ("openvino", "bfloat16") and calls == []


def test_openvino_failing_in_the_race_leaves_litert_with_one_line_and_no_record(
        tiny_base, tmp_path, monkeypatch, float32_cpu):
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))

    def failing(self, images):
        raise RuntimeError("Exception from src/inference: no kernel")

    monkeypatch.setattr(openvino.OpenVINOEngine, "__call__", failing)
    said = Said()
    engine = open_engine(tiny_base, "auto", said)
    assert engine.name == "litert"
    assert said.lines == ["Frozen base engine: LiteRT, float32 (OpenVINO not used: racing "
                          "LiteRT it failed: RuntimeError: Exception from src/inference: no "
                          "kernel)."]
    assert not (cache.root("engines") / openvino.race_name(tiny_base)).exists()


def test_a_race_keeps_to_its_time_budget(monkeypatch):
    def slow(images):
        slow.calls += 1
        time.sleep(0.05)

    slow.calls = 0
    result = race.race({"litert": slow, "openvino": slow}, (1, 4, 4, 3), seconds=0.15)
    assert result["winner"] in ("litert", "openvino") and result["speedup"] >= 1
    assert slow.calls == 2 + 2  # the warm-ups and one pair: a second pair would overrun
    assert result["seconds"] < 0.15 + 0.3  # sleeps overshoot on a busy machine


def _without_openvino(monkeypatch):
    def missing():
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(openvino, "_core", missing)


def test_a_forced_openvino_that_cannot_run_says_why_in_one_line(tiny_base, monkeypatch):
    _without_openvino(monkeypatch)
    with pytest.raises(UsageError) as refused:
        open_engine(tiny_base, "openvino")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("--engine openvino: OpenVINO cannot run here: openvino is not "
                              "installed") and "use --engine auto or --engine litert" in message


def test_auto_falls_back_to_litert_with_one_line(tiny_base, monkeypatch):
    _without_openvino(monkeypatch)
    said = Said()
    engine = open_engine(tiny_base, "auto", said)
    assert (engine.name, engine.precision) == ("litert", "float32")
    assert said.lines == ["Frozen base engine: LiteRT, float32 (OpenVINO not used: openvino "
                          "is not installed (No module named 'openvino'))."]
    assert expected_engine("auto") == ("litert", "float32")


def test_bfloat16_asked_of_a_cpu_without_it_runs_float32_and_says_so(tiny_base, float32_cpu):
    said = Said()
    engine = open_engine(tiny_base, "auto", said, precision="bfloat16")
    assert engine.precision == "float32"
    assert said.lines[0] == "OpenVINO runs in float32 on this CPU, not bfloat16."


def test_the_features_cache_keeps_engines_and_precisions_apart(tiny_data, monkeypatch):
    from smallcnn.data.dataset import Split
    from smallcnn.model.bases import get_base
    from smallcnn.runtime.devices import Placement
    from smallcnn.train import Settings
    from smallcnn.train.feature_store import features_key

    settings = Settings(base="mobilenet_v2", image_size=32).resolve("extract")
    plan = types.SimpleNamespace(weights="imagenet", settings=settings,
                                 spec=get_base("mobilenet_v2"),
                                 placement=Placement(["/cpu:0"], "float32"))
    split = Split("train", ["a.png", "b.png"], np.array([0, 1], np.int32))
    digests = {"a.png": "1" * 40, "b.png": "2" * 40}
    keys = {engine: features_key(plan, digests, split, engine=engine)
            for engine in [("openvino", "bfloat16"), ("openvino", "float32"),
                           ("litert", "float32")]}
    assert len(set(keys.values())) == 3
    monkeypatch.setenv("SMALLCNN_ENGINE", "litert")
    assert features_key(plan, digests, split) == keys["litert", "float32"]
    monkeypatch.setenv("SMALLCNN_ENGINE", "openvino")
    assert features_key(plan, digests, split) == keys["openvino", openvino.best_precision()]


@pytest.mark.heavy
def test_runs_and_predict_json_say_the_engine(tiny_data, base_weights_file, monkeypatch):
    run = ["--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32",
           "--epochs", "2"]
    best = openvino.best_precision()
    assert invoke("extract", tiny_data, *run, "--engine", "openvino",
                  "--out", "runs/ov").exit_code == 0
    metrics = json.loads(open("runs/ov/metrics.json").read())
    assert (metrics["engine"], metrics["engine_precision"]) == \
        ("openvino", openvino.best_precision())
    route = json.loads(open("runs/ov/smallcnn.json").read())["prediction"]
    assert (route["engine"], route["precision"]) == ("openvino", openvino.best_precision())
    said = invoke("predict", str(tiny_data / "val"), "--model", "runs/ov", "--json")
    assert said.exit_code == 0, said.output
    engines = {p["engine"] for p in json.loads(said.stdout)}
    again = ", close calls again in float32" if best == "bfloat16" else ""
    assert engines == {f"openvino {best} base + numpy head{again} "
                       "(the run's cached base conversion)"}
    monkeypatch.setenv("SMALLCNN_ENGINE", "litert")  # the same head on float32 features
    exact = invoke("predict", str(tiny_data / "val"), "--model", "runs/ov", "--json")
    labels = {p["path"]: p["label"] for p in json.loads(said.stdout)}
    assert labels == {p["path"]: p["label"] for p in json.loads(exact.stdout)}
    monkeypatch.delenv("SMALLCNN_ENGINE")
    _without_openvino(monkeypatch)  # the run's engine cannot run: LiteRT, and why
    said = invoke("predict", str(tiny_data / "val"), "--model", "runs/ov", "--json")
    engine = json.loads(said.stdout)[0]["engine"]
    assert engine.startswith("litert float32 base + numpy head") and \
        f"its features came from openvino {best}" in engine
    refused = invoke("extract", tiny_data, *run, "--engine", "openvino", "--out", "runs/no")
    assert refused.exit_code == 2
    assert "--engine openvino: OpenVINO cannot run here: openvino is not installed" in \
        " ".join(refused.output.split())


@pytest.mark.heavy
def test_features_of_a_base_that_raced_litert_faster_are_found_by_the_next_run(
        tiny_data, base_weights_file, monkeypatch, float32_cpu):
    """The first run's race is recorded after its features' key was made (OpenVINO's, none
    recorded yet): they are cached under LiteRT's, the key the next run expects."""
    calls = _timed_as(monkeypatch, {"litert": 1.0, "openvino": 2.0})
    run = ["--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32",
           "--epochs", "2"]
    first = invoke("extract", tiny_data, *run, "--out", "runs/a")
    assert first.exit_code == 0, first.output
    assert calls and "Frozen base engine: LiteRT, float32 (auto: measured 2.00x" in \
        " ".join(first.output.split())
    raced = len(calls)
    second = invoke("extract", tiny_data, *run, "--out", "runs/b")
    assert second.exit_code == 0, second.output
    assert "feature vectors from the cache" in second.output and len(calls) == raced
    metrics = json.loads(open("runs/a/metrics.json").read())
    assert (metrics["engine"], metrics["engine_precision"]) == ("litert", "float32")
    route = json.loads(open("runs/b/smallcnn.json").read())["prediction"]  # from the cache
    assert (route["engine"], route["precision"]) == ("litert", "float32")


def test_close_calls_run_again_in_litert_else_openvino_float32(tiny_base, tmp_path,
                                                               monkeypatch):
    """The second look's float32 base: LiteRT; where LiteRT cannot run, OpenVINO float32,
    said in one line."""
    import shutil
    import warnings

    from smallcnn.inference.predict import Classifier
    from smallcnn.runtime import litert

    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    cache.store("engines", "tiny.tflite", lambda temp: shutil.copy(tiny_base, temp),
                checksum=True)
    route = {"feature_engine": "tiny.tflite"}
    classifier = Classifier(None, {"class_names": ["a", "b"], "image_size": 32})
    fast = open_engine(tiny_base, "openvino")
    assert classifier._float32_base(route, fast).name == "litert"

    class Missing:
        def __init__(self, path):
            raise ImportError("No module named 'ai_edge_litert'")

    monkeypatch.setattr(litert, "LiteRTEngine", Missing)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        exact = classifier._float32_base(route, fast)
    assert (exact.name, exact.precision) == ("openvino", "float32")
    assert [str(w.message) for w in said] == [
        "Close calls run again in OpenVINO float32: LiteRT is not usable here (ImportError: "
        "No module named 'ai_edge_litert')."]
    np.testing.assert_allclose(exact(images()), LiteRTEngine(tiny_base)(images()), rtol=1e-4,
                               atol=1e-4)
