"""The cache: keys that follow what an entry depends on, damaged entries rebuilt, a size cap."""

import json
import os
import time

import numpy as np
import pytest

from conftest import invoke
from smallcnn.runtime import cache

FAST = ["--epochs", "3", "--batch-size", "8"]


def test_keys_follow_the_description_the_part_and_the_code(monkeypatch):
    one = cache.key("features", base="mobilenet_v2", files=[["a", 0]])
    assert one == cache.key("features", base="mobilenet_v2", files=[["a", 0]])
    assert one != cache.key("features", base="mobilenet_v2", files=[["a", 1]])
    assert one != cache.key("engines", base="mobilenet_v2", files=[["a", 0]])
    # A change to the code that produces an entry gives it a new key.
    monkeypatch.setitem(cache._PRODUCERS, "features", ("smallcnn.data.images",))
    cache._producer_fingerprint.cache_clear()
    try:
        assert one != cache.key("features", base="mobilenet_v2", files=[["a", 0]])
    finally:
        monkeypatch.undo()
        cache._producer_fingerprint.cache_clear()


def test_a_file_rewritten_with_its_size_and_time_kept_gets_a_new_stamp(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"1234")
    stamp = cache.file_stamp(path)
    stat = path.stat()
    time.sleep(0.01)
    path.write_bytes(b"5678")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p and rsync -t do
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert cache.file_stamp(path) != stamp


def test_a_damaged_entry_is_deleted_reported_once_and_rebuilt(tmp_path):
    stored = cache.store("features", "x.json", lambda temp: open(temp, "w").write('{"a": 1}'))
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    assert cache.load("features", "x.json", read) == {"a": 1}
    stored.write_text('{"a": ')  # truncated
    warnings = []
    assert cache.load("features", "x.json", read, warn=warnings.append) is None
    assert len(warnings) == 1 and "Removed a damaged cache entry" in warnings[0]
    assert not stored.exists()
    assert cache.load("features", "x.json", read, warn=warnings.append) is None
    assert len(warnings) == 1  # gone: nothing more to say


def test_the_least_recently_used_entries_go_beyond_the_cap(monkeypatch):
    monkeypatch.setenv("SMALLCNN_CACHE_MAX_GB", str(2.5 * 1024 / 2**30))  # 2.5 KiB
    now = time.time()
    for age, name in enumerate(["new", "middle", "old"]):
        entry = cache.store("features", f"{name}.npz", lambda t: open(t, "wb").write(b"x" * 1024))
        os.utime(entry, (now - 100 * age, now - 100 * age))
    assert cache.load("features", "old.npz", lambda p: p.read_bytes()) is not None  # used now
    cache.store("engines", "newest.tflite", lambda t: open(t, "wb").write(b"y" * 1024))
    left = {stem for _, stem, _, _, _ in cache.entries()}
    assert left == {"old", "newest"}  # "middle" and then "new" were the least recently used
    assert cache.info()["bytes"] <= cache.max_bytes()


def test_cache_info_and_clear_from_the_command_line():
    cache.store("features", "a.npz", lambda t: open(t, "wb").write(b"x" * 2048))
    cache.store("scans", "b.json", lambda t: open(t, "w").write("{}"))
    shown = invoke("cache", "info", "--json")
    assert shown.exit_code == 0, shown.output
    described = json.loads(shown.stdout)
    assert described["parts"]["features"] == {"entries": 1, "bytes": 2048}
    assert described["parts"]["scans"]["entries"] == 1
    cleared = invoke("cache", "clear", "features")
    assert cleared.exit_code == 0 and "features" in cleared.output
    assert cache.info()["parts"]["features"]["entries"] == 0
    assert cache.info()["parts"]["scans"]["entries"] == 1
    refused = invoke("cache", "clear", "everything")
    assert refused.exit_code == 2 and "Unknown cache part 'everything'" in refused.output


@pytest.mark.heavy
def test_extract_heals_damaged_features_templates_and_engines(tiny_data, base_weights_file,
                                                             monkeypatch):
    from smallcnn.runtime import race

    # auto's race has one winner in every run (on a 32-pixel model either engine can win a
    # race): OpenVINO, so that its compiled blob and the race's record are cached entries too
    monkeypatch.setattr(race, "_timed", lambda run, images: 0.5 if run.name == "openvino" else 1.0)
    args = ["extract", tiny_data, "--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32", *FAST]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    damaged = set()
    for part in ("features", "templates", "engines"):
        for victim in sorted(cache.root(part).iterdir()):
            # Truncated, as a full disk or a killed copy leaves a file (a truncated LiteRT
            # file can crash the interpreter: its recorded checksum catches it first).
            victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 2)])
            damaged.add((part, victim.name.split(".")[0]))
    # train and val features, the template (archive and description), the base's LiteRT
    # conversion; where OpenVINO is installed, its compiled blob and auto's race record too
    parts = [part for part, _ in damaged]
    assert parts.count("features") == 2 and parts.count("templates") == 1
    assert any(part == "engines" and name.startswith("mobilenet_v2-32-") for part, name in damaged)
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert second.output.count("Removed a damaged cache entry") == len(damaged)
    third = invoke(*args)
    assert third.exit_code == 0, third.output
    assert "Removed a damaged cache entry" not in third.output
    assert "train: 24 feature vectors from the cache" in third.output
    for entry in cache.root("features").glob("*.npz"):
        with np.load(entry) as healed:
            assert healed["features"].shape[0] == 24


# A writer process: entries stored one after another, and one entry stored again and
# again with other bytes (as two processes converting the same model can), all with
# their checksums.
WRITER = """
import sys
from smallcnn.runtime import cache

def payload(i):
    return bytes([i % 251]) * {size}

for i in range(int(sys.argv[1])):
    data = payload(i)
    cache.store("engines", f"entry{{i}}.bin", lambda temp: open(temp, "wb").write(data),
                checksum=True)
    again = payload(i % 2 + 1000)
    cache.store("engines", "again.bin", lambda temp: open(temp, "wb").write(again),
                checksum=True)
"""
RACE_SIZE = 1 << 18  # bytes per entry: enough for hashing to take a moment


def _payload(i):
    return bytes([i % 251]) * RACE_SIZE


@pytest.mark.heavy
def test_a_reader_never_removes_an_entry_that_another_process_is_storing():
    import subprocess
    import sys

    count = 150
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(size=RACE_SIZE), str(count)],
                              stderr=subprocess.PIPE, text=True)
    read = lambda path: path.read_bytes()  # noqa: E731
    warned, recomputed, seen = [], [], set()
    again = {_payload(1000), _payload(1001)}
    while True:
        running = writer.poll() is None
        for name in [f"entry{i}.bin" for i in range(count) if i not in seen] + ["again.bin"]:
            if not cache.path("engines", name).is_file():
                continue  # not renamed into place yet
            value = cache.load("engines", name, read, warn=warned.append, checksum=True)
            if value is None:
                recomputed.append(name)  # what a caller would then convert again
            elif name == "again.bin":
                assert value in again
            else:
                assert value == _payload(int(name[5:-4]))
                seen.add(int(name[5:-4]))
        if not running:
            break
    assert writer.wait() == 0, writer.stderr.read()
    assert warned == []
    assert recomputed == []
    assert seen == set(range(count))
    assert all(cache.is_stored("engines", f"entry{i}.bin", checksum=True) for i in range(count))
