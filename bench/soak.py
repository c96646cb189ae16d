"""Soak: `smallcnn serve` under a minute of ordinary and hostile clients (issue 26).

A run (smallcnn extract of ants-bees, --base mobilenet_v2) serves in its own process on
127.0.0.1. CLIENTS threads each send, for --seconds and at most --requests in all, a
seeded random mix of KINDS: good images (one, several, a raw body; photos and the odd
but readable files of tools/corpus.py), the corpus's damaged files, a BOMB_SIDE-square
RGBA PNG (above --max-pixels), a body above --max-upload-mb, more files than --max-files,
malformed multipart bodies, a wrong content type, bad ?top_k=, and Grad-CAMs. A thread of
its own polls /health every HEALTH_EVERY s; another reads the server's VmRSS and VmHWM.

Pass (`failures`): no 5xx but a 503 with Retry-After (a full queue or --max-gradcam,
counted); every good image's probabilities those of `smallcnn predict --json` on the same
file within TOLERANCE; every refusal `{"detail": "one line"}` with the status that
docs/serve.md gives; /health 200 within HEALTH_SECONDS at every poll; the server's peak
memory (VmHWM) under PEAK_MB; no traceback in its log; it exits 0 on SIGTERM.

    .venv/bin/python bench/soak.py [--model RUN] [--seconds 60] [--clients 8]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import SHARED, load_results, save_results, smallcnn  # noqa: E402
from smallcnn.serve import ServeSettings  # noqa: E402
from smallcnn.serve.settings import option  # noqa: E402
from tools.soak import HEALTH_EVERY, failures, run_soak  # noqa: E402
from tools.soak_requests import (TOLERANCE, corpus_files, expected_probabilities,  # noqa: E402
                                 materials)

RESULTS = ROOT / "bench" / "results" / "soak.json"
DATASET = "ants-bees"
BASE = "mobilenet_v2"


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    missed = results.get("failures", [])
    lines = ["## Soak: hostile and ordinary clients at once", "",
             f"bench/soak.py ({results['date']}): `smallcnn serve` of a {DATASET} extract run "
             f"(`--base {BASE}`, engine: {results['engine']}) on 127.0.0.1, "
             f"{results['clients']} client threads for {results['seconds']:g} s after one "
             f"Grad-CAM alone ({results['requests']:,} requests in "
             f"{results['wall_seconds']:.0f} s), each sending a seeded random mix; /health "
             f"polled every {HEALTH_EVERY} s throughout (bound {results['health_seconds']:g} s). "
             "Limits: " + ", ".join(f"{option(k)} {v:,}" if isinstance(v, int) else
                                    f"{option(k)} {v:g}" for k, v in results["limits"].items())
             + f". Server peak memory (VmHWM) {results['peak_mb']:.0f} MB (bound "
             f"{results['peak_bound_mb']} MB); "
             f"{results['busy']} answers 503 with Retry-After (busy, allowed); "
             f"{results['tracebacks']} tracebacks in its log; exit status "
             f"{results['exit_status']} on SIGTERM. "
             + ("Passed: no 5xx, every good image's probabilities within "
                f"{TOLERANCE:g} of `smallcnn predict --json`, every refusal one line of JSON "
                "with the status docs/serve.md gives." if not missed
                else "FAILED: " + "; ".join(missed)), "",
             "| kind | requests | statuses | p50 ms | p95 ms | max ms | wrong answers |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        statuses = ", ".join(f"{s}: {n}" for s, n in row["statuses"].items())
        lines.append(f"| {row['kind']} | {row['count']} | {statuses} | {row['p50_ms']:.0f} | "
                     f"{row['p95_ms']:.0f} | {row['max_ms']:.0f} | {row['problems']} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a run to serve (default: extract one)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20_000, help="the most sent in all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = SHARED / DATASET
    with tempfile.TemporaryDirectory(prefix="smallcnn-soak-") as folder:
        work = Path(folder)
        env = {"SMALLCNN_CACHE": str(work / "cache")}
        model = args.model
        if model is None:
            model = work / "run"
            smallcnn("extract", data, "--base", BASE, "--out", model, env=env)
        photos = sorted((data / "val").rglob("*.jpg"))
        readable, broken = corpus_files(work / "corpus")
        good = [*photos, *readable]
        classes = len(json.loads((model / "smallcnn.json").read_text())["class_names"])
        settings = ServeSettings()
        m = materials(good, broken, settings, classes)

        def predicted():
            done = smallcnn("predict", *good, "--model", model, "--json", "--top-k", classes,
                            env=env)
            return expected_probabilities(json.loads(done["output"]))

        results = run_soak(model, settings, m, predicted, work / "server.log", args.clients,
                           args.seconds, args.requests, env, args.seed)
    results["failures"] = failures(results)
    save_results(RESULTS, results, summary)
    if results["failures"]:
        raise SystemExit("soak failed: " + "; ".join(results["failures"]))


if __name__ == "__main__":
    main()
