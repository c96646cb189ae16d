"""Shared fixtures: tiny generated image data sets, an isolated cache and runs folder."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COLORS = {"red": (210, 50, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}


def make_image(rng, color, size):
    """A noisy image of one dominant colour with a random darker square on it."""
    pixels = np.clip(
        np.asarray(color, dtype=np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255
    )
    side = int(rng.integers(size // 4, size // 2))
    top, left = rng.integers(0, size - side, 2)
    pixels[top : top + side, left : left + side] *= 0.5
    return Image.fromarray(pixels.astype(np.uint8))


def make_dataset(root, per_class=12, size=40, classes=("red", "blue"), splits=("train", "val"),
                 seed=0, ext=".png"):
    """Writes `root/<split>/<class>/*.png` (or `root/<class>/` when splits is empty)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in splits or (None,):
        for name in classes:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                make_image(rng, COLORS[name], size).save(folder / f"{name}_{i:03d}{ext}")
    return root


# The pictures smallcnn writes (as opposed to the generated input images).
PICTURE_NAMES = ("curves.png", "confusion*.png", "*-gradcam.png", "*-activations-*.png",
                 "filters-*.png")


def assert_picture(source, min_width=100, min_height=100):
    """A PNG that opens, is at least the given size, and is not one flat colour."""
    import io

    image = Image.open(source if not isinstance(source, bytes) else io.BytesIO(source))
    image.load()
    assert image.format == "PNG", source
    assert image.width >= min_width and image.height >= min_height, (source, image.size)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 5, f"{source} is blank"
    return image


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test works in its own folder with its own feature cache; afterwards, every
    picture smallcnn wrote there is opened and checked (size, not blank)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMALLCNN_CACHE", str(tmp_path / "cache"))
    # Converting each trained model for predict takes ~2 s; the test of it turns it back on.
    monkeypatch.setenv("SMALLCNN_CONVERT_RUNS", "0")
    yield tmp_path
    for pattern in PICTURE_NAMES:
        for path in tmp_path.rglob(pattern):
            assert_picture(path, 150, 150)


@pytest.fixture
def tiny_data(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def base_weights_file(tmp_path_factory):
    """A MobileNetV2 (32 px) weights file, so tests can use `--weights PATH` offline."""
    import keras

    keras.utils.set_random_seed(7)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_32.weights.h5"
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.save_weights(str(path))
    return path


@pytest.fixture(scope="session")
def trained_once(tmp_path_factory):
    """The model of `trained`, trained once per session: (run folder, data folder)."""
    from smallcnn import train as training
    from smallcnn.train import Settings

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "data", per_class=16, classes=("red", "green", "blue"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMALLCNN_CACHE", str(root / "cache"))
        result = training.extract(data, Settings(base="small", image_size=32, epochs=60,
                                                 learning_rate=0.01, batch_size=8),
                                  out=root / "run")
    assert result.metrics["val_accuracy"] == 1.0
    return result.run_dir, data


@pytest.fixture(scope="module")
def trained(trained_once, tmp_path_factory):
    """A small 3-class model that has learned its (easy) data: (run folder, data folder),
    a copy of both for each test module that uses it (tests write into them), the copied
    run recording the copied data."""
    import shutil

    from smallcnn.model import runs

    run, data = trained_once
    root = tmp_path_factory.mktemp("trained-copy")
    run, data = (Path(shutil.copytree(folder, root / folder.name)) for folder in (run, data))
    config = runs.read_config(run)
    config["data"] = str(data)
    runs.write_json(run / runs.CONFIG_FILE, config)
    return run, data


def invoke(*args):
    """Runs the smallcnn CLI in-process, as `smallcnn ARGS...`; returns the click Result."""
    import sys
    from unittest import mock

    from typer.testing import CliRunner

    from smallcnn.cli import app

    args = [str(a) for a in args]
    with mock.patch.object(sys, "argv", ["smallcnn", *args]):
        return CliRunner().invoke(app, args)


def invoke_in_subprocess(*args, timeout=120, exit_code=0):
    """Runs `smallcnn ARGS...` in a fresh Python; returns (stdout, stderr, heavy modules
    imported by the end: a subset of tensorflow and keras). The command must end with
    `exit_code`."""
    import ast
    import subprocess
    import sys

    script = ("import sys\nfrom smallcnn.cli import main\nsys.argv = ['smallcnn', *sys.argv[1:]]\n"
              "code = 0\ntry:\n    main()\nexcept SystemExit as exit:\n    code = exit.code or 0\n"
              "print('imported:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
              "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == exit_code, done.stdout + done.stderr
    output, _, imported = done.stdout.rpartition("imported: ")
    return output, done.stderr, ast.literal_eval(imported)
