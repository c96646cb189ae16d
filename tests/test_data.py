import pytest

from conftest import make_dataset
from smallcnn.data.dataset import find_dataset
from smallcnn.errors import DataError


def test_split_folders_with_validation_and_test(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3, splits=("train", "validation", "test"))
    dataset = find_dataset(root)
    assert dataset.class_names == ["blue", "red"]
    assert dataset.layout == "split folders"
    assert dataset.counts() == {"train": [3, 3], "val": [3, 3], "test": [3, 3]}
    assert all("validation" in p for p in dataset.val.paths)


def test_class_folders_are_split_stratified_and_reproducibly(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=10, splits=())
    a = find_dataset(root, val_split=0.2, seed=1)
    b = find_dataset(root, val_split=0.2, seed=1)
    c = find_dataset(root, val_split=0.2, seed=2)
    assert a.counts() == {"train": [8, 8], "val": [2, 2]}
    assert a.val.paths == b.val.paths
    assert a.val.paths != c.val.paths
    assert not set(a.train.paths) & set(a.val.paths)
    assert a.val_split == 0.2


def test_image_extensions_any_case_and_other_files_ignored(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2)
    (root / "train" / "red" / "notes.txt").write_text("not an image")
    (root / "train" / "red" / ".hidden.png").write_bytes(b"")
    (root / "train" / "red" / "red_000.png").rename(root / "train" / "red" / "UPPER.PNG")
    dataset = find_dataset(root)
    names = [p.rsplit("/", 1)[-1] for p in dataset.train.paths]
    assert "UPPER.PNG" in names
    assert "notes.txt" not in names and ".hidden.png" not in names
    assert dataset.counts()["train"] == [2, 2]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "Data folder not found"),
        (lambda root: make_dataset(root, classes=("red",), splits=()), "at least 2 classes"),
        (lambda root: make_dataset(root, per_class=2, splits=()) and
         [p.unlink() for p in (root / "red").iterdir()], "Class 'red' has no images"),
        (lambda root: (make_dataset(root, splits=("train",)),
                       make_dataset(root, splits=("val",), classes=("red", "green"))),
         "different classes"),
        (lambda root: root.mkdir() or (root / "a.png").write_bytes(b"x"), "No class folders"),
    ],
    ids=["missing", "one-class", "empty-class", "class-mismatch", "no-class-folders"],
)
def test_refusals(tmp_path, setup, message):
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(DataError, match=message):
        find_dataset(root)


def test_a_symlink_cycle_is_followed_once(tmp_path):
    import os

    root = make_dataset(tmp_path / "d", splits=())
    os.symlink(".", root / "red" / "loop")  # red/loop -> red: a cycle
    dataset = find_dataset(root)
    assert len(dataset.train) + len(dataset.val) == 24  # 12 of each class, each once


def test_the_data_folder_of_a_run_is_recorded_absolute(tmp_path, monkeypatch):
    from conftest import invoke

    make_dataset(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    trained = invoke("extract", "d", "--base", "small", "--image-size", "32", "--epochs", "2",
                     "--out", "run")
    assert trained.exit_code == 0, trained.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    evaluated = invoke("evaluate", tmp_path / "run", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.stdout and '"accuracy"' in evaluated.stdout
    # A run whose data moved finds it when told where.
    (tmp_path / "d").rename(tmp_path / "moved")
    lost = invoke("evaluate", tmp_path / "run")
    assert lost.exit_code == 3 and "is not there" in lost.output
    found = invoke("evaluate", tmp_path / "run", tmp_path / "moved")
    assert found.exit_code == 0, found.output
