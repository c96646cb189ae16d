"""The soak harness: `smallcnn serve` in a process of its own, client threads sending
tools/soak_requests.py's mix of ordinary and hostile requests, /health polled and memory
sampled throughout; `failures` says which pass criterion a run missed (bench/soak.py for a
minute, tests/test_soak.py for seconds).
"""

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from smallcnn.serve.settings import option
from tools.soak_requests import BUSY, KINDS, gradcam, judge

PYTHON = sys.executable
HEALTH_EVERY = 0.25  # seconds between two polls of /health
# The longest /health may take to answer, under any load: up to 2 s here while the first
# Grad-CAM imports TensorFlow (the import holds the interpreter's lock), milliseconds otherwise.
HEALTH_SECONDS = 5.0
# The server's peak memory (VmHWM): 978 and 984 MB measured here for the MobileNetV2 run,
# 750 MB for the tests' tiny one (TensorFlow loaded for Grad-CAM), with a margin of 30%.
PEAK_MB = 1280
# The limits the server is started with (the others keep their defaults).
LIMITS = ("max_upload_mb", "max_files", "max_pixels", "max_gradcam", "max_queue", "max_batch")
# The rows beside KINDS' in the table.
HEALTH = "/health poll"
FIRST_GRADCAM = "first Grad-CAM, alone"


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
