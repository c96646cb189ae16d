"""Where `smallcnn label` writes its answers: DATA's labels and a journal beside them.

A class answer goes into DATA at once: a copy of the pool file (never a move) into the
class's folder under a free name, or a row added to DATA's table (the whole table written
again through `atomic_write`, so it is never left half-written). "skip" and "not any
class" go into the journal, a JSON-lines file beside DATA, as every answer does; a
restart reads both, and shows none of those images again.
"""

import csv
import dataclasses
import io
import json
import os
import shutil
import time
from pathlib import Path

from smallcnn.data.dataset import VAL_FOLDER_NAMES, VAL_SPLIT, class_folders
from smallcnn.data.table import is_inside, read_records, read_table
from smallcnn.errors import DataError
from smallcnn.progress import Reporter
from smallcnn.runtime.files import atomic_write, write_text
from smallcnn.serve.uploads import RequestError

JOURNAL = ".smallcnn-labelling.jsonl"  # in DATA, or beside DATA's table
SKIP, NOT_ANY = "skip", "none"  # the answers that are not a class
NEW_TABLE_HEADER = ("filename", "label")
HOLD_OUT = 1000  # an image is held out when its digest's number modulo this < VAL_SPLIT x it


@dataclasses.dataclass
class Labelled:
    """An image DATA labels: its path, class name, split ("train" or "val") and digest."""

    path: str
    label: str
    split: str
    digest: str


def held_out(digest):
    """Whether an image without a split of its own is held out for validation: a fixed
    draw by its content, so that it stays where it is across restarts."""
    return int(digest[:8], 16) % HOLD_OUT < VAL_SPLIT * HOLD_OUT


class LabelStore:
    """DATA as `smallcnn label` reads and writes it: class folders (split or flat) or a
    table, and the journal of answers beside it."""

    def __init__(self, data, table=None):
        data = Path(data).expanduser()
        if table is None and data.suffix.lower() == ".csv" and not data.is_dir():
            data, table = data.parent, data
        self.data = data
        self.table = Path(table).expanduser() if table is not None else None
        if self.table is not None and self.table.is_dir():
            raise DataError(f"--table {str(self.table)!r} is a folder; name a CSV file.")
        if data.exists() and not data.is_dir():
            raise DataError(f"--data {str(data)!r} is a file; give a folder of class folders, "
                            "or a table of labels (.csv).")
        self.journal = (self.table.with_name(f".{self.table.name}.labelling.jsonl")
                        if self.table is not None else data / JOURNAL)
        self.split_folders = (data / "train").is_dir()
        self.own_val = False  # whether DATA has validation images of its own (`labelled`)
        self.entries = self._read_journal()

    @property
    def scan_root(self):
        """The folder the data check's scan of DATA's images is cached under."""
        return self.data

    @property
    def where(self):
        """What the answers go into, in words."""
        if self.table is not None:
            return f"the table {str(self.table)!r}"
        folder = self.data / "train" if self.split_folders else self.data
        return f"the class folders of {str(folder)!r}"

    def labelled(self, reporter=Reporter()):
        """`Labelled` of every image DATA labels now, test images included (never to be
        trained on, nor suggested again); images without a split of their own are held out
        for validation (`held_out`) when DATA has no validation images. The digests are
        the data check's cached scan's (`pool.scanned`): a file it cannot read is left
        out, named."""
        from smallcnn.labels.pool import scanned

        found = self._table_rows() if self.table is not None else self._folder_images()
        self.own_val = any(split == "val" for _, _, split in found)
        # Cached under DATA, as `smallcnn check DATA` caches it: the same as answers add up.
        digests = (scanned([path for path, _, _ in found], reporter, "DATA", self.scan_root)[1]
                   if found else {})
        for path in [path for path, _, _ in found if path not in digests]:
            reporter.warning(f"left out of {self.where}: {path} cannot be read")
        return [Labelled(path, label, split or self.split_of(digests[path]), digests[path])
                for path, label, split in found if path in digests]

    def split_of(self, digest):
        """The split of a new answer with this digest."""
        return "val" if not self.own_val and held_out(digest) else "train"

    def _folder_images(self):
        if not self.data.is_dir():
            return []
        splits = [("train", "train"), *((name, "val") for name in VAL_FOLDER_NAMES),
                  ("test", "test")]
        roots = ([(self.data / name, split) for name, split in splits]
                 if self.split_folders else [(self.data, None)])
        return [(path, label, split) for root, split in roots if root.is_dir()
                for label, paths in class_folders(root).items() for path in paths]

    def _table_rows(self):
        if not self.table.exists():
            return []
        table = read_table(self.table, self.data)
        return [(path, label, split) for _, path, label, split in table.rows]

    def classes(self):
        """The class names DATA's folders or table name, sorted."""
        if self.table is not None:
            return sorted({label for _, label, _ in self._table_rows()})
        root = self.data / "train" if self.split_folders else self.data
        return sorted(class_folders(root)) if root.is_dir() else []

    def write(self, source, label):
        """Writes the answer `label` for the pool file `source` into DATA; returns the path
        DATA knows it by (the copy, or the table's row's file)."""
        try:
            if self.table is not None:
                return self._add_row(source, label)
            return self._copy(source, label)
        # Not writable: a read-only folder or file system, a full disk; or the file is gone.
        except OSError as error:
            if not os.path.exists(source):
                raise RequestError(410, f"The pool file {source!r} is not there any more; it "
                                        "is left out.") from None
            raise RequestError(409, f"Cannot write into {self.where} "
                                    f"({error.strerror or error}): make it writable, or label "
                                    "into a table with --table FILE.") from None

    def _copy(self, source, label):
        folder = (self.data / "train" if self.split_folders else self.data) / label
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(source).name
        count = 1
        while target.exists():  # a free name: the pool file's, numbered when taken
            target = folder / f"{Path(source).stem}-{count}{Path(source).suffix}"
            count += 1
        atomic_write(target, lambda temp: shutil.copyfile(source, temp))
        return str(target)

    def _add_row(self, source, label):
        if not os.path.isfile(source):
            raise FileNotFoundError(source)
        name = (os.path.relpath(source, self.data) if is_inside(source, self.data)
                else os.path.abspath(source))
        if self.table.exists():
            delimiter, records = read_records(self.table)
            header = [cell.strip().lower() for cell in records[0][1]]
            text = self.table.read_text(encoding="utf-8-sig")
        else:
            delimiter, header, text = ",", list(NEW_TABLE_HEADER), None
        row = _row(header, name, label)
        line = io.StringIO()
        csv.writer(line, delimiter=delimiter, lineterminator="\n").writerow(
            row if text is not None else header)
        if text is None:
            text = line.getvalue()
            line = io.StringIO()
            csv.writer(line, delimiter=delimiter, lineterminator="\n").writerow(row)
        if text and not text.endswith(("\n", "\r")):
            text += "\n"
        write_text(self.table, text + line.getvalue())
        return os.path.normpath(self.data / name)

    def record(self, entry):
        """Adds `entry` (a dict) to the journal, the whole file written again atomically."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}
        self.entries.append(entry)
        try:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.journal, "".join(json.dumps(e) + "\n" for e in self.entries))
        except OSError as error:
            self.entries.pop()
            raise RequestError(409, f"Cannot write the journal {str(self.journal)!r} "
                                  f"({error.strerror}): make its folder writable.") from None

    def _read_journal(self):
        """The journal's entries. A line that is not a JSON object (only a hand edit makes
        one: the journal is only ever replaced whole) is refused rather than dropped by
        the next write."""
        try:
            lines = self.journal.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"Cannot read the labelling journal {str(self.journal)!r} "
                            f"({error}); move it aside to start afresh.") from None
        entries = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                raise DataError(f"Line {number} of the labelling journal "
                                f"{str(self.journal)!r} is not a JSON object ({line[:40]!r}); "
                                "mend or delete that line.")
            entries.append(entry)
        return entries

    def answered_digests(self):
        """The digests of the images the journal has an answer for."""
        return {e["digest"] for e in self.entries if isinstance(e.get("digest"), str)}


def _row(header, name, label):
    """A table row for `header`: the file name and label in their columns, "train" in a
    split column, the other cells empty."""
    from smallcnn.data.table import LABEL_COLUMNS, PATH_COLUMNS, SPLIT_COLUMNS

    row = [""] * len(header)
    for usual, value in ((PATH_COLUMNS, name), (LABEL_COLUMNS, label), (SPLIT_COLUMNS, "train")):
        index = next((header.index(column) for column in usual if column in header), None)
        if index is not None:
            row[index] = value
    return row
