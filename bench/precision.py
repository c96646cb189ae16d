"""Is mixed precision faster on this CPU? Training steps of a whole base, float32 against
Keras' mixed_bfloat16 policy (this CPU family has AMX-BF16).

For each shipped base: the base (ImageNet weights) + pooling + a 2-class softmax head in
float32 (Keras' guidance for the last layer), every layer trainable, SGD; `--steps` timed
steps of a batch of 32 random images at the base's size after 3 untimed ones (the graph
traced), in a fresh process per (base, policy). Speed only: whether accuracy holds is for
the finetune benchmark of issue 15 to measure once smallcnn has a --precision option.

    .venv/bin/python bench/precision.py [--steps 10]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PYTHON, ROOT, load_results, save_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "precision.json"
BASES = ("mobilenet_v2", "efficientnet_b0")
POLICIES = ("float32", "mixed_bfloat16")
BATCH = 32

STEP = """
import json, sys, time
import numpy as np
import keras
from smallcnn.model.bases import build_base, get_base
from smallcnn.model.layers import preprocessing_layer
name, policy, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
keras.mixed_precision.set_global_policy(policy)
spec = get_base(name)
size = spec.default_size
base = build_base(spec, size, "imagenet")
inputs = keras.Input((size, size, 3))
x = base(preprocessing_layer(spec.preprocessing)(inputs))
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(2, activation="softmax", dtype="float32")(x)
model = keras.Model(inputs, outputs)
model.compile(keras.optimizers.SGD(1e-4), "sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (32, size, size, 3)).astype("float32")
labels = rng.integers(0, 2, 32)
for _ in range(3):
    model.train_on_batch(images, labels)
times = []
for _ in range(steps):
    started = time.perf_counter()
    model.train_on_batch(images, labels)
    times.append(time.perf_counter() - started)
print(json.dumps({"step_seconds": times}))
"""


def measure(name, policy, steps):
    done = subprocess.run([PYTHON, "-c", STEP, name, policy, str(steps)], capture_output=True,
                          text=True, cwd=ROOT, env={"TF_CPP_MIN_LOG_LEVEL": "3",
                                                   "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    times = json.loads(done.stdout.strip().splitlines()[-1])["step_seconds"]
    median = statistics.median(times)
    return {"base": name, "policy": policy, "step_seconds": times,
            "median_step_seconds": median, "images_per_second": BATCH / median}


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    lines = ["## Mixed precision on this CPU", "",
             f"bench/precision.py ({results['date']}): training steps of a whole base (batch "
             f"{BATCH}, every layer trainable), float32 against Keras' mixed_bfloat16, "
             "medians of the timed steps, each in a fresh process. Speed only.", "",
             "| base | float32 images/s | mixed_bfloat16 images/s | ratio |", "|---|---|---|---|"]
    for name in BASES:
        cells = {c["policy"]: c for c in results["cells"] if c["base"] == name}
        if len(cells) < 2:
            continue
        fast, mixed = cells["float32"]["images_per_second"], cells["mixed_bfloat16"][
            "images_per_second"]
        lines.append(f"| {name} | {fast:.1f} | {mixed:.1f} | {mixed / fast:.2f}x |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "cells": []}
    for name in BASES:
        for policy in POLICIES:
            cell = measure(name, policy, args.steps)
            results["cells"].append(cell)
            print(json.dumps({k: v for k, v in cell.items() if k != "step_seconds"}), flush=True)
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
