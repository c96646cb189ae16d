"""Training on several devices and several machines, rehearsed on this CPU: the CPU split
into 2 logical devices (MirroredStrategy), and a 2-process cluster on localhost
(MultiWorkerMirroredStrategy). Each runs in fresh processes: TensorFlow fixes its devices
and its cluster once per process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from smallcnn.model import runs
from smallcnn.train import Settings

# A worker process that trains through the library and, for the test, writes a digest of
# its final weights and the images it decoded (the chief writes the run; the others nothing).
WORKER = """
import hashlib, json, sys
import numpy as np
from smallcnn import train as api
from smallcnn.train import Settings, runfolder

finish = runfolder.RunWriter.finish
def finish_and_digest(self, run_dir, model, *args, **kwargs):
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    decoded = {"/".join(map(str, k if isinstance(k, tuple) else (k,))): list(map(str, v.paths))
               for k, v in self.source._decoded.items()}
    with open(sys.argv[2], "w") as f:
        json.dump({"sha256": hashlib.sha256(weights.tobytes()).hexdigest(),
                   "decoded": decoded}, f)
    return finish(self, run_dir, model, *args, **kwargs)
runfolder.RunWriter.finish = finish_and_digest
values = json.loads(sys.argv[3])
command = getattr(api, values.pop("command", "train"))
result = command(sys.argv[1], settings=Settings(**values),
                 out=sys.argv[4] if len(sys.argv) > 4 else None)
print(json.dumps({"run_dir": str(result.run_dir) if result.run_dir else None,
                  "metrics": result.metrics, "worker": result.worker,
                  "interrupted": result.interrupted}))
"""
SMALL = dict(base="small", image_size=32, batch_size=8, seed=3)
pytestmark = pytest.mark.cluster  # fresh processes each, minutes in all


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start_cluster(data, folder, settings, script=None):
    """Starts one worker process per port, each in its own folder: [(process, folder)]."""
    ports = free_ports(2)
    started = []
    for index in range(2):
        cwd = folder / f"worker{index}"
        cwd.mkdir()
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
        command = [sys.executable, "-c", WORKER, str(data), str(cwd / "digest.json"),
                   json.dumps(settings), "run"]
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append((process, cwd))
    return started


def finished(started, timeout=240):
    results = []
    for process, cwd in started:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]
        results.append((json.loads(out.strip().splitlines()[-1]), cwd))
    return results


def test_two_logical_devices_train_as_two_replicas_into_one_run(tiny_data, tmp_path):
    """`--devices 2` without a GPU: MirroredStrategy on 2 logical CPU devices; the global
    batch is 2 x --batch-size; one run folder; the accuracy of a one-device run."""
    command = [sys.executable, "-m", "smallcnn", "train", str(tiny_data), "--base", "small",
               "--image-size", "32", "--batch-size", "8", "--epochs", "4", "--devices", "2",
               "--out", "two"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "split into 2 logical devices" in done.stdout + done.stderr
    config = json.loads((tmp_path / "two" / runs.CONFIG_FILE).read_text())
    assert config["distribution"] == {"strategy": "MirroredStrategy", "workers": 1,
                                      "replicas": 2, "devices": ["/cpu:0", "/cpu:1"],
                                      "precision": "float32"}
    assert not (tmp_path / "runs").exists()  # one run folder: the one asked for
    metrics = json.loads((tmp_path / "two" / runs.METRICS_FILE).read_text())
    # 24 training images in global batches of 16: 2 steps an epoch (3 on one device).
    from smallcnn.train import train

    one = train(tiny_data, Settings(**SMALL, epochs=4), out="one")
    assert one.metrics["ran_on"] == "CPU, float32"
    assert abs(metrics["val_accuracy"] - one.metrics["val_accuracy"]) <= 0.125
    assert metrics["val_accuracy"] >= 0.75


def test_extract_splits_its_base_pass_across_two_logical_devices(tiny_data, tmp_path,
                                                                 base_weights_file):
    """extract's base pass on 2 devices (the TensorFlow engine, each batch split across
    the replicas) computes the features one device computes."""
    options = ["--base", "mobilenet_v2", "--weights", str(base_weights_file), "--image-size",
               "32", "--epochs", "20"]
    command = [sys.executable, "-m", "smallcnn", "extract", str(tiny_data), *options,
               "--devices", "2", "--out", "two"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "two" / runs.METRICS_FILE).read_text())
    assert metrics["engine"] == "tensorflow"
    assert metrics["ran_on"] == "2 logical CPU devices (MirroredStrategy), float32"
    command[-4:] = ["--engine", "tf", "--out", "one"]  # one device, the same engine
    env = {**os.environ, "SMALLCNN_CACHE": str(tmp_path / "cache-one")}  # computed anew
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / runs.METRICS_FILE).read_text())
    assert one["ran_on"] == "CPU, float32"
    assert abs(metrics["val_loss"] - one["val_loss"]) < 1e-3  # the same features, the same head


def test_two_workers_train_the_same_weights_and_the_chief_alone_writes_the_run(tiny_data,
                                                                             tmp_path):
    started = start_cluster(tiny_data, tmp_path, {**SMALL, "epochs": 2})
    (chief, chief_dir), (worker, worker_dir) = finished(started)
    assert chief["worker"] is None and worker["worker"] == "worker 1 of 2"
    run_dir = chief_dir / chief["run_dir"]
    for name in (runs.MODEL_FILE, runs.CONFIG_FILE, runs.METRICS_FILE, runs.HISTORY_FILE,
                 runs.CURVES_FILE):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in worker_dir.iterdir()) == ["digest.json"]  # nothing else
    digests = [json.loads((d / "digest.json").read_text()) for d in (chief_dir, worker_dir)]
    assert digests[0]["sha256"] == digests[1]["sha256"]  # the same weights on both workers
    config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
    assert config["distribution"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert (config["distribution"]["workers"], config["distribution"]["replicas"]) == (2, 2)
    assert chief["metrics"]["val_loss"] == worker["metrics"]["val_loss"]
    # What a single process reaches with the same settings, within noise.
    from smallcnn.train import train

    one = train(tiny_data, Settings(**SMALL, epochs=2), out=tmp_path / "one")
    assert abs(chief["metrics"]["val_accuracy"] - one.metrics["val_accuracy"]) <= 0.25


def test_two_workers_finetune_each_reading_their_own_shard(tiny_data, tmp_path):
    """finetune on a cluster (the head on the frozen base's features, then the top layers
    too), in mixed_float16 (loss scaling in the cluster's own train step): each worker
    decodes half of the training images, its shard, and both end with the same weights."""
    started = start_cluster(tiny_data, tmp_path, {**SMALL, "command": "finetune",
                                                  "head_epochs": 2, "epochs": 1, "unfreeze": 2,
                                                  "precision": "mixed_float16"})
    results = finished(started)
    assert results[0][0]["metrics"]["unfrozen_layers"] == ["block4_conv", "block3_conv"]
    assert results[0][0]["metrics"]["ran_on"].endswith("(MultiWorkerMirroredStrategy), "
                                                       "mixed_float16")
    shards = [json.loads((cwd / "digest.json").read_text())["decoded"] for _, cwd in results]
    first, second = shards[0]["train/0/2"], shards[1]["train/1/2"]
    assert "train" not in shards[0] and "train" not in shards[1]  # nobody decoded them all
    everything = sorted(str(p) for p in (tiny_data / "train").rglob("*.png"))
    assert len(first) == len(second) == len(everything) // 2
    assert sorted(first + second) == everything
    assert results[0][0]["metrics"]["val_loss"] == results[1][0]["metrics"]["val_loss"]
    digests = [json.loads((cwd / "digest.json").read_text()) for _, cwd in results]
    assert digests[0]["sha256"] == digests[1]["sha256"]
    history = (results[0][1] / "run" / runs.HISTORY_FILE).read_text()
    assert "frozen" in history and "finetune" in history


def test_sigterm_on_one_worker_stops_both_and_the_chief_keeps_its_best_model(tiny_data,
                                                                            tmp_path):
    started = start_cluster(tiny_data, tmp_path, {**SMALL, "epochs": 500, "patience": 500})
    chief_process, chief_dir = started[0]
    worker_process = started[1][0]
    deadline = time.monotonic() + 180
    # The chief writes smallcnn.json before its first epoch; give training a few epochs.
    while not list(chief_dir.glob("run/smallcnn.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(6)
    assert worker_process.poll() is None and chief_process.poll() is None
    worker_process.send_signal(signal.SIGTERM)
    results = finished(started, timeout=120)
    chief, worker = results[0][0], results[1][0]
    assert worker["interrupted"] == "SIGTERM"
    assert chief["interrupted"] == "a stop request on another worker"
    assert 1 <= chief["metrics"]["epochs"] < 500
    assert chief["metrics"]["epochs"] == worker["metrics"]["epochs"]
    metrics = json.loads((chief_dir / "run" / runs.METRICS_FILE).read_text())
    assert metrics["interrupted"] == "a stop request on another worker"
    assert (chief_dir / "run" / runs.MODEL_FILE).is_file()
    digests = [json.loads((d / "digest.json").read_text()) for _, d in started]
    assert digests[0]["sha256"] == digests[1]["sha256"]
