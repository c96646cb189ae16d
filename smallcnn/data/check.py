"""The data-set doctor: what is in a data set, and what is wrong with it.

`check_dataset` opens every image once (at a reduced scale where the format allows),
and reports unreadable files with their reason, the sizes and modes found, exact and
near duplicates (a perceptual difference hash) within and across splits, and
warnings about imbalance, tiny images and small classes. It never raises for a bad
file: it reports it. Results are cached per file (by path, size, modification and
change time and inode: `smallcnn.runtime.cache.file_stamp`), so the check that starts every
training command costs little the second time, and the files' SHA-1 digests it
computes name their cached features (`smallcnn.train.feature_store`).
"""

import collections
import dataclasses
import functools
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from smallcnn.errors import DataError
from smallcnn.runtime import cache

# Of the 256 bits of a 16x16 difference hash: at or below this distance two images look
# the same. Measured on cats-dogs-small: its two true duplicate pairs are at 2 and 8
# bits, and no other pair of its 4,000 images is within 40 (a 64-bit hash at 4 bits
# flagged a cat and a dog as the same photo).
NEAR_DUPLICATE_BITS = 24
IMBALANCE_RATIO = 3.0
TINY_SIDE = 32
SMALL_CLASS = 10
# The content digest an image is known by across the package (scan_file's, cached with
# the scan): duplicates, feature cache keys, suggest's and label's known images.
DIGEST = "sha1"


def scan_file(path):
    """Facts about one image file; never raises.

    Returns:
        A dict with `ok`, and either `reason` (why the file cannot be used) or `width`,
        `height`, `mode`, `format`, `DIGEST` (the bytes') and `dhash` (a 256-bit perceptual hash, as hex).
    """
    from smallcnn.data.images import UnreadableImage, _open, decoding

    facts = {"ok": False}
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return {**facts, "reason": f"cannot read the file ({error.strerror or error})"}
    facts[DIGEST] = hashlib.new(DIGEST, data).hexdigest()
    try:
        with decoding(path), _open(path) as image:  # whatever a damaged file raises
            facts.update(width=image.width, height=image.height, mode=image.mode,
                         format=image.format)
            if image.format == "JPEG":
                image.draft("L", (64, 64))  # decodes every block, at 1/8 scale: cheap
            image.load()
            facts["dhash"] = _dhash(image)
    except UnreadableImage as error:
        return {**facts, "ok": False, "reason": error.reason}
    facts["ok"] = True
    return facts


def _dhash(image):
    """The 256-bit difference hash of an image (16x16 gradient signs), as hex."""
    grey = image.convert("L").resize((17, 16), Image.BILINEAR)
    pixels = np.asarray(grey, dtype=np.int16)
    return np.packbits(pixels[:, 1:] > pixels[:, :-1]).tobytes().hex()


def _scan_name(root):
    return f"{cache.key('scans', root=str(Path(root).resolve()))}.json"


def _read_scan(path):
    files = json.loads(path.read_text())["files"]
    if not isinstance(files, dict):
        raise ValueError("not a scan")
    return files


def scan_files(paths, root, progress=None, warn=None):
    """`scan_file` for many files, reusing cached results for files whose stamp (size,
    modification and change time, inode: see `smallcnn.runtime.cache.file_stamp`) is unchanged."""
    name = _scan_name(root)
    entries = cache.load("scans", name, _read_scan, warn=warn) or {}
    results = {}
    todo = []
    for path in paths:
        stamp = cache.file_stamp(path)
        entry = entries.get(path)
        if stamp is not None and entry is not None and entry.get("stamp") == stamp:
            results[path] = entry["facts"]
        else:
            todo.append((path, stamp))

    def work(item):
        return item, scan_file(item[0])

    from smallcnn.data.images import DECODE_WORKERS

    done = len(paths) - len(todo)
    with ThreadPoolExecutor(DECODE_WORKERS) as pool:
        for (path, stamp), facts in pool.map(work, todo):
            results[path] = facts
            if stamp is not None:
                entries[path] = {"stamp": stamp, "facts": facts}
            done += 1
            if progress is not None and (done % 64 == 0 or done == len(paths)):
                progress(done)
    if todo:
        text = json.dumps({"files": entries})
        cache.store("scans", name, lambda temp: Path(temp).write_text(text), warn=warn)
    return results


@dataclasses.dataclass
class CheckReport:
    root: str
    layout: str
    class_names: list
    counts: dict  # split -> images per class (readable images only)
    files: int
    sizes: dict  # min/max width and height of readable images
    modes: dict  # image mode -> count
    formats: dict  # file format -> count
    unreadable: list  # [{"path", "split", "class", "reason"}]
    duplicates: list  # [{"a", "b", "split_a", "split_b", "kind": exact|near, "distance"}]
    warnings: list  # human-readable lines
    trainable: bool
    reason: str = None  # why not, when not trainable
    digests: dict = dataclasses.field(default_factory=dict, repr=False)  # path -> SHA-1

    @property
    def leaks(self):
        return [d for d in self.duplicates if d["split_a"] != d["split_b"]]

    def to_dict(self):
        described = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name != "digests"}
        return {**described, "cross_split_duplicates": len(self.leaks)}


def check_dataset(dataset, reporter=None):
    """Scans every file of a `data.Dataset`; returns a `CheckReport`.

    `reporter` (a `smallcnn.progress.Reporter`) shows the scan's progress.
    """
    from smallcnn.progress import Reporter

    reporter = reporter or Reporter()
    entries = [(path, name, int(label)) for name, split in dataset.splits.items()
               for path, label in zip(split.paths, split.labels)]  # (path, split, class index)
    with reporter.progress("Checking images", len(entries)) as advance:
        facts = scan_files([e[0] for e in entries], dataset.root, advance, reporter.warning)
    tally = _Tally(dataset)
    for path, split, label in entries:
        tally.add(path, split, label, facts[path])
    reason = _untrainable_reason(tally.counts, dataset.class_names)
    report = CheckReport(
        root=dataset.root, layout=dataset.layout, class_names=dataset.class_names,
        counts=tally.counts, files=len(entries), sizes=tally.sizes(), modes=dict(tally.modes),
        formats=dict(tally.formats), unreadable=tally.unreadable,
        duplicates=_duplicates(entries, facts), warnings=[], trainable=reason is None,
        reason=reason, digests={path: facts[path].get(DIGEST) for path, _, _ in entries},
    )
    report.warnings = _warnings(report, tally.tiny)
    return report


class _Tally:
    """What the readable images of a data set are (per class and split, modes, formats,
    sizes), and which files are unreadable, as `add` is given each file's facts."""

    def __init__(self, dataset):
        self.class_names = dataset.class_names
        self.counts = {name: [0] * len(dataset.class_names) for name in dataset.splits}
        self.modes, self.formats = collections.Counter(), collections.Counter()
        self.widths, self.heights, self.tiny, self.unreadable = [], [], [], []

    def add(self, path, split, label, facts):
        if not facts["ok"]:
            self.unreadable.append({"path": path, "split": split,
                                    "class": self.class_names[label], "reason": facts["reason"]})
            return
        self.counts[split][label] += 1
        self.modes[facts["mode"]] += 1
        self.formats[facts["format"]] += 1
        self.widths.append(facts["width"])
        self.heights.append(facts["height"])
        if min(facts["width"], facts["height"]) < TINY_SIDE:
            self.tiny.append(path)

    def sizes(self):
        """The smallest and largest width and height, or {} without a readable image."""
        if not self.widths:
            return {}
        return {"min_width": min(self.widths), "max_width": max(self.widths),
                "min_height": min(self.heights), "max_height": max(self.heights)}


def _untrainable_reason(counts, class_names):
    """Why the data set cannot train (a class without a readable image in a split), or None."""
    for split, per_class in counts.items():
        for name, n in zip(class_names, per_class):
            if n == 0:
                return (f"Class {name!r} has no readable images in the {split} split "
                        f"(see the unreadable files above); add images that open.")
    return None


def _warnings(report, tiny):
    """What is worth knowing before training on the data set of `report`: imbalance, small
    classes, `tiny` images, unreadable files, duplicates."""
    warnings = []
    train = report.counts["train"]
    if min(train) and max(train) / min(train) > IMBALANCE_RATIO:
        warnings.append(
            f"Classes are imbalanced: {max(train)} vs {min(train)} training images "
            f"(ratio {max(train) / min(train):.1f}); consider --class-weight balanced."
        )
    small = [n for n, c in zip(report.class_names, train) if 0 < c < SMALL_CLASS]
    if small:
        warnings.append(f"Classes with fewer than {SMALL_CLASS} training images: "
                        f"{', '.join(small)}.")
    if tiny:
        warnings.append(f"{len(tiny)} image(s) smaller than {TINY_SIDE} px on a side, "
                        f"e.g. {tiny[0]}.")
    if report.unreadable:
        warnings.append(f"{len(report.unreadable)} unreadable file(s) will be skipped.")
    leaks = report.leaks
    if leaks:
        warnings.append(
            f"{len(leaks)} duplicate pair(s) across splits (leakage: validation/test accuracy "
            f"is inflated), e.g. {leaks[0]['a']} and {leaks[0]['b']}."
        )
    within = len(report.duplicates) - len(leaks)
    if within:
        warnings.append(f"{within} duplicate pair(s) within a split.")
    return warnings


def _duplicates(entries, facts):
    """Pairs of files with the same bytes, or a dHash within NEAR_DUPLICATE_BITS."""
    readable = [(p, s) for p, s, _ in entries if facts[p]["ok"]]
    pairs = []
    by_sha = collections.defaultdict(list)
    for path, split in readable:
        by_sha[facts[path][DIGEST]].append((path, split))
    exact = set()
    for group in by_sha.values():
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                (a, sa), (b, sb) = group[i], group[j]
                pairs.append({"a": a, "b": b, "split_a": sa, "split_b": sb, "kind": "exact",
                              "distance": 0})
                exact.add((a, b))
    if len(readable) > 1:
        hashes = np.stack([np.frombuffer(bytes.fromhex(facts[p]["dhash"]), dtype=np.uint64)
                           for p, _ in readable])
        for i in range(len(readable) - 1):
            distances = _bit_count(hashes[i + 1 :] ^ hashes[i])
            for offset in np.nonzero(distances <= NEAR_DUPLICATE_BITS)[0]:
                j = i + 1 + int(offset)
                (a, sa), (b, sb) = readable[i], readable[j]
                if (a, b) in exact:
                    continue
                pairs.append({"a": a, "b": b, "split_a": sa, "split_b": sb, "kind": "near",
                              "distance": int(distances[offset])})
    # Cross-split leaks first: they matter most.
    pairs.sort(key=lambda d: (d["split_a"] == d["split_b"], d["kind"] != "exact", d["a"]))
    return pairs


def _native_bit_count(rows):
    """Set bits in each row of a 2-D array of unsigned integers (NumPy 2)."""
    return np.bitwise_count(rows).sum(axis=1, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _word_bits():
    return np.array([bin(value).count("1") for value in range(1 << 16)], dtype=np.uint8)


def _table_bit_count(rows):
    """The same for NumPy 1 (TensorFlow 2.16 and 2.17 need it), which has no
    bitwise_count: a table of 16-bit words, about half as fast."""
    return _word_bits()[np.ascontiguousarray(rows).view(np.uint16)].sum(axis=1, dtype=np.int64)


_bit_count = _native_bit_count if hasattr(np, "bitwise_count") else _table_bit_count


def require_trainable(report):
    if not report.trainable:
        raise DataError(report.reason)
