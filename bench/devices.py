"""The device section of `make bench`: GPUs, mixed precision, several devices.

On cats-dogs-small (2,000 train, 1,000 val, 1,000 test), MobileNetV2 at 224 px:
  limits    images/s of the bare forward pass on images already decoded (TensorFlow,
            batch 128, in each precision), and of decoding alone (smallcnn's decoder)
  extract   `smallcnn extract`, cold cache: the base pass's images/s (metrics.json)
  frozen    `train --freeze --epochs E`: seconds per epoch, val accuracy
  finetune  `finetune --head-epochs E --epochs E`: seconds per fine-tuning epoch, val accuracy
in float32 and in mixed precision, on one device and (with several GPUs) on all.

Where TensorFlow finds a GPU, the precisions are float32 and mixed_float16. Without a GPU
it says "no GPU" and measures this CPU's choice instead: float32 (the default: LiteRT runs
the frozen base) against --precision mixed_bfloat16 (TensorFlow runs everything).
Each command runs in a fresh process with an empty cache.

    .venv/bin/python bench/devices.py [--epochs 2]
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (BASE, PYTHON, ROOT, SHARED, load_results, run_metrics,  # noqa: E402
                       save_results, smallcnn, timed)

RESULTS = ROOT / "bench" / "results" / "devices.json"
DATA = SHARED / "cats-dogs-small"
# Keras' mixed-precision guide: a speed-up of 1.5x or more is what modern GPUs give.
TARGET_MIXED_SPEEDUP = 1.5
TARGET_EXTRACT_SHARE = 0.7

PROBE = """
import json
from smallcnn.runtime.quiet import import_tensorflow
import_tensorflow()
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
print(json.dumps({"gpus": len(gpus), "names": names}))
"""

LIMITS = """
import json, sys, time
from pathlib import Path
from smallcnn.runtime.quiet import import_tensorflow
import_tensorflow()
import numpy as np, tensorflow as tf
from smallcnn.model.bases import build_base, get_base
from smallcnn.runtime.devices import with_precision
from smallcnn.data.images import DECODE_WORKERS, load_images
from smallcnn.model.networks import feature_extractor
data, precisions = Path(sys.argv[1]), sys.argv[2].split(",")
paths = sorted(str(p) for p in (data / "train").rglob("*.jpg"))
started = time.perf_counter()
images, _ = load_images(paths, 224)
result = {"decode": len(paths) / (time.perf_counter() - started), "decode_threads": DECODE_WORKERS}
x = images[:1024].astype("float32")
spec = get_base("mobilenet_v2")
extractor = feature_extractor(spec, build_base(spec, 224, "imagenet"), 224)
for precision in precisions:
    model = extractor if precision == "float32" else with_precision(extractor, precision)
    run = tf.function(lambda b: model(b, training=False), reduce_retracing=True)
    run(x[:128]).numpy()
    started = time.perf_counter()
    for i in range(0, len(x), 128):
        run(x[i:i + 128]).numpy()
    result[precision] = len(x) / (time.perf_counter() - started)
print(json.dumps(result))
"""


def probe():
    out = timed([PYTHON, "-c", PROBE], cwd=ROOT)
    return json.loads(out["output"].strip().splitlines()[-1])


def cell(work, precision, devices, epochs):
    """extract, train --freeze and finetune in one precision on `devices`."""
    env = {"SMALLCNN_CACHE": str(work / "cache")}
    options = [*BASE, "--precision", precision, "--devices", devices]
    found = {"precision": precision, "devices": devices}
    for command, extra in (("extract", []),
                           ("train", ["--freeze", "--epochs", epochs, "--patience", epochs]),
                           ("finetune", ["--head-epochs", epochs, "--epochs", epochs,
                                         "--patience", epochs])):
        shutil.rmtree(work / "cache", ignore_errors=True)  # each one cold
        run_dir = work / f"{command}-{precision}-{devices}"
        run = smallcnn(command, DATA, *options, *extra, "--out", run_dir, env=env)
        metrics = run_metrics(run_dir)
        phase = {"extract": "head", "train": "frozen", "finetune": "finetune"}[command]
        seconds = [float(r["seconds"]) for r in metrics["history"] if r["phase"] == phase]
        found[command] = {
            "wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"],
            "val_accuracy": metrics["val_accuracy"], "ran_on": metrics.get("ran_on"),
            "engine": metrics.get("engine"), "timings": metrics.get("timings"),
            "base_images_per_second": metrics.get("base_images_per_second"),
            "epoch_seconds": seconds,
            "median_epoch_seconds": statistics.median(seconds) if seconds else None}
        print(json.dumps({"cell": [precision, devices, command],
                          **{k: v for k, v in found[command].items() if k != "timings"}}),
              flush=True)
    return found


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    hardware = (", ".join(results["gpu_names"]) if results["gpus"] else
                "no GPU: this machine's CPU (2 cores)")
    lines = ["## Devices and precision", "",
             f"bench/devices.py ({results['date']}, --epochs {results['epochs']}): "
             f"cats-dogs-small, MobileNetV2 at 224 px, on {hardware}. Each command in a fresh "
             "process with an empty cache; seconds per epoch are medians of the phase's epochs.",
             ""]
    limits = results["limits"]
    lines.append("Limits on images already decoded: " + ", ".join(
        f"TensorFlow's {p} forward pass {limits[p]:.0f} images/s" for p in results["precisions"])
        + f"; decoding {limits['decode']:.0f} images/s ({limits['decode_threads']} threads).")
    lines += ["", "| precision | devices | ran on | extract base pass images/s | "
              "train --freeze s/epoch | finetune s/epoch | val accuracy (extract / freeze / "
              "finetune) |", "|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        accuracy = " / ".join(f"{c[k]['val_accuracy']:.2%}" for k in ("extract", "train",
                                                                      "finetune"))
        lines.append(
            f"| {c['precision']} | {c['devices']} | {c['finetune']['ran_on']}; "
            f"{c['extract']['engine']} | {c['extract']['base_images_per_second']} | "
            f"{c['train']['median_epoch_seconds']:.1f} | "
            f"{c['finetune']['median_epoch_seconds']:.1f} | {accuracy} |")
    lines.append("")
    cells = {(c["precision"], c["devices"]): c for c in results["cells"]}
    one = results["device_counts"][0]
    base, mixed = cells.get(("float32", one)), cells.get((results["precisions"][-1], one))
    if base and mixed and mixed is not base:
        for command in ("train", "finetune"):
            ratio = (base[command]["median_epoch_seconds"]
                     / mixed[command]["median_epoch_seconds"])
            target = (f" (target on a GPU: >= {TARGET_MIXED_SPEEDUP}x)"
                      if command == "finetune" and results["gpus"] else "")
            lines.append(f"- {command}: {mixed['precision']} is {ratio:.2f}x float32's speed"
                         f"{target}; val accuracy {mixed[command]['val_accuracy']:.2%} against "
                         f"{base[command]['val_accuracy']:.2%}.")
    if results["gpus"]:
        for c in results["cells"]:
            ceiling = min(limits[c["precision"]], limits["decode"])
            got = c["extract"]["base_images_per_second"] or 0
            lines.append(f"- extract, {c['precision']} on {c['devices']} device(s): base pass "
                         f"{got:.0f} images/s = {got / ceiling:.0%} of the lower limit "
                         f"({ceiling:.0f}; target >= {TARGET_EXTRACT_SHARE:.0%}).")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    found = probe()
    if found["gpus"]:
        precisions = ["float32", "mixed_float16"]
        device_counts = ["1"] + (["all"] if found["gpus"] > 1 else [])
        print(f"GPUs: {found['gpus']} ({', '.join(found['names'])})", flush=True)
    else:
        precisions, device_counts = ["float32", "mixed_bfloat16"], ["auto"]
        print("no GPU: measuring this CPU's float32 against mixed_bfloat16", flush=True)
    results = {"date": time.strftime("%Y-%m-%d"), "epochs": args.epochs, "gpus": found["gpus"],
               "gpu_names": found["names"], "precisions": precisions,
               "device_counts": device_counts, "cells": []}
    out = timed([PYTHON, "-c", LIMITS, DATA, ",".join(precisions)], cwd=ROOT)
    results["limits"] = json.loads(out["output"].strip().splitlines()[-1])
    print(json.dumps(results["limits"]), flush=True)
    work = Path(tempfile.mkdtemp(prefix="smallcnn-bench-devices-"))
    try:
        for devices in device_counts:
            for precision in precisions:
                results["cells"].append(cell(work, precision, devices, args.epochs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
