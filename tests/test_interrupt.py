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
from smallcnn.model import runs


@pytest.mark.heavy
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
    import smallcnn.model.layers  # noqa: F401

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


@pytest.mark.heavy
def test_a_run_killed_at_once_keeps_its_best_model_and_predicts(tmp_path):
    from smallcnn.train.callbacks import CHECKPOINT_VARIABLE

    data = make_dataset(tmp_path / "d", per_class=12, size=32, splits=("train",))
    # Validation images of the other colour: val_loss is lowest after the first epoch and
    # rises from then on (the best epoch comes early, before the first save is due).
    swapped = make_dataset(tmp_path / "v", per_class=6, size=32, splits=("val",), seed=1)
    (data / "val").mkdir()
    (swapped / "val" / "red").rename(data / "val" / "blue")
    (swapped / "val" / "blue").rename(data / "val" / "red")
    interval = 8.0  # the first epoch (tracing included) ends sooner: its model waits
    process = subprocess.Popen(
        [sys.executable, "-m", "smallcnn", "train", str(data), "--freeze", "--base", "small",
         "--image-size", "32", "--epochs", "1000", "--patience", "1000", "--batch-size", "8",
         "--learning-rate", "0.01", "--out", "runs/k",
         # LiteRT's float32 features, so the recorded val_loss is the saved model's to the
         # digit whatever auto picks (OpenVINO's bf16 features would differ by ~1e-3)
         "--engine", "litert"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1",  # lines as they come
             CHECKPOINT_VARIABLE: str(interval)},
    )
    lines, epochs = [], []  # the output; (when the line came, val_loss) of each epoch

    def read():
        for line in process.stdout:
            lines.append(line)
            if "frozen epoch" in line:
                epochs.append((time.monotonic(), float(line.split("val_loss ")[1].split()[0])))

    threading.Thread(target=read, daemon=True).start()

    def wait_for(condition):
        deadline = time.monotonic() + 120
        while not condition() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert condition(), f"exit {process.poll()}: " + "".join(lines)

    wait_for(lambda: epochs)
    # An epoch that ended an interval after training began saves, before the next epoch.
    wait_for(lambda: epochs[-1][0] >= epochs[0][0] + interval)
    due = len(epochs)
    wait_for(lambda: len(epochs) > due)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    run = tmp_path / "runs" / "k"
    assert not (run / "metrics.json").exists()  # killed: the run's end never came
    import smallcnn.model.layers  # noqa: F401
    from smallcnn.data.images import load_image

    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    # The model of the best epoch, not the latest, as the history beside it says.
    val_losses = [loss for _, loss in epochs]
    assert min(val_losses) < val_losses[due] - 0.01
    images = sorted((data / "val").rglob("*.png"))
    classes = json.loads((run / "smallcnn.json").read_text())["class_names"]
    labels = [classes.index(p.parent.name) for p in images]
    probabilities = model.predict(np.stack([load_image(p, 32) for p in images]), verbose=0)
    loss = -np.log(probabilities[np.arange(len(labels)), labels]).mean()
    assert loss == pytest.approx(min(val_losses), abs=2e-4)
    rows = runs.read_history(run)  # up to the save: `train --resume` goes on after them
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert min(r["val_loss"] for r in rows) == pytest.approx(loss, abs=2e-4)

    predicted = invoke("predict", images[0], "--model", run, "--json")
    assert predicted.exit_code == 0, predicted.output
    [prediction] = json.loads(predicted.stdout)
    assert prediction["label"] == classes[probabilities[0].argmax()]
    assert prediction["probability"] == pytest.approx(probabilities[0].max(), abs=1e-5)


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
    from smallcnn.runtime import engine

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
    from smallcnn.train.keras_loop import fit_stream

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("boom")

    before = signal.getsignal(signal.SIGTERM)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(RuntimeError, match="boom"):
        fit_stream(model, iter([(np.zeros((4, 2)), np.zeros((4, 1)))] * 4),
                   [StopOnSignal(), Boom()], steps=1, epochs=2,
                   validation=(np.zeros((4, 2)), np.zeros((4, 1))), batch_size=4)
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


def test_the_checkpoint_writes_the_best_model_at_most_once_per_interval_from_the_start(
        tmp_path, monkeypatch):
    from smallcnn.train import callbacks

    now = [100.0]
    saved = []  # (time, the model's weight when saved)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    monkeypatch.setattr(callbacks.runs, "save_model",
                        lambda m, path: saved.append((now[0], float(m.get_weights()[0][0, 0]))))
    checkpoint = callbacks.AtomicCheckpoint(tmp_path / "model.keras", model=model,
                                            min_interval=30, clock=lambda: now[0])
    checkpoint.begin_phase("frozen")
    checkpoint.on_train_begin()
    for epoch, (seconds, val_loss) in enumerate(
            ((10, 0.9), (25, 0.8), (35, 0.7), (50, 0.6), (60, 0.65), (70, 0.66), (80, 0.5),
             (90, float("nan")), (125, 0.55))):
        now[0] = 100 + seconds
        model.set_weights([np.full((1, 1), epoch, np.float32)])  # the weight says its epoch
        checkpoint.on_epoch_end(epoch, {"val_loss": val_loss})
    # 35 s: the first epoch end past 30 s, its model the best; 70 s: 35 s after that save,
    # the best model (of 50 s) kept in memory meanwhile, not the latest; 125 s: the best
    # of 80 s (a NaN is no improvement). 10, 25 s: the interval counts from the start.
    assert saved == [(135.0, 2.0), (170.0, 3.0), (225.0, 6.0)]
    assert model.get_weights()[0][0, 0] == 8.0  # training goes on with its own weights
    rows = runs.read_history(tmp_path)  # the history up to the last save, beside it
    assert [r["epoch"] for r in rows] == list(range(1, 10))
    assert {r["phase"] for r in rows} == {"frozen"} and rows[6]["val_loss"] == 0.5


def test_one_checkpoint_keeps_the_best_model_across_phases_and_working_copies(
        tmp_path, monkeypatch):
    from smallcnn.train import callbacks

    now = [0.0]
    saved = []  # the saved model's weight at each save
    model, working = (keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
                      for _ in range(2))
    monkeypatch.setattr(callbacks.runs, "save_model",
                        lambda m, path: saved.append(float(m.get_weights()[0][0, 0])))
    checkpoint = callbacks.AtomicCheckpoint(tmp_path / "model.keras", model=model,
                                            min_interval=30, clock=lambda: now[0])

    def epoch(seconds, weight, val_loss, trained=model):
        now[0] = seconds
        trained.set_weights([np.full((1, 1), weight, np.float32)])
        checkpoint.on_epoch_end(len(checkpoint.rows), {"val_loss": val_loss})

    # A model not in the file yet (fine-tuning from another run) is saved unless bettered.
    model.set_weights([np.full((1, 1), 1.0, np.float32)])
    checkpoint.start_from(0.6, saved=False)
    checkpoint.begin_phase("frozen")
    checkpoint.on_train_begin()
    epoch(31, 2.0, 0.9)  # worse: the model it started from is saved
    epoch(40, 3.0, 0.5)  # the best so far, in memory
    # The next phase trains a copy (mixed precision, several devices) and goes on counting.
    checkpoint.begin_phase("finetune", lambda: model.set_weights(working.get_weights()))
    checkpoint.on_train_begin()
    epoch(70, 4.0, 0.7, trained=working)  # worse than the last phase's best: that is saved
    epoch(105, 5.0, 0.4, trained=working)  # better: copied from the working model, saved
    epoch(110, 6.0, 0.45, trained=working)  # nothing new to save
    assert saved == [1.0, 3.0, 5.0]
    assert [(r["epoch"], r["phase"]) for r in checkpoint.rows] == [
        (1, "frozen"), (2, "frozen"), (3, "finetune"), (4, "finetune"), (5, "finetune")]
    model.set_weights([np.full((1, 1), 7.0, np.float32)])
    checkpoint.start_from(0.6, saved=True)  # a resumed run's model is its file already
    epoch(200, 8.0, 0.7)
    assert saved == [1.0, 3.0, 5.0]


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "1e308"])
def test_a_checkpoint_interval_that_is_no_number_of_seconds_is_refused(value, monkeypatch):
    from smallcnn.errors import UsageError
    from smallcnn.train.callbacks import CHECKPOINT_VARIABLE, checkpoint_seconds

    monkeypatch.setenv(CHECKPOINT_VARIABLE, value)
    with pytest.raises(UsageError, match=f"{CHECKPOINT_VARIABLE} must be between 0 and "):
        checkpoint_seconds()


def test_a_resumed_run_trains_only_the_epochs_each_phase_has_left():
    from smallcnn.train import Settings
    from smallcnn.train.commands import remaining_phases

    s = Settings(base="small", epochs=4, head_epochs=3, weights="imagenet").resolve("finetune")

    def plan(command, phases_done, from_run=False):
        rows = [{"epoch": i + 1, "phase": p} for i, p in enumerate(phases_done)]
        return [(p.name, p.epochs) for p in remaining_phases(command, s, rows, from_run)]

    assert plan("finetune", []) == [("frozen", s.head_epochs), ("finetune", s.epochs)]
    # Stopped in its head phase (extract's heads, in seconds): the run saved them.
    assert plan("finetune", ["frozen"] * 2) == [("finetune", s.epochs)]
    assert plan("finetune", ["frozen"] * s.head_epochs + ["finetune"]) == [
        ("finetune", s.epochs - 1)]
    # Stopped early in its head phase, then fine-tuned: the head phase is over.
    assert plan("finetune", ["frozen", "finetune"]) == [("finetune", s.epochs - 1)]
    assert plan("finetune", [], from_run=True) == [("finetune", s.epochs)]
    assert plan("train", ["frozen"] * 3) == [("frozen", s.epochs - 3)]
