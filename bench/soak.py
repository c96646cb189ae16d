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
import contextlib
import dataclasses
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import PYTHON, SHARED, load_results, save_results, smallcnn  # noqa: E402
from tools.corpus import CASES  # noqa: E402

from smallcnn.serve import ServeSettings  # noqa: E402
from smallcnn.serve.settings import option  # noqa: E402
from smallcnn.serve.uploads import NOT_AN_IMAGE  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
DATASET = "ants-bees"
BASE = "mobilenet_v2"
BOMB_SIDE = 9400  # 88 megapixels: above --max-pixels, below Pillow's own limit
TOLERANCE = 1e-5  # between a probability served and predict's for the same file
HEALTH_EVERY = 0.25  # seconds between two polls of /health
# The longest /health may take to answer, under any load: up to 2 s here while the first
# Grad-CAM imports TensorFlow (the import holds the interpreter's lock), milliseconds otherwise.
HEALTH_SECONDS = 5.0
# The server's peak memory (VmHWM): 978 and 984 MB measured here for the MobileNetV2 run,
# 750 MB for the tests' tiny one (TensorFlow loaded for Grad-CAM), with a margin of 30%.
PEAK_MB = 1280
# The limits the server is started with (the others keep their defaults).
LIMITS = ("max_upload_mb", "max_files", "max_pixels", "max_gradcam", "max_queue", "max_batch")
BUSY = 503  # a full queue or --max-gradcam: allowed with Retry-After, and counted
# Bodies that python-multipart refuses, or that hold no complete file.
MALFORMED = [
    b"not a multipart body",
    b"--SOAK\r\nbroken header line\r\n\r\nabc\r\n--SOAK--\r\n",
    b"--SOAK\r\n\x00\x01\xff\r\n\r\n",
    b'--SOAK\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\nabc',
    b"--SOAK--\r\n",
]


@dataclasses.dataclass
class Materials:
    """What the clients send: `good` and `damaged` are lists of `(name, bytes)`,
    `promised` the status of each damaged name."""

    good: list
    damaged: list
    promised: dict
    bomb: bytes
    settings: ServeSettings
    classes: int


@dataclasses.dataclass
class Sent:
    """One request: httpx's arguments, the statuses docs/serve.md promises for it, and
    the names of the good images it carries (their probabilities are checked)."""

    method: str
    path: str
    kwargs: dict
    statuses: set
    names: list = dataclasses.field(default_factory=list)


def bomb_png(side=BOMB_SIDE):
    """A `side`-square RGBA PNG of one colour: a few hundred KB that decode to side^2 * 4 bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 4), np.uint8), "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def corpus_files(folder):
    """tools/corpus.py's files written to `folder`: `(readable paths, {damaged path: status})`,
    the status docs/serve.md gives (415 for what is not an image, 422 for a damaged one)."""
    folder.mkdir(parents=True, exist_ok=True)
    readable, damaged = [], {}
    for name, filename, writer, expected in CASES:
        path = folder / f"{name}-{filename}"
        path.write_bytes(writer())
        if expected is None:
            readable.append(path)
        else:
            damaged[path] = 415 if expected.startswith(NOT_AN_IMAGE) else 422
    return readable, damaged


def materials(good, damaged, settings, classes):
    """The clients' materials from image files: `good` a list of paths (served under their
    own names, which must differ), `damaged` {path: status}."""
    return Materials(good=[(p.name, p.read_bytes()) for p in good],
                     damaged=[(p.name, p.read_bytes()) for p in damaged],
                     promised={p.name: status for p, status in damaged.items()},
                     bomb=bomb_png(), settings=settings, classes=classes)


def expected_probabilities(rows):
    """`{file name: {label: probability}}` from `smallcnn predict --json --top-k ALL`'s rows."""
    return {Path(row["path"]).name: {t["label"]: t["probability"] for t in row["top"]}
            for row in rows}


def multipart(pairs):
    return {"files": [("files", (name, data, "application/octet-stream")) for name, data in pairs]}


def good(rng, m, count=1):
    pairs = rng.sample(m.good, count)
    return Sent("POST", f"/predict?top_k={m.classes}", multipart(pairs), {200, BUSY},
                [name for name, _ in pairs])


def raw(rng, m):
    name, data = rng.choice(m.good)
    return Sent("POST", f"/predict?top_k={m.classes}&name={name}",
                {"content": data, "headers": {"content-type": "image/jpeg"}}, {200, BUSY}, [name])


def damaged(rng, m):
    name, data = rng.choice(m.damaged)
    return Sent("POST", "/predict", multipart([(name, data)]), {m.promised[name]})


def oversized(rng, m):
    """A body one byte over --max-upload-mb: with its length, or sent in chunks without."""
    size = m.settings.max_upload_bytes + 1
    chunk = 1 << 16
    body = (bytes(size) if rng.random() < 0.5 else
            (bytes(min(chunk, size - at)) for at in range(0, size, chunk)))
    return Sent("POST", "/predict", {"content": body, "headers": {"content-type": "image/png"}},
                {413})


def too_many(rng, m):
    most, _ = m.settings.files_per_request
    return Sent("POST", "/predict", multipart([min(m.good, key=lambda p: len(p[1]))] * (most + 1)),
                {413})


def malformed(rng, m):
    return Sent("POST", "/predict", {"content": rng.choice(MALFORMED), "headers": {
        "content-type": "multipart/form-data; boundary=SOAK"}}, {422})


def wrong_type(rng, m):
    _, data = rng.choice(m.good)
    # The last: multipart without its boundary.
    kind = rng.choice(["text/plain", "application/json", "multipart/form-data"])
    return Sent("POST", "/predict", {"content": data, "headers": {"content-type": kind}}, {415})


def bad_query(rng, m):
    value = rng.choice(["0", "-1", "abc", "1e3", ""])
    return Sent("POST", f"/predict?top_k={value}", multipart(rng.sample(m.good, 1)), {422})


def gradcam(rng, m):
    return Sent("POST", "/gradcam", multipart(rng.sample(m.good, 1)), {200, BUSY})


# Each kind of request, and how often it is drawn (weights).
KINDS = {
    "good image": (good, 30),
    "good images, 2 to 4": (lambda rng, m: good(rng, m, rng.randint(2, min(4, len(m.good)))), 10),
    "good image, raw body": (raw, 6),
    "damaged file": (damaged, 15),
    "bomb": (lambda rng, m: Sent("POST", "/predict", multipart([("bomb.png", m.bomb)]), {422}), 4),
    "body over --max-upload-mb": (oversized, 4),
    "files over --max-files": (too_many, 4),
    "malformed multipart": (malformed, 6),
    "wrong content type": (wrong_type, 5),
    "bad top_k": (bad_query, 6),
    "gradcam": (gradcam, 6),
}
HEALTH = "/health poll"
FIRST_GRADCAM = "first Grad-CAM, alone"


def judge(sent, answer, expected):
    """What is wrong with `answer` to `sent`, in one line, or None."""
    status = answer.status_code
    if status not in sent.statuses:
        return f"status {status} (promised {sorted(sent.statuses)}): {answer.text[:120]!r}"
    if status != 200:
        try:
            body = answer.json()
        except ValueError:
            return f"status {status} without a JSON body: {answer.text[:120]!r}"
        if not (isinstance(body, dict) and set(body) == {"detail"}
                and isinstance(body["detail"], str) and "\n" not in body["detail"]):
            return f"status {status} without one line of detail: {answer.text[:120]!r}"
        if status == BUSY and answer.headers.get("retry-after") != "1":
            return f"503 without Retry-After: {body['detail']}"
        return None
    if sent.path.startswith("/gradcam"):
        ok = (answer.headers.get("content-type") == "image/png"
              and answer.content.startswith(b"\x89PNG"))
        return None if ok else f"Grad-CAM answered {answer.headers.get('content-type')}"
    return wrong_probabilities(sent.names, answer.json(), expected)


def wrong_probabilities(names, rows, expected):
    if [row["path"] for row in rows] != names:
        return f"answered {[row['path'] for row in rows]} for {names}"
    for name, row in zip(names, rows):
        got = {t["label"]: t["probability"] for t in row["top"]}
        want = expected[name]
        if got.keys() != want.keys():
            return f"{name}: classes {sorted(got)}, predict's {sorted(want)}"
        worst = max(abs(got[label] - want[label]) for label in want)
        if worst > TOLERANCE:
            return f"{name}: a probability {worst:.2g} away from predict's"
    return None


def memory_mb(pid):
    """The process's `{"rss": MB now, "hwm": peak MB}` from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key[2:].lower()] = int(value.split()[0]) / 1024
    return fields


def client(http, rng, m, expected, stop, record):
    """Sends a random kind after another until `stop()`; records each outcome."""
    names, weights = zip(*((name, weight) for name, (_, weight) in KINDS.items()))
    while not stop():
        kind = rng.choices(names, weights)[0]
        send(http, kind, KINDS[kind][0](rng, m), expected, record)


def send(http, kind, sent, expected, record):
    import httpx

    started = time.perf_counter()
    try:
        answer = http.request(sent.method, sent.path, **sent.kwargs)
    except httpx.HTTPError as error:  # a connection the server dropped, a timeout: recorded
        record(kind, None, time.perf_counter() - started, f"{type(error).__name__}: {error}")
        return
    record(kind, answer.status_code, time.perf_counter() - started,
           judge(sent, answer, expected))


def poll_health(http, done, record):
    import httpx

    while not done.is_set():
        started = time.perf_counter()
        try:
            answer = http.get("/health", timeout=HEALTH_SECONDS)
            problem = (None if answer.status_code == 200 and answer.json() == {"status": "ready"}
                       else f"status {answer.status_code}: {answer.text[:120]!r}")
        except (httpx.HTTPError, ValueError) as error:  # no answer in time, or not JSON
            answer, problem = None, f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - started
        if problem is None and seconds > HEALTH_SECONDS:
            problem = f"answered in {seconds:.2f} s"
        record(HEALTH, answer and answer.status_code, seconds, problem)
        done.wait(HEALTH_EVERY)


def sample_memory(pid, done, memory):
    while not done.is_set():
        memory["rss"] = max(memory["rss"], memory_mb(pid)["rss"])
        done.wait(0.1)


def soak(url, pid, m, expected, clients, seconds, most, seed=0):
    """`clients` threads sending `m`'s mix to the server at `url` (process `pid`) for
    `seconds` and at most `most` requests, after one Grad-CAM alone (the first imports
    TensorFlow: FIRST_GRADCAM); /health is polled and memory sampled throughout.
    Returns `(outcomes, memory)`: `[(kind, status or None, seconds, problem or None)]` and
    `{"rss": largest MB seen, "hwm": peak MB}`."""
    import httpx

    outcomes, lock, memory, done = [], threading.Lock(), {"rss": 0.0}, threading.Event()
    sent = [0]

    def record(*outcome):
        with lock:
            outcomes.append(outcome)

    https = [httpx.Client(base_url=url, timeout=120) for _ in range(clients + 1)]
    watchers = [threading.Thread(target=poll_health, args=(https[-1], done, record)),
                threading.Thread(target=sample_memory, args=(pid, done, memory))]
    for thread in watchers:
        thread.start()
    try:
        send(https[0], FIRST_GRADCAM, gradcam(random.Random(seed), m), expected, record)
        deadline = time.monotonic() + seconds

        def stop():
            with lock:
                sent[0] += 1
                return time.monotonic() > deadline or sent[0] > most

        threads = [threading.Thread(target=client, args=(
            https[i], random.Random(seed * 1000 + i), m, expected, stop, record))
            for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        done.set()
        for thread in watchers:
            thread.join()
        for http in https:
            http.close()
    return outcomes, {**memory, "hwm": memory_mb(pid)["hwm"]}


def table(outcomes):
    """One row per kind: count, statuses, p50 and p95 latency, problems (and the first)."""
    rows = []
    for kind in [FIRST_GRADCAM, *KINDS, HEALTH]:
        mine = [o for o in outcomes if o[0] == kind]
        if not mine:
            continue
        latencies = sorted(seconds for _, _, seconds, _ in mine)
        last = len(latencies) - 1
        problems = [problem for *_, problem in mine if problem]
        statuses = {}
        for _, status, _, _ in mine:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        rows.append({"kind": kind, "count": len(mine), "statuses": dict(sorted(statuses.items())),
                     "p50_ms": 1000 * latencies[len(latencies) // 2],
                     "p95_ms": 1000 * latencies[min(last, int(len(latencies) * 0.95))],
                     "max_ms": 1000 * latencies[-1],
                     "problems": len(problems), "first_problems": problems[:3]})
    return rows


def failures(results):
    """Each pass criterion the soak missed, in one line; [] when it passed."""
    found = []
    for row in results["rows"]:
        errors = {s: n for s, n in row["statuses"].items() if s.startswith("5") and s != str(BUSY)}
        if errors:
            found.append(f"{row['kind']}: server errors {errors}")
        if row["problems"]:
            found.append(f"{row['kind']}: {row['problems']} wrong answers, "
                         f"first: {row['first_problems'][0]}")
    if not any(row["kind"] == HEALTH for row in results["rows"]):
        found.append("/health was never polled")
    if results["peak_mb"] > results["peak_bound_mb"]:
        found.append(f"the server's peak memory {results['peak_mb']:.0f} MB is above "
                     f"{results['peak_bound_mb']} MB")
    if results["tracebacks"]:
        found.append(f"{results['tracebacks']} tracebacks in the server's log")
    if results["exit_status"] != 0:
        found.append(f"the server exited with status {results['exit_status']} on SIGTERM")
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model, settings, log, env=None, wait=180):
    """`smallcnn serve MODEL` with `settings`' limits on 127.0.0.1, its output in `log`:
    yields `(url, process)` once /health answers 200; stopped with SIGTERM afterwards."""
    import httpx

    port = free_port()
    limits = [arg for name in LIMITS for arg in (option(name), str(getattr(settings, name)))]
    with open(log, "w") as out:
        server = subprocess.Popen([PYTHON, "-m", "smallcnn", "serve", str(model), "--port",
                                   str(port), *limits], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while server.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the server did not start: {Path(log).read_text()[-2000:]}")
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_soak(model, settings, m, predicted, log, clients, seconds, most, env=None, seed=0):
    """The soak of a served model, start to exit: the results `failures` judges.
    `predicted()` gives `expected_probabilities`; it is called once the server has started
    (which converts a run to LiteRT, so that predict then runs the same engine)."""
    import httpx

    with serving(model, settings, log, env) as (url, server):
        expected = predicted()
        started = time.perf_counter()
        outcomes, memory = soak(url, server.pid, m, expected, clients, seconds, most, seed)
        elapsed = time.perf_counter() - started
        engine = httpx.get(f"{url}/model").json()["engine"]
    return {"date": time.strftime("%Y-%m-%d"), "seconds": seconds, "wall_seconds": elapsed,
            "clients": clients, "requests": sum(o[0] != HEALTH for o in outcomes),
            "engine": engine, "rows": table(outcomes),
            "limits": {name: getattr(settings, name) for name in LIMITS},
            "peak_mb": memory["hwm"], "peak_bound_mb": PEAK_MB, "largest_rss_mb": memory["rss"],
            "health_seconds": HEALTH_SECONDS, "busy": sum(o[1] == BUSY for o in outcomes),
            "tracebacks": Path(log).read_text().count("Traceback"),
            "exit_status": server.returncode}


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
