"""What the benches share: where things are, a command timed by /usr/bin/time (wall
seconds and peak memory), smallcnn and the peer recipe run that way, a run folder's
metrics, and each bench's recorded results (bench/results/*.json)."""

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
PYTHON = sys.executable
# The peer's base (bench/peer.py): smallcnn runs the same one here. Every bundled base on
# every data set is bench/bases.py's job.
BASE = ["--base", "mobilenet_v2"]


def timed(args, env=None, cwd=None):
    """Runs a command; returns wall seconds, peak RSS in MB, exit code and output."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        process = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", stats.name, *map(str, args)],
            env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True,
        )
        wall, peak_kb = stats.read().split()[-2:]
    if process.returncode != 0:
        print(process.stdout[-3000:], process.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"failed ({process.returncode}): {' '.join(map(str, args))}")
    return {"wall_seconds": float(wall), "peak_mb": int(peak_kb) / 1024, "output": process.stdout}


def load_results(path):
    """A bench's recorded results, or {} when it has not run."""
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path, results, summary):
    """Records a bench's results and prints its table (`summary(results)`'s lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print("\n".join(summary(results)))


def smallcnn(*args, env=None, cwd=None):
    """`python -m smallcnn ARGS`, timed."""
    return timed([PYTHON, "-m", "smallcnn", *args], env=env, cwd=cwd)


def peer(phase, data, epochs, work):
    """bench/peer.py's PHASE on DATA, timed: its own figures with the wall time and memory."""
    out = work / f"peer-{phase}.json"
    run = timed([PYTHON, ROOT / "bench" / "peer.py", phase, data, "--epochs", epochs,
                 "--out", out])
    return {**json.loads(out.read_text()), **run}


def run_metrics(run_dir):
    """A run folder's metrics.json, with its history.csv as a list of rows."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "history.csv") as f:
        metrics["history"] = list(csv.DictReader(f))
    return metrics
