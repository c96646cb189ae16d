"""smallcnn suggest: the ranking of unlabelled images (strategies.rank, on features alone)
and the command on a tiny run: its table, page, JSON and the unreadable files it skips."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, make_dataset

from smallcnn.data.table import read_table
from smallcnn.errors import UsageError
from smallcnn.labels import strategies
from smallcnn.labels.strategies import DUPLICATE_COSINE, MIX_TYPICAL_PER_CLASS, STRATEGIES, rank
from smallcnn.labels.suggest import COLUMNS


def clustered(clusters=5, per_cluster=(40, 30, 20, 12, 8), width=64, seed=0):
    """Features in well separated clusters of the given sizes: (features, cluster of each)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, width))
    members = np.repeat(np.arange(clusters), per_cluster[:clusters])
    return centres[members] + rng.normal(0, 0.6, (len(members), width)), members


def cosines(features, indices):
    x = strategies.normalised(features)[indices]
    similarity = x @ x.T
    np.fill_diagonal(similarity, -1)
    return similarity


def test_coverage_picks_one_image_of_each_cluster_largest_first():
    features, members = clustered()
    picked = rank(features, "typical", n=5)
    assert sorted(members[picked]) == [0, 1, 2, 3, 4]
    assert list(members[picked[:2]]) == [0, 1]  # the largest clusters first


def test_coverage_goes_first_to_the_clusters_no_label_covers():
    features, members = clustered()
    labelled = features[members < 3]  # clusters 0, 1 and 2 are labelled already
    picked = rank(features, "typical", n=4, labelled_features=labelled)
    assert set(members[picked]) == {3, 4}


def test_auto_without_a_model_is_coverage():
    features, members = clustered()
    assert rank(features, "auto", n=5) == rank(features, "typical", n=5)


def test_no_near_duplicates_in_a_batch():
    features, _ = clustered()
    twice = np.concatenate([features, features * 2])  # each image again, rescaled
    for strategy in ("random", "typical"):
        picked = rank(twice, strategy, n=len(twice))
        assert len(picked) <= len(features)
        assert cosines(twice, picked).max() <= DUPLICATE_COSINE, strategy


def test_margin_picks_the_images_the_model_doubts():
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (100, 256))
    probabilities = np.zeros((len(features), 3))
    probabilities[np.arange(len(features)), rng.integers(0, 3, len(features))] = 0.9
    probabilities += 0.05
    doubted = rng.choice(len(features), 4, replace=False)
    probabilities[doubted] = [0.45, 0.45, 0.10]
    picked = rank(features, "margin", n=4, probabilities=probabilities)
    assert sorted(picked) == sorted(doubted.tolist())


def test_mix_is_coverage_while_labels_are_few_and_margin_after():
    probabilities = np.full((10, 2), 0.5)
    few = MIX_TYPICAL_PER_CLASS * 2 - 1
    assert strategies.chosen_strategy("mix", few, probabilities) == "typical"
    assert strategies.chosen_strategy("mix", few + 1, probabilities) == "margin"
    assert strategies.chosen_strategy("mix", 1000, None) == "typical"


def test_n_larger_than_the_pool_gives_each_image_once():
    rng = np.random.default_rng(2)
    features = rng.normal(0, 1, (12, 256))  # nearly orthogonal: no duplicates
    for strategy in STRATEGIES:
        probabilities = rng.dirichlet([1, 1], 12)
        picked = rank(features, strategy, n=100, labelled_features=features[:0],
                      probabilities=probabilities)
        assert sorted(picked) == list(range(12)), strategy


@pytest.mark.parametrize("call, words", [
    (lambda: rank(np.zeros((0, 8))), "no image"),
    (lambda: rank(np.ones((3, 8)), "best"), "Unknown strategy"),
    (lambda: rank(np.ones((3, 8)), "margin"), "needs a model"),
    (lambda: rank(np.ones((3, 8)), n=0), "at least 1"),
])
def test_refusals_are_one_line(call, words):
    with pytest.raises(UsageError, match=words) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.fixture
def pool(tmp_path):
    """Unlabelled images of the trained model's colours, and one file that is no image."""
    folder = make_dataset(tmp_path / "pool", per_class=6, classes=("red", "green", "blue"),
                          splits=(), seed=9)
    (folder / "broken.jpg").write_bytes(b"not a picture")
    return folder


def test_suggest_writes_a_table_to_label_a_page_and_json(trained, pool, tmp_path):
    run, data = trained
    shutil.copy(next((Path(data) / "train" / "red").iterdir()), pool / "labelled.png")
    out, page = tmp_path / "next" / "next.csv", tmp_path / "next.html"
    result = invoke("suggest", pool, "--model", run, "--n", 4, "--out", out, "--html", page,
                    "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    suggested = document["suggestions"]
    assert 1 <= len(suggested) <= 4
    classes = {"red", "green", "blue"}
    assert all(s["guess"] in classes and 0 < s["probability"] <= 1 for s in suggested)
    assert document["skipped"][0]["path"].endswith("broken.jpg")
    assert "broken.jpg" in result.stderr  # named, and the others ranked all the same
    assert document["pool"] == 18  # the image the data set holds already is left out
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [Path(r["filename"]).name for r in rows] == [Path(s["path"]).name for s in suggested]
    for row in rows:  # a person fills in the label: the guess, here
        row["label"] = row["guess"]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = read_table(out)
    assert [label for _, _, label, _ in table.rows] == [s["guess"] for s in suggested]
    text = page.read_text()
    assert text.count("<img") >= 2 * len(suggested)  # each image and labelled neighbours
    assert "nearest labelled images" in text
    again = invoke("suggest", pool, "--model", run, "--n", 2, "--out", out, "--html", page)
    assert again.exit_code == 0, again.output  # its own table and page it replaces
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 and page.read_text() != text


def test_suggest_refuses_what_it_cannot_do_in_one_line(pool):
    for args, words in ((["--n", 0, "--classes", "a,b"], "--n must be at least 1"),
                        ([], "--classes"), (["--classes", "cats"], "two or more"),
                        (["--classes", "a,b", "--strategy", "margin"], "needs a model")):
        result = invoke("suggest", pool, *args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.heavy  # the default base converted to LiteRT (~15 s here)
def test_suggest_without_a_model_covers_the_pool(pool, tmp_path):
    out = tmp_path / "first.csv"
    result = invoke("suggest", pool, "--classes", "red,green,blue", "--n", 3, "--out", out)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and not any(r["guess"] for r in rows)
    colours = {Path(r["filename"]).parent.name for r in rows}
    assert colours == {"red", "green", "blue"}  # one of each: coverage


def test_suggest_never_writes_over_a_file_it_did_not_write(pool, tmp_path):
    # --out next to DATA's own table (the help says to append to it) must not replace it.
    table, picture = tmp_path / "labels.csv", tmp_path / "photo.png"
    table.write_text("filename,label\nred/a.png,red\n")
    shutil.copy(next(pool.rglob("*.png")), picture)
    before = {path: path.read_bytes() for path in (table, picture)}
    for option, path in (("--out", table), ("--html", picture), ("--out", picture)):
        result = invoke("suggest", pool, "--classes", "red,green", option, path)
        assert result.exit_code == 2, result.output
        assert "not one suggest wrote" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert {path: path.read_bytes() for path in before} == before


def test_a_missing_listed_image_is_skipped_and_a_pool_left_empty_says_why(pool, tmp_path):
    listing = tmp_path / "more.txt"
    listing.write_text(f"{tmp_path / 'gone.png'}\n")
    result = invoke("suggest", pool / "broken.jpg", "--list", listing, "--classes", "red,blue")
    assert result.exit_code == 3, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    # Both unreadable files are counted, one named with its reason; what would work is said.
    assert "2 unreadable" in message and "broken.jpg" in message and "give" in message


def test_pool_features_are_cached_apart_per_engine(pool, monkeypatch):
    # OpenVINO's bf16 features differ from LiteRT's in the third digit: a pool's cached
    # features name their engine, as a split's do (feature_store.features_key).
    from smallcnn.labels import suggest as suggesting
    from smallcnn.runtime import engine
    from smallcnn.train import feature_store

    class Looked(Exception):
        pass

    keys = []

    def look(key, warn=None):
        keys.append(key)
        raise Looked

    monkeypatch.setattr(feature_store, "load", look)
    for ran in (("litert", "float32"), ("openvino", "bfloat16")):
        monkeypatch.setattr(engine, "expected_engine", lambda *args, ran=ran, **kw: ran)
        with pytest.raises(Looked):
            suggesting.pool_features([pool], classes="red,green")
    assert len(keys) == 2 and None not in keys and keys[0] != keys[1]
