"""Interruptions never lose a model: SIGINT saves and resumes; a crash mid-save keeps the old file."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import invoke, make_dataset
from smallcnn import runs


def test_sigint_saves_a_loadable_model_and_the_run_resumes(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=40, size=32)
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "smallcnn", "train", str(data), "--base", "small",
         "--image-size", "32", "--epochs", "12", "--patience", "20", "--batch-size", "4",
         "--out", "runs/i"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    lines = []

    def read():
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 120
    while not any("full epoch" in l for l in lines) and time.time() < deadline:
        time.sleep(0.1)
    assert any("full epoch" in l for l in lines), "".join(lines)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, "".join(lines)
    reader.join(timeout=5)
    output = "".join(lines)
    assert "Interrupted (SIGINT)" in output and "smallcnn train --resume runs/i" in output
    assert "Traceback" not in output

    run = tmp_path / "runs" / "i"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] == "SIGINT" and metrics["epochs"] < 12
    import smallcnn.layers  # noqa: F401

    keras.saving.load_model(run / "model.keras", safe_mode=True)

    os.chdir(tmp_path)
    resumed = invoke("train", "--resume", "runs/i")
    assert resumed.exit_code == 0, resumed.output
    assert f"Resuming runs/i after {metrics['epochs']} epoch(s)" in resumed.output
    after = json.loads((run / "metrics.json").read_text())
    assert "interrupted" not in after
    assert after["epochs"] > metrics["epochs"]
    from smallcnn.train.keras_loop import KEEP_TOLERANCE

    assert after["val_loss"] <= metrics["val_loss"] + KEEP_TOLERANCE
    assert after["val_accuracy"] >= metrics["val_accuracy"]
    config = json.loads((run / "smallcnn.json").read_text())
    assert config["resumed"] == ["smallcnn train --resume runs/i"]
    assert config["data"] == str(data)
    # Data that moved: the run is told where it is now, and records it.
    data.rename(tmp_path / "moved")
    lost = invoke("train", "--resume", "runs/i")
    assert lost.exit_code == 3 and "smallcnn train DATA --resume runs/i" in lost.output
    moved = invoke("train", "moved", "--resume", "runs/i")
    assert moved.exit_code == 0, moved.output
    assert json.loads((run / "smallcnn.json").read_text())["data"] == str(tmp_path / "moved")


def test_resume_refuses_another_commands_run(tiny_data):
    invoke("extract", tiny_data, "--base", "small", "--image-size", "32", "--epochs", "2",
           "--out", "runs/x")
    result = invoke("train", "--resume", "runs/x")
    assert result.exit_code == 2
    assert "is an extract run; resume it with smallcnn extract" in result.output


def test_a_crash_while_saving_leaves_the_previous_model(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path / "model.keras"
    runs.save_model(model, path)
    before = path.read_bytes()

    class Crashing(keras.Model):
        def save(self, filepath, *args, **kwargs):
            Path(filepath).write_bytes(b"PK\x03\x04 half a zip")
            raise OSError("disk full")

    broken = Crashing(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(OSError, match="disk full"):
        runs.save_model(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
    np.testing.assert_allclose(
        keras.saving.load_model(path).predict(np.ones((1, 3)), verbose=0),
        model.predict(np.ones((1, 3)), verbose=0),
    )


def test_balanced_class_weights(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=5, classes=("red",))
    make_dataset(root, per_class=18, classes=("blue",), seed=3)
    result = invoke("extract", root, "--base", "small", "--image-size", "32", "--epochs", "2",
                    "--class-weight", "balanced", "--out", "runs/w")
    assert result.exit_code == 0, result.output
    assert "3.6x (--class-weight balanced)" in result.output  # the summary notes the imbalance
    weights = json.loads(open("runs/w/metrics.json").read())["class_weights"]
    train = json.loads(open("runs/w/smallcnn.json").read())["data_counts"]["train"]
    total = sum(train)
    assert weights == {str(i): pytest.approx(total / (2 * n)) for i, n in enumerate(train)}


def test_an_extract_stopped_before_its_model_leaves_no_run_folder(tiny_data, monkeypatch):
    from smallcnn import engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # undoes only this (the fixture changed the folder)
        patch.setattr(engine, "compute_features", interrupted)
        for out in (["--out", "runs/stopped"], []):
            result = invoke("extract", tiny_data, "--base", "small", "--image-size", "32", *out)
            assert result.exit_code == 130, result.output
    assert not Path("runs").exists() or not any(Path("runs").iterdir())
    # A taken --out is still refused before any work (here, before the interruption).
    args = ["extract", tiny_data, "--base", "small", "--image-size", "32", "--epochs", "2"]
    assert invoke(*args, "--out", "runs/x").exit_code == 0
    monkeypatch.setattr(engine, "compute_features", interrupted)
    refused = invoke(*args, "--out", "runs/x")
    assert refused.exit_code == 2 and "already holds a run" in refused.output


def test_ctrl_c_handlers_are_restored_when_fit_raises():
    from smallcnn.train.callbacks import StopOnSignal
    from smallcnn.train.keras_loop import fit

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("boom")

    before = signal.getsignal(signal.SIGTERM)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, np.zeros((4, 2)), [StopOnSignal(), Boom()], y=np.zeros((4, 1)), epochs=2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_one_rule_keeps_the_earlier_model():
    from smallcnn.train.keras_loop import KEEP_TOLERANCE, worse_than

    assert not worse_than((0.5, 0.8), None)  # nothing earlier to keep
    # val_loss within noise, same accuracy: the new one stays
    assert not worse_than((0.5 + KEEP_TOLERANCE / 2, 0.8), (0.5, 0.8))
    assert worse_than((0.5 + 2 * KEEP_TOLERANCE, 0.8), (0.5, 0.8))
    # A lower val accuracy is worse, even with a lower val_loss.
    assert worse_than((0.4, 0.79), (0.5, 0.8))
    assert not worse_than((0.4, 0.81), (0.5, 0.8))
    assert not worse_than((0.4, 0.79), (0.5, None))  # an earlier accuracy not recorded


def test_the_checkpoint_saves_an_improvement_at_most_once_per_interval_from_the_start(
        tmp_path, monkeypatch):
    from smallcnn.train import callbacks

    now = [100.0]
    saved = []
    monkeypatch.setattr(callbacks.runs, "save_model", lambda model, path: saved.append(now[0]))
    checkpoint = callbacks.AtomicCheckpoint(tmp_path / "model.keras", model=object(),
                                            min_interval=30, clock=lambda: now[0])
    checkpoint.on_train_begin()
    for seconds, val_loss in ((10, 0.9), (25, 0.8), (35, 0.7), (50, 0.6), (70, 0.65), (80, 0.5)):
        now[0] = 100 + seconds
        checkpoint.on_epoch_end(0, {"val_loss": val_loss})
    # 10 and 25 s: under 30 s into training (the run's own end saves a short run);
    # 50 s: 15 s after a save; 70 s: no improvement.
    assert saved == [135.0, 180.0]
