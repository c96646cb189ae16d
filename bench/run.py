"""smallcnn against the hand-written Keras recipe, and against the machine's limit.

For each data set, in one run, alternating the tools (see bench/peer.py for the peer):
  limit      the base's forward pass alone on decoded images (TensorFlow and LiteRT)
  extract    peer: ImageDataGenerator + conv_base.predict + Flatten head (30 epochs)
             smallcnn extract, cold (empty caches), then warm (feature cache filled)
  frozen     peer: frozen base, ImageDataGenerator augmentation, E epochs
             smallcnn train --freeze, E epochs (no early stop)
  finetune   peer: E frozen + E fine-tuning epochs; smallcnn finetune, the same
  predict    one image in a fresh process (from the extract and the train run) against
             `python -c "import tensorflow"`; folders of 100 and 1,000 images
             (throughput beyond start-up = 900 images over the difference in wall time),
             alternating with the engine alone on the same images decoded in memory
  scaling    (cats-dogs-small) extract at 1x, 2x and 4x the training set, by repetition
Wall time and peak memory of every command come from /usr/bin/time.

    .venv/bin/python bench/run.py [--datasets ants-bees cats-dogs-small] [--epochs 2]

Prints a table per data set and records it in bench/results/<data set>.json;
bench/report.py writes docs/benchmarks.md from those (and the other benches').
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

from bench.common import (BASE, PYTHON, ROOT, SHARED, peer, run_metrics, smallcnn,  # noqa: E402
                          timed)

DATASETS = ("ants-bees", "cats-dogs-small")
EPOCHS = 2


def limit(data):
    """Images/s of the bare forward pass on decoded images: TensorFlow and LiteRT."""
    code = f"""
import json, os, time, tempfile
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
from pathlib import Path
from smallcnn.model.bases import build_base, get_base
from smallcnn.model.networks import feature_extractor
from smallcnn.data.images import load_images
from smallcnn.runtime.litert import LiteRTEngine, convert_to_litert
paths = sorted(str(p) for p in Path({str(data)!r}).rglob("*.jpg"))[:256]
images, _ = load_images(paths, 224)
x = images.astype("float32")
spec = get_base("mobilenet_v2"); extractor = feature_extractor(spec, build_base(spec, 224, "imagenet"), 224)
run = tf.function(lambda b: extractor(b, training=False), reduce_retracing=True)
result = {{}}
for batch in (32, 64, 128):
    run(x[:batch]); start = time.perf_counter()
    for i in range(0, len(x), batch): run(x[i:i + batch]).numpy()
    result[f"tensorflow_batch{{batch}}"] = len(x) / (time.perf_counter() - start)
path = Path(tempfile.mkdtemp()) / "base.tflite"; convert_to_litert(extractor, path)
for micro in (1, 2, 8, 32):
    engine = LiteRTEngine(path); engine.micro_batch = micro; engine(x[:micro])
    start = time.perf_counter()
    for i in range(0, len(x), 32): engine(x[i:i + 32])
    result[f"litert_batch{{micro}}"] = len(x) / (time.perf_counter() - start)
print(json.dumps(result))
"""
    out = timed([PYTHON, "-c", code], cwd=ROOT)
    return json.loads(out["output"].strip().splitlines()[-1])


def engine_limit(folder, model, env):
    """Images/s of the forward pass that `predict` runs, on the folder's images decoded
    into memory: the LiteRT conversion that the run `model` predicts with, one image and
    two images at a time (the best of the two)."""
    code = f"""
import json, time
from pathlib import Path
from smallcnn.runtime.litert import LiteRTEngine
from smallcnn.runtime import cache
from smallcnn.data.images import load_images
route = json.loads(Path({str(model)!r}, "smallcnn.json").read_text())["prediction"]
paths = sorted(str(p) for p in Path({str(folder)!r}).iterdir())
x = load_images(paths, 224)[0].astype("float32")
result = {{}}
for micro in (1, 2):
    engine = LiteRTEngine(cache.path("engines", route["feature_engine"]))
    engine.micro_batch = micro; engine(x[:micro])
    start = time.perf_counter(); engine(x)
    result[f"litert_batch{{micro}}"] = len(x) / (time.perf_counter() - start)
print(json.dumps(result))
"""
    out = timed([PYTHON, "-c", code], env=env, cwd=ROOT)
    return max(json.loads(out["output"].strip().splitlines()[-1]).values())


def predict(data, model, work, env):
    """predict from a fresh process: one image, then folders of 100 and 1,000 images."""
    images = sorted((data / ("val" if (data / "val").is_dir() else "validation")).rglob("*.jpg"))
    folders = {}
    for count in (100, 1000):  # a folder of the first `count` validation images (fewer if fewer)
        folders[count] = work / f"predict-{count}"
        folders[count].mkdir()
        for image in images[:count]:
            (folders[count] / f"{image.parent.name}-{image.name}").symlink_to(image)
    imports = [timed([PYTHON, "-c", "import tensorflow"])["wall_seconds"] for _ in range(3)]
    # A fresh process on one image, from the extract run and from the train --freeze run.
    single = [smallcnn("predict", images[0], "--model", model, env=env)["wall_seconds"]
              for _ in range(3)]
    single_train = [smallcnn("predict", images[0], "--model", work / "train",
                             env=env)["wall_seconds"] for _ in range(3)]
    smallcnn("predict", folders[100], "--model", model, "--json", env=env)  # warms the file cache
    hundred, many, engine = [], [], []
    # Alternating; throughput = the extra images over the extra time. The machine's speed
    # drifts from minute to minute, so the engine's own throughput on the same images
    # is measured in between, and predict is compared with the median of those.
    for _ in range(5):
        engine.append(engine_limit(folders[1000], model, env))
        hundred.append(smallcnn("predict", folders[100], "--model", model, "--json", env=env))
        many.append(smallcnn("predict", folders[1000], "--model", model, "--json", env=env))
    small_n, large_n = len(images[:100]), len(images[:1000])
    small_s = statistics.median(r["wall_seconds"] for r in hundred)
    large_s = statistics.median(r["wall_seconds"] for r in many)
    return {
        "import_tensorflow_seconds": min(imports), "one_image_seconds": min(single),
        "one_image_train_run_seconds": min(single_train),
        "folder_images": large_n, "folder_seconds": large_s,
        "small_folder_images": small_n, "small_folder_seconds": small_s,
        "images_per_second": (large_n - small_n) / max(1e-9, large_s - small_s),
        "folder_peak_mb": max(r["peak_mb"] for r in many),
        "engine_images_per_second": engine, "engine_limit": statistics.median(engine)}


def repeated(source, times, work):
    """A copy of `source` whose train split repeats each image `times` times (symlinks)."""
    target = work / f"x{times}"
    for split in source.iterdir():
        if not split.is_dir():
            continue
        for cls in split.iterdir():
            folder = target / split.name / cls.name
            folder.mkdir(parents=True)
            for image in cls.iterdir():
                copies = times if split.name == "train" else 1
                for k in range(copies):
                    (folder / f"r{k}-{image.name}").symlink_to(image)
    return target


def bench(name, epochs, work, scaling):
    data = SHARED / name
    cache = work / "cache"
    env = {"SMALLCNN_CACHE": str(cache)}
    result = {"data set": name, "epochs": epochs}
    print(f"== {name}", flush=True)
    result["limit"] = limit(data)
    print("limit", result["limit"], flush=True)

    result["peer_extract"] = peer("extract", data, 30, work)
    # The machine's speed drifts over a half-hour run (by 15% or more here), so each
    # throughput is also compared with the limit measured just before it.
    result["limit_before_extract"] = limit(data)
    shutil.rmtree(cache, ignore_errors=True)
    cold = smallcnn("extract", data, *BASE, "--out", work / "extract-cold", env=env)
    result["smallcnn_extract"] = {**cold, **run_metrics(work / "extract-cold")}
    warm = smallcnn("extract", data, *BASE, "--out", work / "extract-warm", env=env)
    result["smallcnn_extract_warm"] = {**warm, **run_metrics(work / "extract-warm")}
    print("extract done", flush=True)

    result["peer_frozen"] = peer("frozen", data, epochs, work)
    same = ["--batch-size", "20"]  # the peer's batch size
    run = smallcnn("train", "--freeze", data, *BASE, "--epochs", epochs, "--patience", epochs, *same,
                   "--out", work / "train", env=env)
    result["smallcnn_train"] = {**run, **run_metrics(work / "train")}
    print("train done", flush=True)

    result["peer_finetune"] = peer("finetune", data, epochs, work)
    run = smallcnn("finetune", data, *BASE, "--head-epochs", epochs, "--epochs", epochs,
                   "--patience", epochs, *same, "--out", work / "finetune", env=env)
    result["smallcnn_finetune"] = {**run, **run_metrics(work / "finetune")}
    print("finetune done", flush=True)

    result["limit_before_predict"] = limit(data)
    result["predict"] = predict(data, work / "extract-cold", work, env)
    print("predict done", flush=True)

    if scaling:
        result["scaling"] = []
        for times in (1, 2, 4):
            source = repeated(data, times, work) if times > 1 else data
            scale_cache = work / f"cache-x{times}"
            run = smallcnn("extract", source, *BASE, "--out", work / f"scale-x{times}",
                           env={"SMALLCNN_CACHE": str(scale_cache)})
            metrics = run_metrics(work / f"scale-x{times}")
            result["scaling"].append({"times": times, "train_images": metrics["train_images"],
                                      "seconds": run["wall_seconds"], "peak_mb": run["peak_mb"]})
            shutil.rmtree(scale_cache, ignore_errors=True)
        print("scaling done", flush=True)
    for value in result.values():
        if isinstance(value, dict):
            value.pop("output", None)
    return result


def mean(values):
    return statistics.mean(values) if values else float("nan")


def summary(r):
    """The table of one data set, as markdown lines."""
    lim = r["limit"]
    best_limit = max(lim.values())
    # The limit measured next to each throughput (older results have only the first).
    extract_limit = max(r.get("limit_before_extract", lim).values())
    predict_limit = max(r.get("limit_before_predict", lim).values())
    pe, se, sw = r["peer_extract"], r["smallcnn_extract"], r["smallcnn_extract_warm"]
    pf, st = r["peer_frozen"], r["smallcnn_train"]
    pft, sft = r["peer_finetune"], r["smallcnn_finetune"]
    test = "test_accuracy" in se
    acc = "test_accuracy" if test else "val_accuracy"
    peer_epoch = mean(pf["epoch_seconds"])
    ours_epoch = mean([float(h["seconds"]) for h in st["history"] if h.get("seconds")])
    p = r["predict"]
    marginal = p["images_per_second"]
    rows = [
        f"### {r['data set']}",
        "",
        "Forward-pass limit (MobileNetV2, 224 px, decoded images): "
        + ", ".join(f"{k} {v:.0f}/s" for k, v in lim.items())
        + f"; best {best_limit:.0f} images/s at the start, {extract_limit:.0f}/s just before "
        f"smallcnn's extract, {predict_limit:.0f}/s just before predict.",
        "",
        "| phase | peer (Keras recipe) | smallcnn | smallcnn / peer |",
        "|---|---|---|---|",
        f"| extract, end to end: wall s (peer: features {pe['seconds_extracting']:.1f} s + "
        f"Flatten head {pe['seconds_training']:.1f} s) | {pe['wall_seconds']:.1f} | "
        f"{se['wall_seconds']:.1f} | {pe['wall_seconds'] / se['wall_seconds']:.1f}x faster |",
        f"| extract: {acc} | {pe.get(acc, float('nan')):.2%} | {se[acc]:.2%} | "
        f"{(se[acc] - pe.get(acc, 0)) * 100:+.2f} points |",
        f"| extract: peak memory MB | {pe['peak_mb']:.0f} | {se['peak_mb']:.0f} | |",
        f"| extract: base images/s | {pe['images_through_base'] / pe['seconds_extracting']:.0f} "
        f"(decoding included) | {se['base_images_per_second'] or 0:.0f} "
        f"({(se['base_images_per_second'] or 0) / extract_limit:.0%} of the limit measured "
        f"just before) | |",
        f"| extract again, features cached: wall s (in the library, after imports) | | "
        f"{sw['wall_seconds']:.1f} ({sw['seconds']:.1f}; cold run {se['seconds']:.1f}) | "
        f"cold/warm {se['wall_seconds'] / sw['wall_seconds']:.1f}x wall, "
        f"{se['seconds'] / sw['seconds']:.1f}x in the library |",
        f"| train --freeze: s per epoch ({r['epochs']} epochs) | {peer_epoch:.1f} | "
        f"{ours_epoch:.1f} | {peer_epoch / ours_epoch:.1f}x faster |",
        f"| train --freeze: val_accuracy after {r['epochs']} epochs | {pf['val_accuracy']:.2%} | "
        f"{st['val_accuracy']:.2%} | {(st['val_accuracy'] - pf['val_accuracy']) * 100:+.2f} points |",
        f"| train --freeze: wall s, peak MB | {pf['wall_seconds']:.1f}, {pf['peak_mb']:.0f} | "
        f"{st['wall_seconds']:.1f}, {st['peak_mb']:.0f} | |",
        f"| finetune ({r['epochs']} + {r['epochs']} epochs): wall s | {pft['wall_seconds']:.1f} | "
        f"{sft['wall_seconds']:.1f} | {pft['wall_seconds'] / sft['wall_seconds']:.1f}x faster |",
        f"| finetune: val_accuracy | {pft['val_accuracy']:.2%} | {sft['val_accuracy']:.2%} | "
        f"{(sft['val_accuracy'] - pft['val_accuracy']) * 100:+.2f} points |",
        "",
        f"predict: one image in a fresh process {p['one_image_seconds']:.2f} s from the extract "
        f"run ({p['one_image_seconds'] - p['import_tensorflow_seconds']:+.2f} s against "
        f"{p['import_tensorflow_seconds']:.2f} s for `import tensorflow`)"
        + (f", {p['one_image_train_run_seconds']:.2f} s from the train --freeze run "
           f"({p['one_image_train_run_seconds'] - p['import_tensorflow_seconds']:+.2f} s). "
           if "one_image_train_run_seconds" in p else ". ") +
        f"A folder of {p['folder_images']} images {p['folder_seconds']:.1f} s wall "
        f"({p['small_folder_images']} images: {p['small_folder_seconds']:.1f} s): "
        f"{marginal:.0f} images/s beyond start-up, decoding included "
        f"({marginal / predict_limit:.0%} of the limit measured just before"
        + (f"; {marginal / p['engine_limit']:.0%} of {p['engine_limit']:.0f}/s, the median of "
           f"the same engine on the same {p['folder_images']} images decoded in memory, measured "
           "between the "
           "predict runs: " + ", ".join(f"{v:.0f}" for v in p["engine_images_per_second"])
           if "engine_limit" in p else "") + ").",
    ]
    if "scaling" in r:
        rows += ["", "| training set | images | extract wall s | peak MB |", "|---|---|---|---|"]
        rows += [f"| {s['times']}x | {s['train_images']} | {s['seconds']:.1f} | {s['peak_mb']:.0f} |"
                 for s in r["scaling"]]
    return rows


def results_path(name):
    """Where the comparison on data set NAME is recorded."""
    return ROOT / "bench" / "results" / f"{name}.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    for name in args.datasets:
        work = Path(tempfile.mkdtemp(prefix=f"smallcnn-bench-{name}-"))
        result = bench(name, args.epochs, work, scaling=name == "cats-dogs-small")
        result["date"] = time.strftime("%Y-%m-%d")
        results_path(name).parent.mkdir(parents=True, exist_ok=True)
        results_path(name).write_text(json.dumps(result, indent=2, default=str))
        print("\n".join(summary(result)), flush=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
