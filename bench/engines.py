"""The frozen base's engines (issue 29): LiteRT float32 against OpenVINO float32, bfloat16
and int8, on this CPU.

- forward: images/s of the frozen base's forward pass (efficientnet_b0, mobilenet_v2, the
  cache's own .tflite conversion), the engines ALTERNATING in one process for --rounds
  rounds over the same decoded cats-dogs-small images, batches of 32; ratios of medians
  against LiteRT, and the least cosine of each engine's features against LiteRT's. Int8 is
  NNCF's post-training quantization of the OpenVINO model (calibrated on --calibration
  training images), where nncf is installed; it is measured, not shipped.
- parity: on each bench set, `smallcnn extract` (default base) with --engine litert and
  with auto: their test (else val) accuracy; `smallcnn predict --json` of that split with
  the auto run, under SMALLCNN_ENGINE=litert and auto: how many labels agree; and the auto
  run's head on int8 features of the split (accuracy, labels agreeing with LiteRT's).
- cold: wall time of a cold `smallcnn extract` of cats-dogs-small (default base, a fresh
  SMALLCNN_CACHE each), --engine litert and auto alternating, --rounds times.
- predict: `smallcnn predict` of cats-dogs-small's test folder with the auto run, under
  SMALLCNN_ENGINE=litert and auto alternating: images/s over the whole command.

  Also, in one process, each run's head (the LiteRT run's and the auto run's) on each
  engine's features: its labels against the same head's on LiteRT's (the engine's own
  parity), and the auto run on bf16 against the LiteRT run on LiteRT (two runs).

    .venv/bin/python bench/engines.py [--parts forward parity cold predict] [--rounds 3]
        [--datasets ants-bees cats-dogs-small food101-10]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, load_results, save_results, smallcnn  # noqa: E402
from smallcnn.inference.second_look import MARGIN  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "engines.json"
PARTS = ("forward", "parity", "cold", "predict")
BASES = ("efficientnet_b0", "mobilenet_v2")
DATASETS = ("ants-bees", "cats-dogs-small", "food101-10")
SPEED_TARGETS = {"efficientnet_b0": 1.5, "mobilenet_v2": 1.7}  # x LiteRT's images/s
COLD_TARGET = 0.7  # x LiteRT's wall time
PREDICT_TARGET = 1.4  # x LiteRT's images/s
AGREEMENT_TARGET = 0.995  # predict's labels, OpenVINO against LiteRT
FORWARD_IMAGES = 128
BATCH = 32


def base_conversion(name):
    """The cache's .tflite conversion of a base (ImageNet weights, default size), made
    where it is missing, as extract makes it."""
    from smallcnn.model.bases import build_base, get_base
    from smallcnn.runtime import cache
    from smallcnn.runtime.engine import feature_engine
    from smallcnn.runtime.litert import litert_name

    spec = get_base(name)
    size = spec.default_size

    def extractor():
        from smallcnn.model.networks import feature_extractor

        return feature_extractor(spec, build_base(spec, size, "imagenet"), size)

    feature_engine(spec, "imagenet", size, extractor, "litert")
    return cache.path("engines", litert_name(spec, "imagenet", size)), size


def sample_images(count, size, split="train", seed=0, dataset="cats-dogs-small"):
    """`count` images of a bench set's `split`, decoded at `size`."""
    from smallcnn.data.images import load_images
    from smallcnn.inference.classifier import expand_paths

    paths = expand_paths([SHARED / dataset / split])
    chosen = np.random.default_rng(seed).choice(len(paths), min(count, len(paths)),
                                                replace=False)
    return load_images([paths[i] for i in sorted(chosen)], size)[0]


def int8_engine(path, size, calibration):
    """The .tflite model quantized by NNCF (int8 weights and activations), in OpenVINO;
    None where nncf is not installed."""
    try:
        import nncf
    except ImportError:
        return None
    import openvino as ov

    from smallcnn.runtime.openvino import OpenVINOEngine

    model = ov.Core().read_model(str(path))
    model.reshape([1, size, size, 3])
    samples = [image[None].astype(np.float32) for image in calibration]
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    folder = Path(tempfile.mkdtemp(prefix="engines-int8-"))
    ov.save_model(quantized, str(folder / "int8.xml"))
    engine = OpenVINOEngine(folder / "int8.xml", "bfloat16")  # what is not int8 runs bf16
    engine.precision = "int8"
    return engine


def engines_of(path, size, calibration_count, dataset="cats-dogs-small"):
    from smallcnn.runtime.litert import LiteRTEngine
    from smallcnn.runtime.openvino import OpenVINOEngine

    engines = {"litert float32": LiteRTEngine(path),
               "openvino float32": OpenVINOEngine(path, "float32"),
               "openvino bfloat16": OpenVINOEngine(path, "bfloat16")}
    if calibration_count:
        int8 = int8_engine(path, size, sample_images(calibration_count, size, seed=1,
                                                     dataset=dataset))
        if int8 is not None:
            engines["openvino int8"] = int8
    return engines


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def forward(rounds, calibration_count):
    from smallcnn.runtime.engine import compute_features

    cells = []
    for name in BASES:
        path, size = base_conversion(name)
        images = sample_images(FORWARD_IMAGES, size)
        engines = engines_of(path, size, calibration_count)
        speeds = {label: [] for label in engines}
        features = {label: compute_features(e, images[:BATCH]) for label, e in engines.items()}
        labels = list(engines)
        for round_ in range(rounds):
            for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
                started = time.perf_counter()
                compute_features(engines[label], images, BATCH)
                speeds[label].append(len(images) / (time.perf_counter() - started))
        litert = statistics.median(speeds["litert float32"])
        for label in labels:
            median = statistics.median(speeds[label])
            cells.append({"base": name, "engine": label, "images_per_second": speeds[label],
                          "median": median, "ratio": median / litert,
                          "min_cosine": float(cosines(features[label],
                                                      features["litert float32"]).min())})
            print(json.dumps({k: v for k, v in cells[-1].items()
                              if k != "images_per_second"}), flush=True)
        del engines
    return cells


def evaluation_split(data):
    return next(data / split for split in ("test", "val", "validation") if (data / split).is_dir())


def predicted_labels(model, folder, env):
    run = smallcnn("predict", folder, "--model", model, "--json", env=env)
    rows = json.loads(run["output"])
    return {row["path"]: row["label"] for row in rows}, rows[0]["engine"], run


def parity(work, calibration_count, datasets=DATASETS):
    env = {"SMALLCNN_CACHE": str(work / "cache")}
    cells = []
    for name in datasets:
        data = SHARED / name
        runs = {}
        for engine in ("litert", "auto"):
            out = work / f"{name}-{engine}"
            smallcnn("extract", data, "--engine", engine, "--out", out, env=env)
            runs[engine] = json.loads((out / "metrics.json").read_text())
        split = evaluation_split(data)
        metric = "test_accuracy" if "test_accuracy" in runs["litert"] else "val_accuracy"
        model = work / f"{name}-auto"
        litert, _, _ = predicted_labels(model, split, {**env, "SMALLCNN_ENGINE": "litert"})
        auto, auto_engine, _ = predicted_labels(model, split, env)
        agree = sum(litert[p] == auto[p] for p in litert) / len(litert)
        cell = {"dataset": name, "metric": metric, "images": len(litert),
                "litert_accuracy": runs["litert"][metric], "auto_accuracy": runs["auto"][metric],
                "auto_engine": [runs["auto"]["engine"], runs["auto"].get("engine_precision")],
                "predict_agreement": agree, "predict_engine": auto_engine}
        cell["heads"] = heads_agreement(work / f"{name}-litert", model, split, env)
        if calibration_count:
            cell.update(int8_parity(model, split, env, calibration_count))
        cells.append(cell)
        print(json.dumps(cell), flush=True)
    return cells


def _head_inputs(run, split):
    """A run's head (its weights and the input it reads of the features), and its
    evaluation split's images and labels."""
    from smallcnn.data.dataset import find_dataset
    from smallcnn.model import modelfile
    from smallcnn.model.taps import HeadInput

    config = json.loads((run / "smallcnn.json").read_text())
    route = config["prediction"]
    weights = modelfile.read_head_weights(run / "model.keras", route["head_datasets"])
    head_input = HeadInput.from_dict(route.get("head_input")) or (lambda features: features)
    found = find_dataset(split.parent)
    truth = found.splits.get("test") or found.val
    return config, (weights, head_input), truth


def heads_agreement(litert_run, auto_run, split, env):
    """Each run's head on each engine's features of `split` (in this process): how many
    labels agree with the same head on LiteRT float32's (the engine's parity, heads fixed),
    bf16 with its close calls made again in float32 (`second_look.looked_again`, as predict does),
    and the auto run on bf16 against the LiteRT run on LiteRT (two runs: heads differ too)."""
    from smallcnn.data.images import load_images
    from smallcnn.inference.second_look import close_calls, looked_again
    from smallcnn.model import head
    from smallcnn.runtime.litert import LiteRTEngine
    from smallcnn.runtime.openvino import OpenVINOEngine

    os.environ.update(env)
    config, _, truth = _head_inputs(auto_run, split)
    path, size = base_conversion(config["settings"]["base"])
    images = load_images(truth.paths, size)[0]
    features = {"litert float32": LiteRTEngine(path)(images),
                "openvino float32": OpenVINOEngine(path, "float32")(images),
                "openvino bfloat16": OpenVINOEngine(path, "bfloat16")(images)}
    labels, close = {}, {}
    for run_name, run in (("litert run", litert_run), ("auto run", auto_run)):
        weights, head_input = _head_inputs(run, split)[1]
        found = {engine: head.probabilities(weights, head_input(x))
                 for engine, x in features.items()}
        close[run_name] = close_calls(found["openvino bfloat16"])
        # (predict's second look runs LiteRT float32)
        looked = looked_again(found["openvino bfloat16"],
                              lambda rows: found["litert float32"][rows])
        labels[run_name] = {**{engine: p.argmax(1) for engine, p in found.items()},
                            "openvino bfloat16 second look": looked.argmax(1)}
    same = {f"{run_name} {engine}": float((found == by_engine["litert float32"]).mean())
            for run_name, by_engine in labels.items() for engine, found in by_engine.items()
            if engine != "litert float32"}
    same["two runs"] = float((labels["auto run"]["openvino bfloat16"] ==
                              labels["litert run"]["litert float32"]).mean())
    same["auto run close calls"] = float(close["auto run"].mean())
    return same


def int8_parity(model, split, env, calibration_count):
    """The auto run's head on int8 features of `split`: accuracy, and labels agreeing with
    the head on LiteRT's features."""
    from smallcnn.data.images import load_images
    from smallcnn.model import head

    os.environ.update(env)
    config, (weights, head_input), truth = _head_inputs(model, split)
    path, size = base_conversion(config["settings"]["base"])
    engines = engines_of(path, size, calibration_count, split.parent.name)  # its own images
    if "openvino int8" not in engines:
        return {}
    images = load_images(truth.paths, size)[0]
    labels = {label: head.probabilities(weights, head_input(engines[label](images))).argmax(1)
              for label in ("litert float32", "openvino int8")}
    return {"int8_accuracy": float((labels["openvino int8"] == truth.labels).mean()),
            "int8_litert_head_accuracy": float((labels["litert float32"] == truth.labels).mean()),
            "int8_agreement": float((labels["openvino int8"] == labels["litert float32"]).mean())}


def cold(work, rounds):
    data = SHARED / "cats-dogs-small"
    cells = []
    for round_ in range(rounds):
        for engine in (("litert", "auto") if round_ % 2 == 0 else ("auto", "litert")):
            cache = Path(tempfile.mkdtemp(prefix="cold-", dir=work))
            run = smallcnn("extract", data, "--engine", engine, "--out", cache / "run",
                           env={"SMALLCNN_CACHE": str(cache / "cache")})
            metrics = json.loads((cache / "run" / "metrics.json").read_text())
            cells.append({"engine": engine, "wall_seconds": run["wall_seconds"],
                          "peak_mb": run["peak_mb"],
                          "said": f"{metrics['engine']} {metrics.get('engine_precision')}"})
            print(json.dumps(cells[-1]), flush=True)
    return cells


def predict(work, rounds):
    env = {"SMALLCNN_CACHE": str(work / "cache")}
    data = SHARED / "cats-dogs-small"
    model = work / "cats-dogs-small-auto"
    if not model.is_dir():
        smallcnn("extract", data, "--out", model, env=env)
    folder = evaluation_split(data)
    cells = []
    for round_ in range(rounds):
        for engine in (("litert", "auto") if round_ % 2 == 0 else ("auto", "litert")):
            labels, said, run = predicted_labels(model, folder,
                                                 {**env, "SMALLCNN_ENGINE": engine})
            cells.append({"engine": engine, "said": said, "images": len(labels),
                          "images_per_second": len(labels) / run["wall_seconds"],
                          "wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"]})
            print(json.dumps(cells[-1]), flush=True)
    return cells


def load():
    return load_results(RESULTS)


def _median(cells, engine, key):
    return statistics.median(c[key] for c in cells if c["engine"] == engine)


def _met(value, target, above=True):
    return "met" if (value >= target if above else value <= target) else "not met"


def summary(results):
    if not results:
        return []
    lines = ["## The frozen base's engines", "",
             f"bench/engines.py ({results.get('date')}; rounds: "
             f"{', '.join(f'{k} {v}' for k, v in results.get('rounds', {}).items())}): "
             "LiteRT float32 against OpenVINO. `--engine auto` runs OpenVINO in the CPU's "
             "best precision (bf16 on this CPU's AMX; `openvino.best_precision`), and "
             "predictions look at their close calls again in float32 (`second_look`); "
             "each part says what its auto ran. Engines "
             "alternate in one run; ratios are of medians. Other work shared the 2 cores "
             "while it ran: absolute figures are low and noisy, the ratios are the measure.",
             ""]
    lines += _forward_lines(results.get("forward"))
    lines += _parity_lines(results.get("parity"))
    for part, label, key, target, above in (
            ("cold", "Cold `extract` of cats-dogs-small (default base, empty cache)",
             "wall_seconds", COLD_TARGET, False),
            ("predict", "`predict` of cats-dogs-small's test folder (1,000 images, whole "
             "command)", "images_per_second", PREDICT_TARGET, True)):
        cells = results.get(part)
        if not cells:
            continue
        litert, auto = _median(cells, "litert", key), _median(cells, "auto", key)
        ratio = auto / litert
        lines += [f"{label}: LiteRT {litert:.1f}, auto {auto:.1f} {key.replace('_', ' ')} "
                  f"(medians of {len(cells) // 2}); {ratio:.2f}x, target "
                  f"{'>=' if above else '<='} {target}x: {_met(ratio, target, above)}. Peak "
                  f"memory {_median(cells, 'litert', 'peak_mb'):.0f} MB LiteRT, "
                  f"{_median(cells, 'auto', 'peak_mb'):.0f} MB auto (no higher: "
                  f"{_memory_met(cells)})." + _auto_ran(cells), ""]
    return lines


def _auto_ran(cells):
    said = next((c["said"] for c in cells if c["engine"] == "auto" and c.get("said")), None)
    return f" Auto ran: {said}." if said else ""


def _memory_met(cells):
    """Whether auto's median peak is no higher than LiteRT's (within 1 MB)."""
    return _met(_median(cells, "litert", "peak_mb") + 1, _median(cells, "auto", "peak_mb"))


def _forward_lines(cells):
    if not cells:
        return []
    lines = ["Forward pass of the frozen base (images/s, batches of 32, 128 images a round):",
             "", "| base | engine | images/s (median) | x LiteRT | target | least cosine |",
             "|---|---|---|---|---|---|"]
    for cell in cells:
        target = SPEED_TARGETS[cell["base"]] if cell["engine"] == "openvino bfloat16" else None
        shown = f">= {target}x: {_met(cell['ratio'], target)}" if target else ""
        lines.append(f"| {cell['base']} | {cell['engine']} | {cell['median']:.1f} | "
                     f"{cell['ratio']:.2f}x | {shown} | {cell['min_cosine']:.4f} |")
    return lines + [""]


def _parity_lines(cells):
    if not cells:
        return []
    lines = ["Parity (default base): extract's accuracy with each engine, and `predict`'s "
             "labels of the auto run under LiteRT and auto (target: accuracy within one "
             f"image, labels >= {AGREEMENT_TARGET:.1%} the same); int8: the auto run's head on "
             "NNCF int8 features.", "",
             "| data set | split images | LiteRT accuracy | auto accuracy | labels the same | "
             "int8 accuracy | int8 labels the same |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        within = abs(c["auto_accuracy"] - c["litert_accuracy"]) * c["images"] <= 1 + 1e-9
        int8 = (f"{c['int8_accuracy']:.4f} (LiteRT head {c['int8_litert_head_accuracy']:.4f}) | "
                f"{c['int8_agreement']:.2%}") if "int8_accuracy" in c else "- | -"
        agree = _met(c["predict_agreement"], AGREEMENT_TARGET)
        lines.append(f"| {c['dataset']} | {c['images']} | {c['litert_accuracy']:.4f} | "
                     f"{c['auto_accuracy']:.4f} ({'within' if within else 'NOT within'} one "
                     f"image) | {c['predict_agreement']:.2%} ({agree}) | {int8} |")
    lines += _heads_lines(cells)
    int8 = [c["int8_agreement"] for c in cells if "int8_agreement" in c]
    if int8:
        verdict = ("parity holds" if min(int8) >= AGREEMENT_TARGET else
                   "parity does not hold, so int8 is not offered as an option")
        lines += ["", f"Int8 labels the same as LiteRT's on {min(int8):.2%} to {max(int8):.2%} "
                  f"of the images: {verdict}."]
    return lines + [""]


HEADS = ("auto run openvino bfloat16", "auto run openvino bfloat16 second look",
         "auto run openvino float32", "litert run openvino bfloat16",
         "litert run openvino bfloat16 second look", "litert run openvino float32", "two runs")


def _heads_lines(cells):
    """The engine's parity with the heads fixed: labels the same as the same head's on
    LiteRT float32 features; and two runs' labels (each head on its own engine)."""
    cells = [c for c in cells if "heads" in c]
    if not cells:
        return []
    lines = ["", "Labels the same as LiteRT float32's with the same head (each run's head on "
             "each engine's features of the split, in one process), and across the two runs "
             "(the auto run on bf16 against the LiteRT run on LiteRT: their heads differ "
             f"too); target >= {AGREEMENT_TARGET:.1%}:", "",
             "| data set | " + " | ".join(HEADS) + " |", "|---|" + "---|" * len(HEADS)]
    for c in cells:
        lines.append(f"| {c['dataset']} | " + " | ".join(
            f"{c['heads'][k]:.2%} ({round((1 - c['heads'][k]) * c['images'])} differ)"
            if k in c["heads"] else "-" for k in HEADS) + " |")
    looked = [c for c in cells if "auto run close calls" in c["heads"]]
    if looked:
        lines += ["", "Second look: bf16 predictions whose top two classes are within "
                  f"{MARGIN} in log-probability are made again in float32 "
                  "(`inference.second_look`); the auto run's share of such close calls: " +
                  ", ".join(f"{c['dataset']} {c['heads']['auto run close calls']:.1%}"
                            for c in looked) + "."]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=300,
                        help="training images that calibrate int8 (0: no int8)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS),
                        help="the bench sets of parity (the others keep their cells)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-engines-"))
    results = {**load(), "date": time.strftime("%Y-%m-%d")}
    if not isinstance(results.get("rounds"), dict):  # recorded by part
        results["rounds"] = {"forward": results["rounds"]} if "rounds" in results else {}
    for part in args.parts:
        results["rounds"][part] = args.rounds
        if part == "forward":
            results[part] = forward(args.rounds, args.calibration)
        elif part == "parity":
            fresh = {c["dataset"]: c for c in parity(work, args.calibration, args.datasets)}
            kept = {c["dataset"]: c for c in results.get(part) or []}
            # A data set measured again replaces its cell (int8's figures stay where int8
            # was not measured again: --calibration 0).
            results[part] = [{**kept.get(name, {}), **fresh[name]} if name in fresh else
                             kept[name] for name in DATASETS if name in fresh or name in kept]
        elif part == "cold":
            results[part] = cold(work, args.rounds)
        else:
            results[part] = predict(work, args.rounds)
        save_results(RESULTS, results, summary)  # after each part: a failure keeps them


if __name__ == "__main__":
    main()
