"""Finding a data set on disk: split folders, class folders and image files.

Two layouts are accepted:

    DATA/train/<class>/*.jpg  DATA/val/<class>/... (or validation/)  [DATA/test/<class>/...]
    DATA/<class>/*.jpg        (split into train and validation by a stratified --val-split)

and a table of labels (`smallcnn.data.table`): DATA is a CSV file, or a folder of images with
--labels FILE; without a split column (or without val rows), validation is drawn as for
class folders.
"""

import dataclasses
import os
import random
from pathlib import Path

import numpy as np

from smallcnn.data.images import IMAGE_EXTENSIONS, is_image_file
from smallcnn.data.table import TABLE_SUFFIXES, TableOptions, read_table, split_rows
from smallcnn.errors import DataError, UsageError

VAL_FOLDER_NAMES = ("val", "validation")
SPLITS = ("train", "val", "test")
# Without a val/ folder, this fraction of each class is drawn for validation, with this seed
# (the training commands' --val-split and --seed default to them).
VAL_SPLIT = 0.2
SEED = 42


@dataclasses.dataclass
class Split:
    name: str
    paths: list  # str paths
    labels: np.ndarray  # int32 class indices, parallel to paths

    def __len__(self):
        return len(self.paths)

    def without(self, bad_paths):
        """The split without the given paths (unreadable files, for instance)."""
        bad = set(bad_paths)
        keep = [i for i, p in enumerate(self.paths) if p not in bad]
        return Split(self.name, [self.paths[i] for i in keep], self.labels[keep])


@dataclasses.dataclass
class Dataset:
    root: str
    class_names: list
    splits: dict  # split name -> Split, in SPLITS order
    layout: str  # "split folders", "class folders" or "csv table"
    val_split: float = None  # the fraction held out when the validation set was drawn
    source: str = None  # what DATA named, when not `root` (a table; `root` is its images)

    @property
    def data(self):
        """What DATA named: the folder, or the table."""
        return self.source or self.root

    def counts(self):
        """Images per class per split: {split: [count for each class]}."""
        return {
            name: np.bincount(split.labels, minlength=len(self.class_names)).tolist()
            for name, split in self.splits.items()
        }

    @property
    def train(self):
        return self.splits["train"]

    @property
    def val(self):
        return self.splits["val"]

    @property
    def test(self):
        return self.splits.get("test")


def _visible_dirs(folder):
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith((".", "_"))
    )


def _image_files(folder):
    """Image files under `folder`, following links to folders but never into a folder
    already visited (a link cycle would otherwise never end)."""
    found = []
    visited = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        visited.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and
                             os.path.realpath(os.path.join(dirpath, d)) not in visited)
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


def class_folders(folder):
    """{class name: [image paths]} of the class folders of `folder` as DATA's reader sees
    them (a folder starting with . or _ is not a class); {} when there is none."""
    return {name: _image_files(Path(folder) / name) for name in _visible_dirs(folder)}


def _read_class_folders(folder):
    """{class name: [image paths]} for the class folders of one split folder."""
    found = class_folders(folder)
    if not found:
        loose = [f for f in os.listdir(folder) if is_image_file(f)]
        hint = f" It holds {len(loose)} images directly;" if loose else ""
        raise DataError(
            f"No class folders in {str(folder)!r}.{hint} put the images of each class in a "
            "folder of its own, e.g. DATA/cats/*.jpg and DATA/dogs/*.jpg."
        )
    return found


def _stratified_split(by_class, val_split, seed):
    rng = random.Random(seed)
    train, val = {}, {}
    for name, files in by_class.items():
        if len(files) < 2:
            raise DataError(
                f"Class {name!r} has {len(files)} image(s); at least 2 are needed to hold one "
                "out for validation. Add images, or give a val/ folder."
            )
        files = list(files)
        rng.shuffle(files)
        n_val = min(len(files) - 1, max(1, round(len(files) * val_split)))
        val[name] = sorted(files[:n_val])
        train[name] = sorted(files[n_val:])
    return train, val


def find_dataset(data_dir, val_split=VAL_SPLIT, seed=SEED, table=TableOptions()):
    """Finds the splits, classes and image files of a data folder or table.

    Args:
        data_dir: a folder of split folders, a folder of class folders, a CSV table of
            labels, or (with `table.labels`) the folder of the table's images.
        val_split: the fraction of each class held out for validation when the data
            has no validation folder (or rows).
        seed: seeds the stratified validation split.
        table: where the table is and how its columns are named (`smallcnn.data.table`).

    Returns:
        A `Dataset`.

    Raises:
        DataError: the folder is missing, has fewer than 2 classes, a class without
            images in a split, or splits with different classes; or the table is wrong.
    """
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"Data folder not found: {str(data_dir)!r}.")
    if not 0 < val_split < 1:
        raise UsageError(f"--val-split must be between 0 and 1 (exclusive). Received: {val_split}")
    if table.labels:
        if not root.is_dir():
            raise DataError(f"With --labels, DATA is the folder of the table's images; "
                            f"{str(data_dir)!r} is a file.")
        return _table_dataset(read_table(table.labels, table.images or root, table), val_split,
                              seed, source=str(root))
    if not root.is_dir():
        if root.suffix.lower() in TABLE_SUFFIXES:
            return _table_dataset(read_table(root, table.images, table), val_split, seed)
        raise DataError(
            f"DATA must be a folder of class folders (or of train/ and val/ folders), or a "
            f"table of labels ({', '.join(TABLE_SUFFIXES)}); {str(data_dir)!r} is another file."
        )

    subdirs = _visible_dirs(root)
    raw = {}
    drawn_val_split = None
    if "train" in subdirs:
        layout = "split folders"
        val_names = [n for n in VAL_FOLDER_NAMES if n in subdirs]
        if len(val_names) > 1:
            raise DataError(
                f"{str(root)!r} has both val/ and validation/ folders; keep one of them."
            )
        raw["train"] = _read_class_folders(root / "train")
        if val_names:
            raw["val"] = _read_class_folders(root / val_names[0])
        else:
            raw["train"], raw["val"] = _stratified_split(raw["train"], val_split, seed)
            drawn_val_split = val_split
        if "test" in subdirs:
            raw["test"] = _read_class_folders(root / "test")
    else:
        layout = "class folders"
        by_class = _read_class_folders(root)
        _check_classes({"train": by_class}, root)
        raw["train"], raw["val"] = _stratified_split(by_class, val_split, seed)
        drawn_val_split = val_split
    return _dataset(raw, str(root), layout, drawn_val_split)


def _table_dataset(table, val_split, seed, source=None):
    raw = split_rows(table)
    if "train" not in raw:
        raise DataError(f"{table.path!r} has no train rows; its split column must name some "
                        "images train.")
    drawn_val_split = None
    if "val" not in raw:
        _check_classes({"train": raw["train"]}, table.path, "label(s)")
        raw["train"], raw["val"] = _stratified_split(raw["train"], val_split, seed)
        drawn_val_split = val_split
    return _dataset(raw, table.images, "csv table", drawn_val_split, source or table.path,
                    "label(s)")


def _dataset(raw, root, layout, drawn_val_split, source=None, kind="class folder(s)"):
    """The `Dataset` of {split: {class: [paths]}}, its classes checked."""
    class_names = _check_classes(raw, source or root, kind)
    splits = {}
    for name in SPLITS:
        if name not in raw:
            continue
        paths, labels = [], []
        for index, class_name in enumerate(class_names):
            files = raw[name][class_name]
            paths.extend(files)
            labels.extend([index] * len(files))
        splits[name] = Split(name, paths, np.asarray(labels, dtype=np.int32))
    return Dataset(root, class_names, splits, layout, drawn_val_split, source)


def _check_classes(raw, root, kind="class folder(s)"):
    first = next(iter(raw))
    class_names = sorted(raw[first])
    if len(class_names) < 2:
        raise DataError(
            f"Found {len(class_names)} {kind} in {str(root)!r} "
            f"({', '.join(class_names) or 'none'}); a classifier needs at least 2 classes."
        )
    for split, by_class in raw.items():
        names = sorted(by_class)
        if names != class_names:
            missing = sorted(set(class_names) - set(names))
            extra = sorted(set(names) - set(class_names))
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"extra {', '.join(extra)}")
            raise DataError(
                f"The {split} split has different classes from the {first} split "
                f"({'; '.join(parts)}); every split needs the same classes."
            )
        for name, files in by_class.items():
            if not files:
                raise DataError(
                    f"Class {name!r} has no images in the {split} split "
                    f"(looked for {', '.join(IMAGE_EXTENSIONS)} files)."
                )
    return class_names


def run_data_folder(config, how="DATA, or --data DATA"):
    """The data folder a run recorded, refused with `how` to say where it is now when it is
    not there any more."""
    recorded = config.get("data")
    if not recorded or not Path(recorded).exists():
        raise DataError(f"The run's data folder {str(recorded)!r} is not there; if it moved, "
                        f"say where it is now: {how}.")
    return recorded


def dataset_of_run(config, data=None, table=None):
    """The data set a run was trained on (from its smallcnn.json), or `data` in its place,
    split as the run split it; its classes must be the model's. `table`: options of a
    table of labels that replace the ones the run recorded (those not None).

    Raises:
        DataError: the folder is gone (pass DATA), or its classes are not the model's.
    """
    root = data or run_data_folder(config)
    if not Path(root).exists():
        raise DataError(f"The data folder {str(root)!r} is not there.")
    settings = config.get("settings", {})
    options = TableOptions.of(settings)
    if table is not None:
        options = dataclasses.replace(options, **{name: value for name, value in
                                                  dataclasses.asdict(table).items() if value})
    dataset = find_dataset(root, settings.get("val_split", VAL_SPLIT), settings.get("seed", SEED),
                           options)
    classes = list(config["class_names"])
    if dataset.class_names != classes:
        raise DataError(
            f"The classes in {str(root)!r} ({', '.join(dataset.class_names)}) are not the "
            f"model's ({', '.join(classes)}); pass the data the run was trained on."
        )
    return dataset
