"""File size, one-image latency and parity of every export format and quantization.

Trains `smallcnn extract` on the bundled sample (datasets/ants-bees, MobileNetV2 at
224 px) unless --run names a run, exports it in each format and quantization, and
prints a table; writes docs/export.md and bench/results/export.json.

    .venv/bin/python bench/export.py [--run RUN]

Latency is the median of 20 single-image calls in the format's own runtime (LiteRT,
ONNX Runtime, TensorFlow, Keras), after two warm-up calls, on this machine.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smallcnn import train  # noqa: E402
from smallcnn.inference.export import SUPPORTED, export  # noqa: E402

TABLE_HEADER = ("| format | quantize | file size | one-image latency | top-1 agreement "
                "| largest prob. difference | val accuracy |\n"
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing run to export (default: train one)")
    parser.add_argument("--data", default=str(ROOT / "datasets" / "ants-bees"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smallcnn-export-bench-"))
    run = args.run
    if run is None:
        run = train.extract(args.data, out=work / "run").run_dir
    rows = []
    for format, quantizations in SUPPORTED.items():
        for quantize in quantizations:
            result = export(run, format, quantize, out=work / "export" /
                            {"keras": "model.keras", "savedmodel": "savedmodel",
                             "tflite": f"model-{quantize}.tflite",
                             "onnx": f"model-{quantize}.onnx", "openvino": "model.xml"}[format])
            contract = json.loads(Path(result.contract_path).read_text())
            row = {**result.to_dict(), "accuracy": contract["verification"]["accuracy"]}
            rows.append(row)
            print(f"{format:10} {quantize:8} {row['size_bytes'] / 1e6:7.2f} MB "
                  f"{row['latency_ms']:7.2f} ms  agreement {row['agreement']:.2%}  "
                  f"max diff {row['max_difference']:.4f}  accuracy {row['accuracy']:.2%}",
                  flush=True)
    table = TABLE_HEADER + "".join(
        f"| {r['format']} | {r['quantize']} | {r['size_bytes'] / 1e6:.2f} MB "
        f"| {r['latency_ms']:.1f} ms | {r['agreement']:.2%} | {r['max_difference']:.4f} "
        f"| {r['accuracy']:.2%} |\n" for r in rows)
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"
    doc = (
        "# Export formats: size, latency, parity\n\n"
        "Measured by `.venv/bin/python bench/export.py` on the bundled sample "
        f"(datasets/ants-bees, {rows[0]['images']} validation images), MobileNetV2 at 224 px "
        f"trained by `smallcnn extract`; {machine}. Latency: the median of 20 calls on one "
        "image in the format's own runtime (LiteRT for tflite, ONNX Runtime for onnx, OpenVINO "
        "for openvino (float32), "
        "TensorFlow for savedmodel, Keras for keras), after two warm-up calls. Agreement and "
        "difference: against the run's Keras model on the validation images; val accuracy: "
        "of the exported model.\n\n" + table
    )
    (ROOT / "docs" / "export.md").write_text(doc)
    (ROOT / "bench" / "results" / "export.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{table}\nWrote docs/export.md and bench/results/export.json")


if __name__ == "__main__":
    main()
