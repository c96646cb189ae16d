"""The corrected copy of `smallcnn check --label-issues --fix DIR --accept FILE`.

`--fix` never touches DATA: it writes a new folder (or, for a table, a new table) where only
the files listed in --accept carry the suggested label. Its arguments are all checked before
the analysis, and the copy is made in a temporary folder beside the new one, renamed into
place only when complete.
"""

import contextlib
import csv
import os
import re
import secrets
import shutil
from pathlib import Path

from smallcnn.data.table import TableOptions, find_columns, read_records
from smallcnn.errors import UsageError


def read_listed(path, dataset):
    """`{image path: line number}` of the images listed in --accept `path` (one path per
    line, `#` comments), each an image of the data set's train or val split.

    Raises:
        UsageError: the file cannot be read, or a line names no such image.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"--accept {str(path)!r} is not a file; give a file with one image "
                         "path per line.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"Cannot read --accept {str(path)!r} ({error}); give a UTF-8 text "
                         "file with one image path per line.") from None
    images = {os.path.abspath(p): p for name in ("train", "val") if name in dataset.splits
              for p in dataset.splits[name].paths}
    listed = {}
    # Lines end at line breaks only: a file name may hold a form feed (str.splitlines).
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image = images.get(os.path.abspath(line))
        if image is None:
            raise UsageError(f"Line {number} of --accept {str(path)!r}: {line[:200]!r} is not an "
                             "image of the data set's train or val split; list flagged images "
                             "by the paths that check prints.")
        listed[image] = number
    return listed


def accepted_relabels(listed, report, accept):
    """`{image path: suggested class}` of the images `listed` (see `read_listed`), each
    of which must be one of the report's likely label errors."""
    flagged = {issue.path: issue for issue in report.label_issues}
    for path, number in listed.items():
        if path not in flagged:
            raise UsageError(f"Line {number} of --accept {str(accept)!r}: {path!r} is not one of "
                             "the likely label errors found now; list only flagged images.")
    return {path: flagged[path].suggested for path in listed}


def check_fix(dataset, out, options=None):
    """Refuses a --fix folder that cannot take the corrected copy of `dataset`, before
    anything is computed or written.

    Returns:
        `(out, table)`: the folder, and the table file to rewrite (None for folders).

    Raises:
        UsageError: `out` is a file, is not empty, cannot be made, or is inside DATA.
    """
    out = Path(out).expanduser()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--fix {str(out)!r} is a file (or a link); name a new folder for the "
                         "corrected copy.")
    try:
        full = out.is_dir() and any(out.iterdir())
    except OSError as error:
        raise UsageError(f"Cannot look into --fix {str(out)!r} ({error.strerror}); name a new "
                         "folder.") from None
    if full:
        raise UsageError(f"--fix {str(out)!r} exists and is not empty; name a new folder.")
    above = out.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        raise UsageError(f"--fix {str(out)!r} cannot be made: {str(above)!r} is not a folder "
                         "this user can write in; name a folder elsewhere.")
    if dataset.layout == "csv table":
        return out, _table_file(dataset, options)
    data, target = Path(dataset.root).resolve(), out.resolve()
    if target == data or data in target.parents or target in data.parents:
        raise UsageError(f"--fix {str(out)!r} is inside the data set {dataset.root!r} (or holds "
                         "it); name a folder outside it.")
    return out, None


def _table_file(dataset, options):
    """The table file of a data set read from a table (DATA, or --labels)."""
    if options is not None and options.labels:
        return Path(options.labels).expanduser()
    if not Path(dataset.data).is_file():
        raise UsageError(f"The table of labels of {dataset.data!r} is not known; pass its "
                         "TableOptions (labels=TABLE).")
    return Path(dataset.data)


def write_fixed(dataset, accepted, out, table=None):
    """A copy of the data set in the new folder `out` with the `accepted` relabels
    (`{image path: class}`): every file under DATA copied, the accepted images into the
    folder of their new class; or, for a table, the table with those labels changed, its
    file names made absolute. The copy is made in a temporary sibling of `out` and renamed
    into place when complete: on any failure nothing is left.

    Returns:
        `(written, left_out)`: the folder (or table) written, and `[(path, reason)]` of
        the files under DATA that could not be copied (unreadable, not a regular file).

    Raises:
        UsageError: `out` cannot take the copy (see `check_fix`), or writing it failed.
    """
    out, source = check_fix(dataset, out, table)
    left_out = []
    try:
        with _staged(out) as staging:
            if source is not None:
                written = out / _fixed_table(source, table or TableOptions(), dataset,
                                             accepted, staging)
            else:
                _copy_folders(dataset, accepted, staging, left_out)
                written = out
    except OSError as error:
        raise UsageError(f"Cannot write the --fix copy {str(out)!r} ({error.strerror or error}); "
                         "nothing was left there: free some space, or name a folder "
                         "elsewhere.") from error
    return str(written), left_out


@contextlib.contextmanager
def _staged(out):
    """A new folder beside `out`, renamed to `out` when the block ends well; removed
    otherwise, with the folders above `out` that it made."""
    made = []  # deepest first
    above = out.parent
    while not above.exists():
        made.append(above)
        above = above.parent
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    try:
        staging.mkdir(parents=True)
        yield staging
        if os.name == "nt" and out.is_dir():  # elsewhere a rename replaces an empty folder
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the error that got here is the one to tell
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile
                folder.rmdir()
        raise


def _copy_folders(dataset, accepted, staging, left_out):
    """Every file under DATA copied into `staging` at the same place, the `accepted`
    images into the folder of their new class; what cannot be copied goes to `left_out`."""
    root = dataset.root
    copies = {os.path.relpath(path, root): path for path in _files_under(root, staging, left_out)}
    for split in dataset.splits.values():  # images the walk reached by another link
        for path in split.paths:
            copies.setdefault(os.path.relpath(path, root), path)
    class_part = 0 if dataset.layout == "class folders" else 1  # DATA/[split/]class/...
    relabel = {os.path.normpath(path): label for path, label in accepted.items()}
    moved = []
    for relative, path in copies.items():
        label = relabel.get(os.path.normpath(path))
        if label is None:
            _copy(path, staging / relative, left_out)
            continue
        parts = Path(relative).parts
        moved.append((path, staging.joinpath(*parts[:class_part], label,
                                             *parts[class_part + 1:]), parts[class_part]))
    # The relabelled files last, each under a name that no file of its new class has.
    for path, target, was in moved:
        _copy(path, _free_name(target, f"-from-{was}"), left_out)


def _files_under(root, skip, left_out):
    """Every file under `root`, following links to folders but never into one already
    visited (a cycle), nor into `skip`; folders that cannot be listed go to `left_out`."""
    def unlisted(error):
        left_out.append((error.filename, f"cannot list it ({error.strerror})"))

    visited = {os.path.realpath(skip)}
    for folder, folders, files in os.walk(root, followlinks=True, onerror=unlisted):
        visited.add(os.path.realpath(folder))
        folders[:] = sorted(name for name in folders
                            if os.path.realpath(os.path.join(folder, name)) not in visited)
        yield from (os.path.join(folder, name) for name in sorted(files))


def _copy(source, target, left_out):
    """Copies a file, never over another; one that cannot be read goes to `left_out`."""
    if not os.path.isfile(source):  # reading a pipe would wait for ever
        reason = "a link to nothing" if os.path.islink(source) else "not a regular file"
        left_out.append((source, reason))
        return
    try:
        reader = open(source, "rb")
    except OSError as error:
        left_out.append((source, f"cannot read it ({error.strerror})"))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with reader, open(target, "xb") as writer:
        shutil.copyfileobj(reader, writer)
    shutil.copystat(source, target)


def _free_name(target, mark):
    """`target` if no file is there yet, else the first free of target+mark,
    target+mark-2, ..."""
    candidate, number = target, 1
    while candidate.exists():
        number += 1
        tail = mark if number == 2 else f"{mark}-{number - 1}"
        candidate = target.with_name(f"{target.stem}{tail}{target.suffix}")
    return candidate


def _fixed_table(source, options, dataset, accepted, staging):
    """The table `source` written into `staging` with the accepted labels, every other
    cell as it was, its file names made absolute (the table moves; the images do not).
    Returns its name."""
    delimiter, records = read_records(source)
    header = records[0][1]
    columns = find_columns([name.strip() for name in header], source, options, delimiter)
    relabel = {os.path.normpath(path): label for path, label in accepted.items()}
    rows = [header]
    for _, row in records[1:]:
        if len(row) > max(columns.values()) and row[columns["path"]].strip():
            file = os.path.normpath(Path(dataset.root) / row[columns["path"]].strip())
            row[columns["path"]] = os.path.abspath(file)
            row[columns["label"]] = relabel.get(file, row[columns["label"]])
        rows.append(row)
    with open(staging / source.name, "x", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return source.name
