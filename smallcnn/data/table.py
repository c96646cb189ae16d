"""Labels from a table: a CSV file that names each image, its class and (optionally) its
split, as Keras' `flow_from_dataframe` and fastai's `from_csv` take them.

    filename,label,split          the columns are found by their usual names
    cats/001.jpg,cat,train        (PATH_COLUMNS, LABEL_COLUMNS, SPLIT_COLUMNS) or named
    dogs/014.jpg,dog,val          with --path-column, --label-column, --split-column

File names are relative to the table's folder, or to --images DIR, and stay under it (a
relative name that leads out of it by `..` is refused); an absolute name is taken as it
is, as Keras' `flow_from_dataframe` takes them without a directory. The delimiter (comma, semicolon
or tab) is detected; the text must be UTF-8 (a byte-order mark is fine); the csv module
reads the records, so a quoted cell may hold the delimiter or a line break. A bad table is
refused with one line that names the row (rows count from 1, the header being row 1, as
a spreadsheet shows them).
"""

import csv
import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Optional

from smallcnn.errors import DataError, UsageError

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
PATH_COLUMNS = ("filename", "file", "path", "image", "id")
LABEL_COLUMNS = ("label", "class", "category")
SPLIT_COLUMNS = ("split", "set", "fold")
# What a split column may say, and which split it means.
SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}
DELIMITERS = ",;\t"
SNIFF_LINES = 20  # the delimiter is guessed from the first lines ...
SNIFF_CHARS = 65536  # ... at most this much of them
# A label holding one of these (not the file's delimiter) is taken for several labels.
MULTI_LABEL_SEPARATORS = ("|", ";", ",")

# The options that say where the table and its columns are, declared once (help texts):
# the training commands take them through `Settings`, check and evaluate directly.
TABLE_HELP = {
    "labels": "A CSV table of labels for the images of DATA (a folder): a file-name and a "
              "label column, optionally a split column (train, val or validation, test).",
    "images": "The folder that the table's file names are relative to, when DATA is a table.",
    "path_column": "The table's file-name column.",
    "label_column": "The table's label column.",
    "split_column": "The table's split column.",
}
# What `--help` says their defaults are.
TABLE_DEFAULTS = {
    "labels": "none: DATA holds the labels",
    "images": "the table's folder",
    "path_column": f"the first of {', '.join(PATH_COLUMNS)}",
    "label_column": f"the first of {', '.join(LABEL_COLUMNS)}",
    "split_column": f"the first of {', '.join(SPLIT_COLUMNS)}, if any",
}


@dataclasses.dataclass(frozen=True)
class TableOptions:
    """Where a data set's table is and how its columns are named (see TABLE_HELP)."""

    labels: Optional[str] = None
    images: Optional[str] = None
    path_column: Optional[str] = None
    label_column: Optional[str] = None
    split_column: Optional[str] = None

    @classmethod
    def of(cls, values):
        """The options among `values` (a Settings, or a dict of recorded settings)."""
        get = values.get if isinstance(values, dict) else lambda name: getattr(values, name)
        return cls(**{field.name: get(field.name) for field in dataclasses.fields(cls)})

    def given(self):
        return any(dataclasses.astuple(self))


def is_table(path):
    path = Path(path)
    return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES


@dataclasses.dataclass
class Table:
    path: str  # the table file
    images: str  # the folder its file names are relative to
    rows: list  # (row number, image path, label, split or None)
    has_splits: bool


def read_table(path, images=None, options=TableOptions()):
    """Reads and checks a table of labels.

    Returns:
        A `Table` whose image paths exist.

    Raises:
        DataError: the table cannot be read, lacks a column, or a row is wrong (a missing
            file, an empty label, several labels, an unknown split, a file listed twice).
    """
    path = Path(path).expanduser()
    images = Path(images).expanduser() if images else path.parent
    if not images.is_dir():
        raise DataError(f"--images {str(images)!r} is not a folder.")
    delimiter, records = read_records(path)
    header = [name.strip() for name in records[0][1]]
    columns = find_columns(header, path, options, delimiter)
    rows, seen = [], {}
    for number, row in records[1:]:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) < len(header):
            raise DataError(f"Row {number} of {str(path)!r} has {len(row)} cell(s) where the "
                            f"header has {len(header)}: {delimiter.join(row)[:80]!r}.")
        name = row[columns["path"]].strip()
        where = f"Row {number} of {str(path)!r}"
        if not name:
            raise DataError(f"{where} has no file name.")
        label, split = _label_and_split(row, columns, where, name, delimiter)
        file = os.path.normpath(images / name)
        if not os.path.isabs(name) and not is_inside(file, images):
            raise DataError(f"{where} names {name!r}, outside the images folder "
                            f"{str(images)!r}; name it from inside that folder or by an "
                            "absolute name, or give --images a folder that holds them all.")
        if file in seen:
            first, first_label = seen[file]
            if first_label != label:
                raise DataError(f"Rows {first} and {number} of {str(path)!r} give {name!r} two "
                                f"labels ({first_label!r} and {label!r}); one label per image "
                                "(multi-label data is not supported yet).")
            raise DataError(f"Rows {first} and {number} of {str(path)!r} both list {name!r}; "
                            "list each image once.")
        seen[file] = (number, label)
        if not os.path.isfile(file):
            raise DataError(f"{where}: no file {name!r} in {str(images)!r}"
                            f"{'' if os.path.isdir(images) else ' (not a folder)'}.")
        rows.append((number, file, label, split))
    if not rows:
        raise DataError(f"{str(path)!r} lists no image: it has a header and no rows.")
    return Table(str(path), str(images), rows, "split" in columns)


def _label_and_split(row, columns, where, name, delimiter):
    """The label and the split (or None) of a row, checked; `where` names the row."""
    label = row[columns["label"]].strip()
    if not label:
        raise DataError(f"{where} has an empty label for {name!r}.")
    if "\n" in label or "\r" in label:  # what a quote left open swallows
        raise DataError(f"{where} gives {name!r} a label that runs over several lines "
                        f"({label[:40]!r}...); is a quote left open on that row?")
    several = [s for s in MULTI_LABEL_SEPARATORS if s != delimiter and s in label]
    if several:
        raise DataError(f"{where} gives {name!r} the label {label!r}, which looks like "
                        f"several labels (separated by {several[0]!r}); multi-label data "
                        "is not supported yet: one label per image.")
    if "split" not in columns:
        return label, None
    value = row[columns["split"]].strip()
    split = SPLIT_VALUES.get(value.lower())
    if split is None:
        raise DataError(f"{where} has the unknown split {value!r} for {name!r}; use "
                        f"train, val (or validation) or test.")
    return label, split


def read_records(path):
    """The delimiter and the rows of a table file as the csv module reads them:
    `[(row number, cells)]`, the header first, as row 1.

    Raises:
        DataError: the file cannot be read, is not UTF-8, or is not CSV; or has no header.
    """
    path = Path(path)
    text = _text(path)
    delimiter = _delimiter(text)
    records = []
    try:  # records, not lines: a quoted cell may hold a line break
        records.extend(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as error:
        raise DataError(f"Row {len(records) + 1} of {str(path)!r} cannot be read as CSV "
                        f"({error}); is a quote left open?") from None
    if not records or not any(cell.strip() for cell in records[0]):
        raise DataError(f"{str(path)!r} is empty; it needs a header row naming its columns "
                        f"(such as filename,label).")
    return delimiter, list(enumerate(records, start=1))


def is_inside(file, folder):
    """Whether the path `file` names a place under `folder` (by name: links are not
    followed, for a data set may gather its files by links)."""
    file, folder = os.path.abspath(file), os.path.abspath(folder)
    try:
        return os.path.commonpath([file, folder]) == folder
    except ValueError:  # another drive
        return False


def _text(path):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"Cannot read the table {str(path)!r} ({error.strerror}).") from None
    try:
        return data.decode("utf-8-sig")  # UTF-8, with or without a byte-order mark
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(f"{str(path)!r} is not UTF-8 text (byte 0x{data[error.start]:02x} on "
                        f"line {line}); save it as UTF-8 (CSV UTF-8 in a spreadsheet).") from None


def _delimiter(text):
    # Lines as the csv module ends them (str.splitlines also ends them at form feeds and
    # other separators that a cell may hold).
    lines = re.split(r"\r\n|\r|\n", text[:SNIFF_CHARS], maxsplit=SNIFF_LINES)[:SNIFF_LINES]
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column, or no consistent delimiter: the header says
        header = lines[0]
        return max(DELIMITERS, key=header.count) if any(d in header for d in DELIMITERS) else ","


def find_columns(header, path, options, delimiter):
    """{"path": index, "label": index[, "split": index]} of the header's columns."""
    lowered = [name.lower() for name in header]
    found = {}
    for role, given, usual in (("path", options.path_column, PATH_COLUMNS),
                               ("label", options.label_column, LABEL_COLUMNS),
                               ("split", options.split_column, SPLIT_COLUMNS)):
        if given is not None:
            if given not in header and given.lower() not in lowered:
                raise UsageError(f"--{role}-column {given!r} is not a column of {str(path)!r}; "
                                 f"its columns: {', '.join(header)}.")
            found[role] = header.index(given) if given in header else lowered.index(given.lower())
            continue
        index = next((lowered.index(name) for name in usual if name in lowered), None)
        if index is not None:
            found[role] = index
        elif role != "split":
            hint = ""
            if len(header) == 1:
                hint = (f" It has one column, {header[0]!r}: is its delimiter one of comma, "
                        "semicolon or tab?")
            raise DataError(f"{str(path)!r} has no {role} column (looked for "
                            f"{', '.join(usual)}; its columns: {', '.join(header)}).{hint} "
                            f"Name it with --{role}-column.")
    return found


def split_rows(table):
    """{split: {label: [paths]}} of a table's rows; without a split column, all in train."""
    raw = {}
    for _, file, label, split in table.rows:
        raw.setdefault(split or "train", {}).setdefault(label, []).append(file)
    return raw
