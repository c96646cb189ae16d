"""check --label-issues: flipped labels and strangers are found, and only accepted fixes
are written, into a copy."""

import json
import shutil

import numpy as np
import pytest
from conftest import COLORS, invoke, make_dataset, make_image

from smallcnn.label_issues import label_issue_indices, nearest_neighbours


def test_flags_the_flipped_labels_and_ranks_the_surest_first():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 100)
    true = labels.copy()
    flipped = rng.choice(len(labels), 15, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 3
    probabilities = rng.dirichlet([1, 1, 1], len(labels)) * 0.3
    probabilities[np.arange(len(labels)), true] += 0.7  # a model right about the true class
    found, suggested = label_issue_indices(probabilities, labels)
    # every flag right; the counts estimated from the confident joint may miss one
    assert set(found) <= set(flipped) and len(found) >= len(flipped) - 1
    assert np.array_equal(suggested, true[found])
    self_confidence = probabilities[found, labels[found]]
    assert np.all(np.diff(self_confidence) >= 0)  # the least self-confident first


def test_matches_cleanlabs_default_filter():
    filter_module = pytest.importorskip("cleanlab.filter", reason="cleanlab is not installed")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), labels] += rng.normal(1.5, 1.5, 400)  # a noisy, imperfect model
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    found, _ = label_issue_indices(probabilities, labels)
    theirs = np.flatnonzero(filter_module.find_label_issues(labels, probabilities))
    assert set(found) == set(theirs) and len(found) > 10


def test_nearest_neighbours_and_the_farthest_image():
    rng = np.random.default_rng(2)
    features = np.abs(rng.normal(0, 1, (50, 16)))
    features[:25, :8] += 4  # two clusters
    features[25:, 8:] += 4
    features[7] = -np.abs(features[7])  # pointing away from everything
    indices, distances = nearest_neighbours(features, k=3)
    assert int(np.argmax(distances)) == 7
    assert set(indices[0]) <= set(range(25)) and 0 not in indices[0]


@pytest.fixture
def noisy(tmp_path):
    """Red and blue images, four reds filed under blue, and two green strangers in red."""
    root = make_dataset(tmp_path / "data", per_class=30, size=32, splits=())
    moved = []
    for path in sorted((root / "red").iterdir())[:3]:
        target = root / "blue" / f"was_{path.name}"
        path.rename(target)
        moved.append(target)
    # A red image filed under blue with the name of another red image: relabelled, the
    # two must not overwrite each other in the corrected copy.
    namesake = root / "blue" / "red_010.png"
    make_image(np.random.default_rng(3), COLORS["red"], 32).save(namesake)
    moved.append(namesake)
    rng = np.random.default_rng(9)
    for i in range(2):
        make_image(rng, COLORS["green"], 32).save(root / "red" / f"green_{i}.png")
    return root, moved


def test_the_command_finds_them_and_fixes_only_what_is_accepted(noisy, tmp_path):
    root, moved = noisy
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    base = ["--base", "mobilenet_v2"]  # its ImageNet weights ship in the package
    result = invoke("check", root, "--label-issues", *base, "--json", "--html",
                    tmp_path / "review.html")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    flagged = {issue["path"]: issue for issue in found["label_issues"]}
    assert {str(p) for p in moved} <= set(flagged)
    assert all(flagged[str(p)]["label"] == "blue" and flagged[str(p)]["suggested"] == "red"
               for p in moved)
    assert len(flagged) <= 6  # four planted, at most two others
    assert found["outliers"] and "green_" in found["outliers"][0]["path"]
    assert str(moved[0].name) in (tmp_path / "review.html").read_text()

    accepted = tmp_path / "accepted.txt"
    accepted.write_text(f"# reviewed\n{moved[0]}\n{moved[1]}\n{moved[3]}\n")
    fixed = tmp_path / "fixed"
    result = invoke("check", root, "--label-issues", *base, "--fix", fixed, "--accept", accepted)
    assert result.exit_code == 0, result.output
    assert (fixed / "red" / moved[0].name).is_file() and (fixed / "red" / moved[1].name).is_file()
    assert (fixed / "blue" / moved[2].name).is_file()  # flagged but not accepted: unchanged
    assert (fixed / "red" / "red_010.png").read_bytes() == (root / "red" / "red_010.png").read_bytes()
    assert (fixed / "red" / "red_010-from-blue.png").read_bytes() == moved[3].read_bytes()
    assert len(list(fixed.rglob("*.png"))) == len(before)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) == before  # untouched

    again = invoke("check", root, "--label-issues", *base, "--fix", fixed, "--accept", accepted)
    assert again.exit_code == 2 and "is not empty" in again.output
    stranger = tmp_path / "stranger.txt"
    stranger.write_text(str(root / "red" / "red_010.png") + "\n")
    refused = invoke("check", root, "--label-issues", *base, "--fix", tmp_path / "f2",
                     "--accept", stranger)
    assert refused.exit_code == 2 and "not one of the likely label errors" in refused.output
    assert not (tmp_path / "f2").exists() or not any((tmp_path / "f2").iterdir())
    lone = invoke("check", root, "--fix", tmp_path / "f3")
    assert lone.exit_code == 2 and "go with --label-issues" in lone.output


def test_a_table_gets_a_corrected_table(noisy, tmp_path):
    from smallcnn.data import find_dataset

    root, moved = noisy
    rows = ["filename,label"] + [f"{p.relative_to(root)},{p.parent.name}"
                                 for p in sorted(root.rglob("*.png"))]
    table = root / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    accepted = tmp_path / "accepted.txt"
    accepted.write_text(f"{moved[0]}\n")
    result = invoke("check", table, "--label-issues", "--base", "mobilenet_v2", "--fix",
                    tmp_path / "fixed", "--accept", accepted)
    assert result.exit_code == 0, result.output
    fixed = find_dataset(tmp_path / "fixed" / "labels.csv")
    relabelled = dict(zip(fixed.train.paths + fixed.val.paths,
                          np.concatenate([fixed.train.labels, fixed.val.labels])))
    assert fixed.class_names[relabelled[str(moved[0])]] == "red"
    assert fixed.class_names[relabelled[str(moved[1])]] == "blue"
    assert table.read_text() == "\n".join(rows) + "\n"
    shutil.rmtree(tmp_path / "fixed")
