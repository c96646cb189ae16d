"""The data-set doctor, and odd or broken files through the scanner and the decoder."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import invoke, make_dataset
from tools.corpus import CASES, write_case
from smallcnn.data.check import check_dataset, scan_file
from smallcnn.data.dataset import find_dataset
from smallcnn.data.images import UnreadableImage, load_image


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_corpus_case(tmp_path, case):
    path = write_case(tmp_path, case)
    expected = case[3]
    facts = scan_file(path)
    if expected is None:
        assert facts["ok"], facts
        pixels = load_image(path, 32)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    else:
        assert not facts["ok"] and expected in facts["reason"], facts
        with pytest.raises(UnreadableImage, match=expected):
            load_image(path, 32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".jpg", ".png", ".gif", ".bmp", ".webp"]))
def test_random_bytes_never_crash_the_scanner_or_decoder(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    facts = scan_file(path)
    assert isinstance(facts["ok"], bool)
    try:
        load_image(path, 16)
    except UnreadableImage as error:
        assert error.reason
    if not facts["ok"]:
        assert facts["reason"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    width=st.integers(1, 80), height=st.integers(1, 80),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK", "LA", "1", "I;16"]),
    fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"]),
    seed=st.integers(0, 1000),
)
def test_random_valid_images_scan_and_decode(tmp_path, width, height, mode, fmt, seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    else:
        image = image.convert(mode)
    path = tmp_path / f"valid.{fmt.lower()}"
    try:
        image.save(path, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format: nothing to test
    facts = scan_file(path)
    assert facts["ok"], facts
    assert load_image(path, 24).shape == (24, 24, 3)


def _plant(root):
    """Bad files in a tiny data set, and a training image copied into validation."""
    bad = []
    for case in CASES[:6]:
        bad.append(write_case(root / "train" / "red", case))
    leak = root / "val" / "blue" / "leaked.png"
    shutil.copy(root / "train" / "blue" / "blue_000.png", leak)
    return bad, leak


def test_check_names_bad_files_and_cross_split_duplicates(tiny_data):
    bad, leak = _plant(tiny_data)
    report = check_dataset(find_dataset(tiny_data))
    assert sorted(u["path"] for u in report.unreadable) == sorted(map(str, bad))
    assert report.trainable
    leaks = report.leaks
    assert [(d["a"], d["b"], d["kind"]) for d in leaks] == [
        (str(tiny_data / "train" / "blue" / "blue_000.png"), str(leak), "exact")
    ]
    assert report.counts["train"] == [12, 12]
    assert any("across splits" in w for w in report.warnings)
    assert any("6 unreadable" in w for w in report.warnings)


def test_check_cli_json_and_exit_status(tiny_data):
    bad, leak = _plant(tiny_data)
    result = invoke("check", tiny_data, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["trainable"] and report["cross_split_duplicates"] == 1
    assert {u["path"] for u in report["unreadable"]} == set(map(str, bad))
    table = invoke("check", tiny_data)
    assert "truncated" in table.output and "train / val" in table.output
    # A class whose validation images are all unreadable cannot be trained on.
    for path in (tiny_data / "val" / "red").iterdir():
        path.write_bytes(b"")
    refused = invoke("check", tiny_data)
    assert refused.exit_code == 3
    assert "Class 'red' has no readable images in the val split" in refused.output


def test_check_warns_about_imbalance_and_small_classes(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=4, classes=("red",))
    make_dataset(root, per_class=16, classes=("blue",), seed=1)
    report = check_dataset(find_dataset(root))
    assert any("imbalanced: 16 vs 4" in w for w in report.warnings)
    assert any("fewer than 10 training images: red" in w for w in report.warnings)


def test_training_skips_bad_files_and_says_so(tiny_data):
    bad, _ = _plant(tiny_data)
    result = invoke("extract", tiny_data, "--base", "small", "--image-size", "32",
                    "--epochs", "3", "--out", "runs/x")
    assert result.exit_code == 0, result.output
    for path in bad:
        assert path.name in result.output.replace("\n", "")
    metrics = json.loads(open("runs/x/metrics.json").read())
    assert metrics["skipped_images"] == len(bad)


def test_bit_count_of_hash_rows_works_on_any_numpy():
    from smallcnn.data import check

    rows = np.random.default_rng(0).integers(0, 2**63, (50, 4), dtype=np.uint64)
    expected = [sum(bin(int(v)).count("1") for v in row) for row in rows]
    assert check._table_bit_count(rows).tolist() == expected  # NumPy 1
    assert check._bit_count(rows).tolist() == expected  # this NumPy's
