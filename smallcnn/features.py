"""Pooled conv-base features, computed once and cached on disk.

The cache key covers everything the features depend on: the base, its weights, the
image size and preprocessing, and each file's path, size and modification time. A
second `extract` over the same files skips decoding and the base entirely.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from smallcnn.runs import atomic_write

CACHE_FORMAT = 1


def cache_root(part=None):
    """smallcnn's cache folder (`$SMALLCNN_CACHE`, default ~/.cache/smallcnn), or one part
    of it: features, engines (LiteRT conversions), templates (model files), scans."""
    root = Path(os.environ.get("SMALLCNN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smallcnn"
    ))
    return root / part if part else root


def cache_dir():
    return cache_root("features")


def weights_identity(weights):
    if weights in ("imagenet", "none"):
        return weights
    stat = os.stat(weights)
    return [weights, stat.st_size, stat.st_mtime_ns]


def cache_key(spec, weights, image_size, paths):
    """A hex digest naming the features of `paths` under one base, weights and size."""
    if weights == "none":
        return None  # random weights differ each run: nothing to reuse
    files = []
    for path in paths:
        try:
            stat = os.stat(path)
            files.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([os.path.abspath(path), None, None])
    description = {
        "format": CACHE_FORMAT,
        "base": spec.name,
        "preprocessing": spec.preprocessing,
        "weights": weights_identity(weights),
        "image_size": image_size,
        "files": files,
    }
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()


def load_cached(key):
    """`(features, labels, paths, skipped)` from the cache, or None."""
    if key is None:
        return None
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            skipped = json.loads(str(data["skipped"]))
            return data["features"], data["labels"], list(data["paths"]), skipped
    except (OSError, KeyError, ValueError):
        return None


def store(key, features, labels, paths, skipped):
    if key is None:
        return
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)

    def write(temp):
        with open(temp, "wb") as f:
            np.savez(
                f,
                features=features,
                labels=labels,
                paths=np.asarray(paths, dtype=str),
                skipped=np.asarray(json.dumps(skipped)),
            )

    try:
        atomic_write(folder / f"{key}.npz", write)
    except OSError:
        pass  # a read-only or full cache only costs time on the next run
