"""Writing files so that an interrupted write never leaves a half-written one.

Every file smallcnn writes, for the user or into its cache, goes through `atomic_write`:
written under a temporary name beside its place, given the usual permissions (the umask
respected), synced, then renamed into place.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(path, write):
    """Calls `write(temp)`, then renames `temp` onto `path`: every file smallcnn writes, for
    the user or into its cache, goes through here.

    `temp` is a name beside `path` (the same name, in a private folder), so an
    interrupted write never leaves a half-written file where a good one was. What
    `write` leaves there, a file or a folder (a SavedModel), gets the usual permissions
    whatever mode its writer chose (mkstemp's 0600, say), the umask respected, and
    reaches the disk before the rename; a folder replaces a folder whole.
    """
    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    temp = folder / path.name
    try:
        write(temp)
        _settle(temp, _umask(folder))
        if temp.is_dir() and path.is_dir():
            _replace_folder(temp, path, folder / "replaced")
        else:
            os.replace(temp, path)  # a file never replaces a folder, nor a folder a file
    finally:
        # Only a failed write leaves anything here; its error is the one worth raising.
        shutil.rmtree(folder, ignore_errors=True)


def _umask(folder):
    """The process's umask, read without changing it: `os.umask` can only set it, and the
    moment it spends at 0 would give other threads' new files every permission."""
    probe = os.path.join(folder, ".umask")
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o777)
    try:
        return 0o777 & ~os.fstat(fd).st_mode
    finally:
        os.close(fd)
        os.unlink(probe)


def _settle(temp, umask):
    """Gives what was written the permissions of a new file (or folder), and syncs it."""
    for item in [temp, *sorted(temp.rglob("*"))] if temp.is_dir() else [temp]:
        if item.is_symlink():
            continue
        if item.is_dir():
            os.chmod(item, 0o777 & ~umask)
            continue
        os.chmod(item, 0o666 & ~umask)
        with open(item, "rb") as f:
            os.fsync(f.fileno())


def _replace_folder(temp, path, aside):
    """Renames the folder `temp` onto the folder `path` (which `os.replace` does only for
    an empty one): the old one goes `aside` first, and comes back if the new one cannot
    take its place."""
    path.rename(aside)
    try:
        os.replace(temp, path)
    except BaseException:
        aside.rename(path)
        raise


def write_text(path, text):
    def write(temp):
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def file_sha256(path):
    """The hex SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
