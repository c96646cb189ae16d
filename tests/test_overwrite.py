"""--overwrite never mixes two runs in RUN: the old run is set aside whole until the new one
saves a model, comes back if it saves none, and stays intact beside RUN after a kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import invoke, make_dataset
from smallcnn.model import runs

EXTRACT = ["--base", "small", "--image-size", "32", "--epochs", "2", "--batch-size", "8"]


def snapshot(run):
    """{relative path: bytes} of every file in a run folder."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file()}


def asides(run):
    """The folders --overwrite set aside beside `run`."""
    return sorted(run.parent.glob(f".{run.name}{runs.REPLACED_MARK}*"))


def assert_one_run(run):
    """RUN's smallcnn.json describes the model beside it."""
    config = json.loads((run / runs.CONFIG_FILE).read_text())
    assert config["model_sha256"] == runs.file_sha256(run / runs.MODEL_FILE)
    return config


def extract_run(data, out="runs/x"):
    result = invoke("extract", data, *EXTRACT, "--out", out)
    assert result.exit_code == 0, result.output
    return Path(out)


@pytest.mark.parametrize("failure", [RuntimeError("a bug"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_an_overwrite_that_ends_before_its_first_save_puts_the_old_run_back(
        tiny_data, monkeypatch, failure):
    run = extract_run(tiny_data)
    before = snapshot(run)
    from smallcnn.train import keras_loop

    def fail(*args, **kwargs):  # training starts: the new smallcnn.json is written
        assert json.loads((run / runs.CONFIG_FILE).read_text())["command"] == "train"
        raise failure

    monkeypatch.setattr(keras_loop, "train_head_frozen", fail)
    result = invoke("train", tiny_data, "--freeze", *EXTRACT, "--out", run, "--overwrite")
    assert result.exit_code != 0
    assert snapshot(run) == before and asides(run) == []
    assert assert_one_run(run)["command"] == "extract"
    assert "keeps its earlier run" in result.output


def test_the_first_model_saved_deletes_the_replaced_run(tmp_path):
    class Model:  # anything with Keras' save(path)
        def __init__(self, data):
            self.data = data

        def save(self, path):
            Path(path).write_bytes(self.data)

    run = tmp_path / "x"
    runs.new_run_dir("train", run)
    runs.save_model(Model(b"old"), run / runs.MODEL_FILE)
    runs.write_json(run / runs.CONFIG_FILE, {"old": True})
    with runs.overwriting():
        assert runs.new_run_dir("train", run, overwrite=True) == run
        assert list(run.iterdir()) == []  # nothing of the old run in RUN
        [aside] = asides(run)
        assert (aside / runs.MODEL_FILE).read_bytes() == b"old"
        runs.write_json(run / runs.CONFIG_FILE, {"old": False})
        runs.save_model(Model(b"new"), run / runs.MODEL_FILE)
        assert asides(run) == []  # replaced the moment a model is in RUN
    assert (run / runs.MODEL_FILE).read_bytes() == b"new"  # and kept as the command ends
    assert json.loads((run / runs.CONFIG_FILE).read_text()) == {"old": False}


@pytest.mark.heavy
def test_a_run_killed_before_its_first_save_keeps_the_old_beside_it(tmp_path, tiny_data):
    from smallcnn.train.callbacks import CHECKPOINT_VARIABLE

    run = extract_run(tiny_data)
    before = snapshot(run)
    process = subprocess.Popen(
        [sys.executable, "-m", "smallcnn", "train", str(tiny_data), "--freeze", *EXTRACT,
         "--epochs", "1000", "--patience", "1000", "--out", str(run), "--overwrite"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        env={**os.environ, CHECKPOINT_VARIABLE: "3600"},  # no save before the kill
    )
    config = run / runs.CONFIG_FILE

    def started():  # (the old run is set aside while we look: its file may just have gone)
        try:
            return json.loads(config.read_text())["command"] == "train"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not started():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert json.loads(config.read_text())["command"] == "train"

    # RUN holds the new run's smallcnn.json and no model; the old run is whole beside it.
    assert not (run / runs.MODEL_FILE).exists()
    [aside] = asides(run)
    assert snapshot(aside) == before
    image = next(tiny_data.rglob("*.png"))
    predicted = invoke("predict", image, "--model", run)
    assert predicted.exit_code == 4 and "holds no model yet" in predicted.output
    assert str(aside) in predicted.output
    assert "No trained model found" in invoke("predict", image).output  # not the aside
    assert invoke("predict", image, "--model", aside).exit_code == 0

    again = invoke("extract", tiny_data, *EXTRACT, "--seed", "7", "--out", run, "--overwrite")
    assert again.exit_code == 0, again.output
    assert "stopped before its first save" in again.output
    assert asides(run) == [] and assert_one_run(run)["settings"]["seed"] == 7


def test_a_leftover_of_a_saved_overwrite_is_deleted_with_a_note(tiny_data):
    run = extract_run(tiny_data)
    stale = run.parent / f".{run.name}{runs.REPLACED_MARK}20260101-000000-000000"
    stale.mkdir()  # an overwrite killed after its first save, while deleting the old run
    (stale / runs.MODEL_FILE).write_bytes(b"old")
    result = invoke("extract", tiny_data, *EXTRACT, "--out", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert f"Deleted {stale}" in result.output
    assert asides(run) == [] and assert_one_run(run)


def test_latest_run_never_picks_a_run_set_aside(tiny_data):
    run = extract_run(tiny_data, "runs/a")
    later = extract_run(tiny_data, "runs/b")
    later.rename(later.parent / f".{later.name}{runs.REPLACED_MARK}20260101-000000-000000")
    assert runs.latest_run() == run


@pytest.mark.parametrize("where, message", [
    ("{data}", "is the data"),
    ("{data}/run", "is inside the data"),
])
def test_a_run_folder_in_the_data_is_refused(tiny_data, where, message):
    before = snapshot(tiny_data)
    result = invoke("extract", tiny_data, *EXTRACT, "--out", where.format(data=tiny_data))
    assert result.exit_code == 2 and message in result.output, result.output
    assert snapshot(tiny_data) == before


def test_overwriting_a_run_that_holds_the_data_is_refused(tmp_path):
    run = extract_run(make_dataset(tmp_path / "first"))
    data = make_dataset(run / "data")
    images = snapshot(data)
    result = invoke("extract", data, *EXTRACT, "--out", run, "--overwrite")
    assert result.exit_code == 2 and "holds the data" in result.output, result.output
    assert snapshot(data) == images and asides(run) == []


def test_an_out_that_is_a_link_is_refused_where_it_would_mislead(tmp_path, tiny_data):
    run = extract_run(tiny_data)
    before = snapshot(run)
    link = tmp_path / "latest"
    link.symlink_to(run.resolve())
    result = invoke("extract", tiny_data, *EXTRACT, "--out", link, "--overwrite")
    assert result.exit_code == 2 and f"--out {str(run.resolve())}" in result.output
    assert snapshot(run) == before and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    result = invoke("extract", tiny_data, *EXTRACT, "--out", dangling)
    assert result.exit_code == 2 and "which is not a folder" in result.output, result.output


def test_finetune_over_the_run_it_starts_from_keeps_it_when_worse(tiny_data):
    run = extract_run(tiny_data)
    before = json.loads((run / runs.METRICS_FILE).read_text())
    # Fine-tuning that ruins the model: the run it started from (set aside) is the one kept.
    ruined = invoke("finetune", "--from", run, "--unfreeze", "2", "--epochs", "1",
                    "--batch-size", "8", "--learning-rate", "1000", "--out", run, "--overwrite")
    assert ruined.exit_code == 0, ruined.output
    assert "kept the model from before it" in ruined.output
    after = json.loads((run / runs.METRICS_FILE).read_text())
    assert after["kept_earlier_model"] and after["val_accuracy"] >= before["val_accuracy"]
    assert asides(run) == [] and assert_one_run(run)["command"] == "finetune"
