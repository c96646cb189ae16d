"""check --label-issues: flipped labels and strangers are found, and only accepted fixes
are written, into a copy."""

import csv
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, invoke, make_dataset, make_image

from smallcnn.errors import UsageError
from smallcnn.labels.label_issues import label_issue_indices, nearest_neighbours
from smallcnn.data.table import TableOptions


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
    (root / "red" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")  # nothing to copy
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
    gone = root / "red" / "gone.txt"
    assert f"not in the --fix copy: {gone} (a link to nothing)" in result.output
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


def test_label_issues_ask_the_feature_source_not_a_training_session(noisy, monkeypatch):
    from smallcnn.labels.label_issues import find_label_issues
    from smallcnn.train import Settings
    from smallcnn.train.session import Session

    def no_session(*args, **kwargs):
        raise AssertionError("a training session was built")

    monkeypatch.setattr(Session, "__init__", no_session)
    root, _ = noisy
    report, dataset = find_label_issues(root, Settings(base="small", image_size=32))
    assert report.images == sum(len(dataset.splits[name]) for name in ("train", "val"))


@pytest.mark.heavy
def test_a_table_gets_a_corrected_table(noisy, tmp_path):
    from smallcnn.data.dataset import find_dataset

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


def _files(folder):
    """{path under folder: bytes} of every file under it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


LAYOUTS = {"train and val": ("train", "val"), "train and validation": ("train", "validation"),
           "train and test, val drawn": ("train", "test"), "class folders": ()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fix_copies_every_file_of_every_folder_layout(layout, tmp_path):
    from smallcnn.data.dataset import find_dataset
    from smallcnn.labels.label_review import write_fixed

    root = make_dataset(tmp_path / "data", per_class=6, size=16, splits=LAYOUTS[layout])
    red = root / "train" / "red" if "train" in LAYOUTS[layout] else root / "red"
    (red / "notes.txt").write_text("not an image: copied all the same")
    (red / "broken.png").write_bytes(b"unreadable: left out of the analysis, not of the copy")
    (red / "gone.png").symlink_to(tmp_path / "nowhere.png")  # nothing there to copy
    found, dataset = find_dataset(root), find_dataset(root)
    for name, split in dataset.splits.items():  # as the analysis leaves them
        dataset.splits[name] = split.without([str(red / "broken.png"), str(red / "gone.png")])
    relabelled = next(p for p in dataset.val.paths if "/blue/" in p)
    before = _files(root)
    written, left_out = write_fixed(dataset, {relabelled: "red"}, tmp_path / "fixed")
    copy = _files(tmp_path / "fixed")
    moved = Path(relabelled).relative_to(root)
    into_red = Path(*["red" if part == "blue" else part for part in moved.parent.parts], moved.name)
    assert copy.pop(str(into_red)) == before.pop(str(moved))
    assert copy == before  # every other file, at the same place, with the same bytes
    assert left_out == [(str(red / "gone.png"), "a link to nothing")]
    assert _files(root) == {**before, str(moved): Path(relabelled).read_bytes()}  # untouched
    again = find_dataset(written)
    assert again.layout == found.layout and len(again.test or []) == len(found.test or [])
    assert sorted(tmp_path.iterdir()) == [tmp_path / "data", tmp_path / "fixed"]


@pytest.mark.parametrize("with_splits", [True, False])
def test_fix_rewrites_a_table_keeping_every_other_cell(with_splits, tmp_path):
    """With a split column, the table is DATA; without, it is --labels beside the images."""
    from smallcnn.data.dataset import find_dataset
    from smallcnn.labels.label_review import write_fixed

    root = make_dataset(tmp_path / "photos", per_class=6, size=16, splits=())
    images = sorted(root.rglob("*.png"))
    table = tmp_path / "labels.csv"
    folder = tmp_path if with_splits else root  # what the file names are relative to
    header = ["filename", "label", "note"] + (["split"] if with_splits else [])
    rows = [[str(p.relative_to(folder)), p.parent.name, f"taken by\n{p.stem}; \x0cok"] +
            (["val" if i % 3 == 0 else "train"] if with_splits else [])
            for i, p in enumerate(images)]
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=";").writerows([header] + rows)
    original = table.read_bytes()
    options = TableOptions() if with_splits else TableOptions(labels=str(table))
    dataset = find_dataset(table if with_splits else root, table=options)
    relabelled = str(images[0])  # blue_000.png
    written, _ = write_fixed(dataset, {relabelled: "red"}, tmp_path / "fixed", options)
    with open(written, newline="", encoding="utf-8") as f:
        fixed = list(csv.reader(f, delimiter=";"))
    assert fixed[0] == header and len(fixed) == len(rows) + 1
    for old, new in zip(rows, fixed[1:]):
        assert new[0] == str(folder / old[0])  # absolute: the table moved, the images did not
        assert new[1] == ("red" if new[0] == relabelled else old[1])
        assert new[2:] == old[2:]  # the note, its line break and form feed kept
    again = find_dataset(written)
    labels = {p: again.class_names[y] for s in again.splits.values()
              for p, y in zip(s.paths, s.labels)}
    assert labels[relabelled] == "red" and len(labels) == len(images)
    assert table.read_bytes() == original


def test_a_failed_copy_leaves_nothing_behind(tmp_path, monkeypatch):
    from smallcnn.data.dataset import find_dataset
    from smallcnn.labels.label_review import write_fixed

    dataset = find_dataset(make_dataset(tmp_path / "data", per_class=6, size=16))
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copystat", full_disk)
    with pytest.raises(UsageError, match="Cannot write the --fix copy .*No space left on device"):
        write_fixed(dataset, {}, tmp_path / "new" / "fixed")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "data"]  # no copy, no folder above it


@pytest.fixture
def never_analysed(monkeypatch):
    """The out-of-fold analysis fails the test if it starts."""
    from smallcnn.train.feature_store import FeatureSource

    def analysis(*args, **kwargs):
        raise AssertionError("the analysis started")

    monkeypatch.setattr(FeatureSource, "features", analysis)


def test_every_refusal_of_fix_comes_before_the_analysis_and_leaves_no_folder(tmp_path,
                                                                              never_analysed):
    root = make_dataset(tmp_path / "data", per_class=6, size=16, splits=("train", "test"))
    image = next(root.glob("train/red/*.png"))
    accepted = tmp_path / "accepted.txt"
    accepted.write_text(f"{image}\n")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("keep me")
    full = tmp_path / "full"
    (full / "something").mkdir(parents=True)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text(f"# reviewed\n{root / 'test' / 'red' / image.name}\n")  # not train/val
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café.png\n".encode("latin-1"))
    cases = [
        (["--fix", a_file, "--accept", accepted], f"--fix {str(a_file)!r} is a file"),
        (["--fix", full, "--accept", accepted], f"--fix {str(full)!r} exists and is not empty"),
        (["--fix", a_file / "fixed", "--accept", accepted], "cannot be made"),
        (["--fix", root / "train" / "fixed", "--accept", accepted], "is inside the data set"),
        (["--fix", tmp_path / "f", "--accept", tmp_path / "none.txt"], "is not a file"),
        (["--fix", tmp_path / "f", "--accept", full], "is not a file"),
        (["--fix", tmp_path / "f", "--accept", latin], "Cannot read --accept"),
        (["--fix", tmp_path / "f", "--accept", unknown],
         f"Line 2 of --accept {str(unknown)!r}: {str(root / 'test' / 'red' / image.name)!r} is "
         "not an image of the data set's train or val split"),
        (["--html", full, "--fix", tmp_path / "f", "--accept", accepted], "is a folder"),
    ]

    def listing():  # but the feature cache, which the check itself fills
        return sorted(p for p in tmp_path.rglob("*") if p.relative_to(tmp_path).parts[0] != "cache")

    before = listing()
    for options, message in cases:
        result = invoke("check", root, "--label-issues", "--base", "mobilenet_v2", *options)
        assert result.exit_code == UsageError.exit_code and message in result.output, result.output
        assert "Traceback" not in result.output
        assert listing() == before and a_file.read_text() == "keep me"
