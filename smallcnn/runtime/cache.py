"""smallcnn's on-disk cache: one place that names, writes, reads, heals and prunes entries.

    ~/.cache/smallcnn (or $SMALLCNN_CACHE)
        features/   pooled base features of a split (.npz)
        engines/    LiteRT conversions of a base or of a run's model (.tflite), and
                    OpenVINO's compiled models of them (openvino-<key>.blob), and
                    which of the two auto found faster on each (race-<key>.json)
        templates/  whole classifiers that extract's model files are written from (.keras, .json)
        scans/      what `check` found in each file of a data set (.json)

Every key is a digest of what the entry depends on, the source code of the modules
that produce it and the versions of the libraries they use: a change to decoding,
preprocessing or model building makes new keys, never a stale hit. Files are
identified by their content (the SHA-1 that `check` computes), or by path, size,
modification time, change time and inode where content is not needed: `cp -p` or
`rsync -t` can keep a size and a modification time, but not a change time.

Entries are written atomically (`files.atomic_write`), a checksum (where one is kept)
recorded before its entry appears. An entry that cannot be read, or whose bytes are
not the ones recorded, is deleted, reported in one line, and rebuilt by the caller;
nothing else is ever deleted as damaged. The cache is capped (`SMALLCNN_CACHE_MAX_GB`,
default 5): storing an entry evicts the least recently used ones beyond the cap.
"""

import functools
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

from smallcnn.errors import described
from smallcnn.runtime.files import atomic_write, file_sha256
from smallcnn.runtime.ranges import Range, from_environment

PARTS = ("features", "engines", "templates", "scans")
DEFAULT_MAX_GB = 5.0
MAX_GB = Range(0, 2**20, above=True)  # GiB; the top, a pebibyte, is as good as no cap
KEY_FORMAT = 2

# The modules whose code, and the libraries whose versions, make each part's entries.
_PRODUCERS = {
    "features": ("smallcnn.data.images", "smallcnn.model.layers", "smallcnn.model.networks",
                 "smallcnn.model.bases", "smallcnn.model.taps", "smallcnn.model.efficientnet_lite",
                 "smallcnn.runtime.engine"),
    "engines": ("smallcnn.model.layers", "smallcnn.model.networks", "smallcnn.model.bases",
                "smallcnn.model.taps", "smallcnn.model.efficientnet_lite",
                "smallcnn.runtime.engine"),
    "templates": ("smallcnn.model.layers", "smallcnn.model.networks", "smallcnn.model.bases",
                  "smallcnn.model.taps", "smallcnn.model.efficientnet_lite",
                  "smallcnn.model.modelfile"),
    "scans": ("smallcnn.data.images", "smallcnn.data.check"),
}
_LIBRARIES = {
    "features": ("numpy", "pillow", "keras", "tensorflow", "ai-edge-litert"),
    "engines": ("keras", "tensorflow", "ai-edge-litert"),
    "templates": ("keras", "h5py"),
    "scans": ("numpy", "pillow"),
}
# What reading a damaged entry raises (np.load, zipfile, json, h5py, the LiteRT interpreter).
DAMAGE = (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile)


class CacheWarning(UserWarning):
    """A cache entry was damaged and removed, or could not be written."""


def root(part=None):
    """The cache folder, or one part of it."""
    top = Path(os.environ.get("SMALLCNN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smallcnn"))
    return top / part if part else top


def max_bytes():
    """The cap on the cache's size: `$SMALLCNN_CACHE_MAX_GB` (default 5) GiB."""
    return int(from_environment("SMALLCNN_CACHE_MAX_GB", DEFAULT_MAX_GB, MAX_GB) * 2**30)


@functools.lru_cache(maxsize=None)
def _producer_fingerprint(part):
    digest = hashlib.sha256()
    for module in _PRODUCERS[part]:
        digest.update(Path(importlib.util.find_spec(module).origin).read_bytes())
    for library in _LIBRARIES[part]:
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            version = None
        digest.update(f"{library}={version};".encode())
    return digest.hexdigest()


def key(part, **description):
    """A hex digest naming an entry of `part` made from `description` (JSON values)."""
    if part not in PARTS:
        raise ValueError(f"Unknown cache part {part!r}. Expected one of {PARTS}.")
    text = json.dumps({"format": KEY_FORMAT, "part": part, "code": _producer_fingerprint(part),
                       **description}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def file_stamp(path):
    """What identifies a file without reading it: absolute path, size, modification time,
    change time and inode (None for a file that cannot be looked at)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def weights_identity(weights):
    """'imagenet', 'none', or the stamp of a weights file."""
    return weights if weights in ("imagenet", "none") else file_stamp(weights)


def path(part, name):
    """Where the entry `name` (a key and a suffix) of `part` lives."""
    return root(part) / name


def _warn(message):
    warnings.warn(message, CacheWarning, stacklevel=3)


def load(part, name, read, warn=None, checksum=False):
    """`read(path)` of an entry, or None when there is none.

    An entry that `read` cannot read is deleted and reported through `warn` (default: a
    `CacheWarning`), so the caller rebuilds it. With `checksum`, the entry's SHA-256 must
    be one that `store` recorded before `read` sees it: for readers that a damaged file
    can crash rather than make raise (the LiteRT interpreter); an entry with no SHA-256
    recorded is not stored yet, and is left alone. Reading marks the entry as used.
    """
    entry = path(part, name)
    if not entry.exists():
        return None
    try:
        if checksum and not _verified(entry):
            return None
        value = read(entry)
    except DAMAGE as error:
        if isinstance(error, FileNotFoundError) and not entry.exists():
            return None  # evicted or replaced by another process meanwhile: not damaged
        remove(entry)
        (warn or _warn)(f"Removed a damaged cache entry {entry} ({described(error)}); "
                        "it is rebuilt.")
        return None
    touch(entry)
    return value


def store(part, name, write, warn=None, checksum=False):
    """Writes an entry atomically through `write(temp_path)` (with `checksum`, also its
    SHA-256, for `load` to check), then prunes the cache.

    The SHA-256 is recorded before the entry is renamed into place, in the name of a
    companion file (`NAME.SHA256.sha256`): a reader in another process never sees an
    entry without its checksum, and two processes storing different bytes under one
    name each leave the checksum of theirs (a few bytes, gone with the entry).

    Returns the entry's path, or None when it could not be written (a read-only or full
    disk only costs time on the next run; `warn` says so).
    """
    entry = path(part, name)

    def write_recorded(temp):
        write(temp)
        digest = file_sha256(temp)
        atomic_write(_checksum_file(entry, digest), lambda t: Path(t).write_text(digest))

    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, write_recorded if checksum else write)
    except OSError as error:
        (warn or _warn)(f"Could not write the cache entry {entry} ({error.strerror or error}); "
                        "the next run computes it again.")
        return None
    prune(keep=entry)
    return entry


def is_stored(part, name, checksum=False):
    """Whether the entry is complete: written, and with `checksum` its SHA-256 recorded
    (`store` records it first), so another process's entry can be read once this is true."""
    entry = path(part, name)
    return entry.is_file() and (not checksum or bool(_recorded(entry)))


def _checksum_file(entry, digest):
    return entry.with_name(f"{entry.name}.{digest}.sha256")


def _recorded(entry):
    """The SHA-256 digests recorded for an entry (by every process that stored it)."""
    start, end = len(entry.name) + 1, -len(".sha256")
    return {file.name[start:end]
            for file in entry.parent.glob(f"{glob.escape(entry.name)}.*.sha256")}


def _verified(entry):
    """True when the entry's bytes have a recorded SHA-256; False when none is recorded
    (not stored yet); raises ValueError when they are not any recorded one.

    The entry is read before the records are listed: whichever process renamed the file
    being read had recorded its SHA-256 first, so a record missing then is damage.
    """
    digest = file_sha256(entry)
    recorded = _recorded(entry)
    if not recorded:
        return False
    if digest not in recorded:
        raise ValueError("its SHA-256 is not one recorded when it was written")
    return True


def touch(entry):
    """Marks an entry as just used (its modification time orders eviction)."""
    try:
        os.utime(entry)
    except OSError:
        pass  # a read-only cache still serves its entries; eviction order is all it costs


def _entry_name(file):
    """The name an entry's files share: up to the first dot (keys have none)."""
    return file.name.split(".", 1)[0]


def remove(entry):
    """Deletes an entry, then its companion files (same name, other suffixes): a reader
    that still finds the entry finds its checksums too."""
    entry = Path(entry)
    entry.unlink(missing_ok=True)
    for companion in entry.parent.glob(f"{glob.escape(_entry_name(entry))}.*"):
        companion.unlink(missing_ok=True)


def entries():
    """[(part, stem, bytes, last used, [files])] of every entry, least recently used first."""
    found = {}
    for part in PARTS:
        folder = root(part)
        if not folder.is_dir():
            continue
        for file in folder.iterdir():
            if not file.is_file() or file.name.startswith("."):
                continue  # a temporary file being written
            try:
                stat = file.stat()
            except OSError:
                continue
            group = found.setdefault((part, _entry_name(file)), [0, 0.0, []])
            group[0] += stat.st_size
            group[1] = max(group[1], stat.st_mtime)
            group[2].append(file)
    listed = [(part, stem, size, used, files) for (part, stem), (size, used, files) in found.items()]
    return sorted(listed, key=lambda e: e[3])


def prune(limit=None, keep=None):
    """Deletes the least recently used entries until the cache is within `limit` bytes
    (default `max_bytes()`); the entry `keep` is never deleted. Returns what was freed."""
    limit = max_bytes() if limit is None else limit
    listed = entries()
    total = sum(e[2] for e in listed)
    freed = 0
    keep = Path(keep) if keep is not None else None
    for part, stem, size, used, files in listed:
        if total - freed <= limit:
            break
        if keep is not None and keep in files:
            continue
        for file in sorted(files, key=lambda f: f.suffix == ".sha256"):  # as `remove` does
            file.unlink(missing_ok=True)
        freed += size
    return freed


def info():
    """{"root", "max_bytes", "bytes", "parts": {part: {"entries", "bytes"}}}."""
    listed = entries()
    parts = {part: {"entries": 0, "bytes": 0} for part in PARTS}
    for part, _, size, _, _ in listed:
        parts[part]["entries"] += 1
        parts[part]["bytes"] += size
    return {"root": str(root()), "max_bytes": max_bytes(),
            "bytes": sum(p["bytes"] for p in parts.values()), "parts": parts}


def clear(part=None):
    """Deletes the whole cache, or one part of it; returns the bytes freed."""
    if part is not None and part not in PARTS:
        from smallcnn.errors import UsageError

        raise UsageError(f"Unknown cache part {part!r}. Choose one of: {', '.join(PARTS)}.")
    freed = sum(e[2] for e in entries() if part is None or e[0] == part)
    for name in ([part] if part else PARTS):
        shutil.rmtree(root(name), ignore_errors=True)
    return freed

