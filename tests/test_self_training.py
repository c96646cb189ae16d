"""extract --unlabeled: self-training on the pool's cached features (smallcnn.train.self_training)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import invoke, make_dataset
from smallcnn.model import head as numpy_head
from smallcnn.train import Settings, extract, self_training
from smallcnn.train.feature_store import FeatureSource

TINY = ["--base", "small", "--image-size", "32", "--batch-size", "8"]
# Heads that have not learned the tiny set yet (val below 100%), so that rounds run.
UNDERTRAINED = dict(base="small", image_size=32, batch_size=8, epochs=1, heads=1)


def _blobs(rng, centers, per_class, noise):
    labels = np.repeat(np.arange(len(centers)), per_class).astype(np.int32)
    return (centers[labels] + rng.normal(0, noise, (len(labels), centers.shape[1]))
            ).astype(np.float32), labels


def test_a_pool_of_separable_images_gains_over_a_few_labels():
    """Three clusters of feature vectors, 8 labels each: extract's heads alone stop short;
    pseudo-labels of a pool from the same clusters lift val and held-out accuracy."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 32)).astype(np.float32)
    train, val, pool, held_out = (_blobs(rng, centers, n, 3.0) for n in (8, 40, 100, 100))
    settings = Settings(heads=1).resolve("extract")
    names = ["a", "b", "c"]

    def fit(x, y):
        return numpy_head.train(x, y, val, settings, len(names))

    supervised, _ = fit(*train)
    cap = self_training.per_class_cap(train[1], len(names))
    weights, histories, record = self_training.self_train(supervised, train, val, pool[0], fit,
                                                          names, cap)
    assert record["kept"] and len(histories) == record["kept_round"] >= 1
    assert numpy_head.evaluate(weights, *val)[1] >= record["supervised_val_accuracy"] + 0.05
    assert numpy_head.evaluate(weights, *held_out)[1] > numpy_head.evaluate(supervised, *held_out)[1]
    for done in record["rounds"]:
        assert done["threshold"] in self_training.THRESHOLDS
        assert max(done["per_class"].values()) <= cap == 8 * self_training.PER_CLASS_FACTOR
        assert sum(done["per_class"].values()) == done["pool_images_used"]


@pytest.mark.parametrize("seed", [1, 5])
def test_a_pool_of_another_domain_is_not_kept_for_a_gain_within_noise(seed):
    """Two well-learned classes, and a pool from a third cluster (another domain) that the
    heads pseudo-label as one of them: its round gains a val image or two at a higher val
    loss (it was kept for any gain: these seeds' first rounds beat the supervised heads),
    within noise, so the supervised heads stay."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (2, 32)).astype(np.float32)
    train, val = (_blobs(rng, centers, n, 1.0) for n in (20, 75))
    pool = _blobs(rng, rng.normal(0, 3, (1, 32)).astype(np.float32), 40, 1.0)[0]
    settings = Settings(heads=1).resolve("extract")
    names = ["ants", "bees"]

    def fit(x, y):
        return numpy_head.train(x, y, val, settings, len(names))

    supervised, _ = fit(*train)
    cap = self_training.per_class_cap(train[1], len(names))
    weights, histories, record = self_training.self_train(supervised, train, val, pool, fit,
                                                          names, cap)
    first = record["rounds"][0]
    assert first["pool_images_used"] > 0
    assert first["val_accuracy"] > record["supervised_val_accuracy"]  # the old rule kept it
    assert not record["kept"] and histories == [] and weights is supervised


def test_the_keep_rule_wants_a_gain_beyond_noise():
    val_images = 150
    one_image, two_images = 1 / val_images, self_training.MIN_VAL_GAIN / val_images
    before = (0.20, 0.90)
    assert self_training.gains((0.19, 0.90 + two_images), before, val_images)
    assert not self_training.gains((0.19, 0.90 + one_image), before, val_images)
    assert not self_training.gains((0.21, 0.90 + two_images), before, val_images)  # loss rose


def test_pseudo_labels_take_the_most_confident_up_to_the_cap():
    probabilities = np.array([[0.95, 0.05], [0.6, 0.4], [0.99, 0.01], [0.2, 0.8], [0.5, 0.5]])
    rows, labels = self_training.pseudo_labels(probabilities, 0.55, cap=2)
    assert rows.tolist() == [0, 2, 3] and labels.tolist() == [0, 0, 1]  # 0.6 is third of class 0


def _pool(tmp_path, count=6):
    return make_dataset(tmp_path / "pool", per_class=count // 2, splits=(), seed=9)


def test_a_pool_sharing_images_with_val_or_test_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("train", "val", "test"))
    pool = _pool(tmp_path)
    copied = pool / "red" / "copy-of-val.png"
    shutil.copy(data / "val" / "blue" / "blue_003.png", copied)
    listing = tmp_path / "pool.txt"
    listing.write_text(f"{pool / 'blue' / 'blue_000.png'}\n{data / 'test' / 'red' / 'red_001.png'}\n")
    near = tmp_path / "near"  # the same picture re-encoded: other bytes, the same look
    near.mkdir()
    Image.open(data / "test" / "blue" / "blue_002.png").save(near / "reencoded.jpg", quality=90)
    for given, example in ((pool, "copy-of-val.png"), (listing, "red_001.png"),
                           (near, "reencoded.jpg")):
        before = copied.read_bytes()
        result = invoke("extract", data, *TINY, "--unlabeled", given, "--out", "runs/x")
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "shares 1 image(s) with DATA's validation or test" in errors[0]
        assert example in errors[0]
        assert copied.read_bytes() == before and (data / "val" / "blue" / "blue_003.png").exists()
        assert not (tmp_path / "runs").exists()  # refused before any work
        assert not list((tmp_path / "cache").rglob("*.npz"))  # no feature computed


def test_the_threshold_never_reads_the_test_split(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", splits=("train", "val", "test"))
    read = []
    features = FeatureSource.features
    monkeypatch.setattr(FeatureSource, "features",
                        lambda source, name: read.append(name) or features(source, name))
    self_train = self_training.self_train

    def recorded(*args, **kwargs):
        done = self_train(*args, **kwargs)
        read.append("self-training done")
        return done

    monkeypatch.setattr(self_training, "self_train", recorded)
    result = extract(data, Settings(**UNDERTRAINED, unlabeled=str(_pool(tmp_path))))
    assert result.metrics["self_training"]["rounds"]  # the thresholds were tried
    assert "test" in read and read.index("test") > read.index("self-training done")


def test_metrics_record_each_round_and_the_pool(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("train", "val", "test"))
    pool = _pool(tmp_path)
    shutil.copy(data / "train" / "red" / "red_000.png", pool / "red" / "again.png")
    (pool / "blue" / "broken.png").write_bytes(b"not a png")
    result = extract(data, Settings(**UNDERTRAINED, unlabeled=str(pool)), out=tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["self_training"]
    assert recorded == result.metrics["self_training"]
    assert recorded["pool"] == str(pool) and recorded["pool_images"] == 6
    assert recorded["pool_in_train"] == 1 and recorded["pool_unreadable"] == [
        str(pool / "blue" / "broken.png")]
    assert recorded["thresholds"] == list(self_training.THRESHOLDS)
    assert 1 <= len(recorded["rounds"]) <= self_training.ROUNDS
    for number, done in enumerate(recorded["rounds"], 1):
        assert done["round"] == number and done["threshold"] in self_training.THRESHOLDS
        assert set(done["per_class"]) == {"blue", "red"}
        assert 0 < done["pool_images_used"] == sum(done["per_class"].values()) <= 6
        assert 0 <= done["val_accuracy"] <= 1
    assert isinstance(recorded["kept"], bool)
    assert recorded["kept"] == (recorded["kept_round"] > 0)
    assert (result.metrics["val_accuracy"] > recorded["supervised_val_accuracy"]) == \
        recorded["kept"]


@pytest.mark.heavy
def test_a_pool_that_does_not_help_leaves_the_supervised_heads(tmp_path):
    data = make_dataset(tmp_path / "data", classes=("red", "green", "blue"))
    args = ["extract", data, *TINY, "--epochs", "30"]
    plain = invoke(*args, "--out", "runs/plain")
    assert plain.exit_code == 0, plain.output
    pooled = invoke(*args, "--unlabeled", _pool(tmp_path), "--out", "runs/pooled")
    assert pooled.exit_code == 0, pooled.output
    assert "the supervised heads are kept" in pooled.output
    metrics = {name: json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
               for name in ("plain", "pooled")}
    assert metrics["pooled"]["self_training"]["kept"] is False
    for key in ("val_accuracy", "val_loss", "epochs"):
        assert metrics["pooled"][key] == metrics["plain"][key]
    predicted = invoke("predict", data / "val" / "red", "--model", "runs/pooled", "--json")
    assert predicted.exit_code == 0, predicted.output


def test_an_image_file_is_a_pool_of_one_and_a_pool_with_nothing_to_use_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("train", "val", "test"))
    image = next(_pool(tmp_path).rglob("*.png"))
    assert self_training.pool_files(image) == [str(image)]  # not read as a list file
    useless = tmp_path / "useless"  # a damaged file and a copy of a training image
    useless.mkdir()
    (useless / "broken.png").write_bytes(b"not a png")
    shutil.copy(data / "train" / "red" / "red_000.png", useless / "again.png")
    result = invoke("extract", data, *TINY, "--unlabeled", useless, "--out", "runs/x")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no image of --unlabeled" in errors[0], result.output
    assert "1 unreadable" in errors[0] and "1 of DATA's training images" in errors[0]
    assert not (tmp_path / "runs").exists()  # refused before any work
