"""Load on `smallcnn serve`: concurrent clients posting cats-dogs-small images.

A run (smallcnn extract, --base mobilenet_v2) serves in its own process; for each number
of clients (1, 8, 32), that many clients each post one validation image per request
(multipart, round robin over the images) for --seconds, waiting for each answer before
the next. Measured: requests/s, images/s, p50/p99 latency, errors, the server's mean
batch and peak memory (VmHWM), and images/s as a fraction of `smallcnn predict`'s own
throughput on a folder, measured in the same run (the extra images of a 1,000-image
folder over a 100-image one, over the extra seconds). The clients run on the same
2 cores as the server and take some of their time.

The frozen base's engines (SMALLCNN_ENGINE: --engines, default litert and auto) ALTERNATE:
each of --rounds rounds serves under each engine in turn (the order turning each round),
and the summary compares their medians at the most clients (issue 29's target: auto
>= 1.4x LiteRT's images/s at 32 clients).

    .venv/bin/python bench/serve.py [--model RUN] [--seconds 30] [--clients 1 8 32]
        [--engines litert auto] [--rounds 1] [--skip-predict]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PYTHON, ROOT, SHARED, load_results, save_results, smallcnn  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serve.json"
DATASET = "cats-dogs-small"
BASE = "mobilenet_v2"
TARGET_FRACTION = 0.7  # of predict's throughput, at 32 clients (issue 17)
ENGINES = ("litert", "auto")  # SMALLCNN_ENGINE of the server, alternating
ENGINE_TARGET = 1.4  # auto's images/s over LiteRT's at the most clients (issue 29)


def predict_throughput(model, images, work, env):
    """Images/s of `smallcnn predict` on a folder, beyond its start-up."""
    folders = {}
    for count in (100, 1000):
        folders[count] = work / f"predict-{count}"
        folders[count].mkdir(exist_ok=True)
        for image in images[:count]:
            link = folders[count] / f"{image.parent.name}-{image.name}"
            if not link.exists():
                link.symlink_to(image)
    smallcnn("predict", folders[100], "--model", model, "--json", env=env)  # file cache, engine
    small = [smallcnn("predict", folders[100], "--model", model, "--json", env=env)["wall_seconds"]
             for _ in range(2)]
    large = [smallcnn("predict", folders[1000], "--model", model, "--json", env=env)["wall_seconds"]
             for _ in range(2)]
    extra = len(images[:1000]) - len(images[:100])
    return extra / max(1e-9, statistics.median(large) - statistics.median(small))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(url, bodies, clients, seconds):
    import httpx

    latencies, errors, images = [], [], 0
    deadline = time.perf_counter() + seconds

    async def client(index, http):
        nonlocal images
        turn = index
        while time.perf_counter() < deadline:
            name, data = bodies[turn % len(bodies)]
            turn += clients
            started = time.perf_counter()
            try:
                answer = await http.post(url, files=[("files", (name, data, "image/jpeg"))])
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code} {answer.text[:100]}")
                    continue
                images += len(answer.json())
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as error:
                errors.append(f"{type(error).__name__}: {error}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"clients": clients, "seconds": elapsed, "requests": len(latencies),
            "requests_per_second": len(latencies) / elapsed, "images_per_second": images / elapsed,
            "p50_ms": 1000 * ordered[len(ordered) // 2] if ordered else None,
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            if ordered else None,
            "errors": len(errors), "first_errors": errors[:3]}


def peak_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def serve_and_load(model, bodies, clients_list, seconds, env):
    import httpx

    port = free_port()
    server = subprocess.Popen([PYTHON, "-m", "smallcnn", "serve", str(model), "--port", str(port)],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        rows = []
        for clients in clients_list:
            before = httpx.get(f"{base}/metrics?format=json").json()
            row = asyncio.run(drive(f"{base}/predict", bodies, clients, seconds))
            after = httpx.get(f"{base}/metrics?format=json").json()
            batches = after["batches"] - before["batches"]
            row["mean_batch"] = (after["images"] - before["images"]) / batches if batches else None
            row["server_peak_mb"] = peak_mb(server.pid)
            row["engine"] = env.get("SMALLCNN_ENGINE", "auto")
            rows.append(row)
            print(json.dumps(row), flush=True)
        said = httpx.get(f"{base}/model").json()["engine"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    for row in rows:
        row["said"] = said
    return rows


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    predict = results.get("predict_images_per_second")
    lines = ["## Serving under load", "",
             f"bench/serve.py ({results['date']}): `smallcnn serve` of a {DATASET} extract run "
             f"(`--base {results.get('base', BASE)}`), each client posting one validation "
             "image per request for "
             f"{results['seconds']} s; the clients share the 2 cores with the server. The "
             f"server's engine (SMALLCNN_ENGINE) alternates over {results.get('rounds', 1)} "
             "round(s)."]
    if predict:
        lines[-1] += (f" `smallcnn predict` on a folder: {predict:.1f} images/s beyond start-up "
                      f"(target at 32 clients: {TARGET_FRACTION:.0%} of it).")
    lines += ["", "| engine | clients | requests/s | images/s | of predict's | p50 ms | p99 ms "
              "| mean batch | errors | server peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        share = f"{row['images_per_second'] / predict:.0%}" if predict else "-"
        lines.append(f"| {row.get('engine', 'auto')} | {row['clients']} | "
                     f"{row['requests_per_second']:.1f} | {row['images_per_second']:.1f} | "
                     f"{share} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                     f"{row['mean_batch']:.1f} | {row['errors']} | {row['server_peak_mb']:.0f} |")
    lines += ["", "Engines: " + "; ".join(sorted({f"{row.get('engine', 'auto')}: {row['said']}"
                                                 for row in results["rows"] if "said" in row}))]
    return lines + _engine_lines(results["rows"]) + [""]


def _engine_lines(rows):
    """Auto against LiteRT at the most clients: medians of images/s, and the verdict."""
    most = max(row["clients"] for row in rows)
    speeds = {}
    for row in rows:
        if row["clients"] == most:
            speeds.setdefault(row.get("engine"), []).append(row["images_per_second"])
    if not {"litert", "auto"} <= set(speeds):
        return []
    litert, auto = (statistics.median(speeds[e]) for e in ("litert", "auto"))
    verdict = "met" if auto >= ENGINE_TARGET * litert else "not met"
    return ["", f"At {most} clients: auto {auto:.1f} images/s, LiteRT {litert:.1f} (medians of "
            f"{len(speeds['auto'])} and {len(speeds['litert'])}): {auto / litert:.2f}x; target "
            f">= {ENGINE_TARGET}x: {verdict}."]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a run to serve (default: extract one)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--base", default=BASE, help="the extract run's base (without --model)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip-predict", action="store_true",
                        help="no `smallcnn predict` throughput (quicker)")
    args = parser.parse_args()
    data = SHARED / DATASET
    images = sorted((data / "validation" if (data / "validation").is_dir()
                     else data / "val").rglob("*.jpg"))
    bodies = [(p.name, p.read_bytes()) for p in images[:200]]
    with tempfile.TemporaryDirectory(prefix="smallcnn-serve-") as folder:
        work = Path(folder)
        # A run given keeps its cache (its base's conversion is there: without it, the
        # whole model is converted and served instead of the base and the head).
        kept = os.environ.get("SMALLCNN_CACHE") if args.model else None
        env = {"SMALLCNN_CACHE": kept or str(work / "cache")}
        model = args.model
        if model is None:
            model = work / "run"
            smallcnn("extract", data, "--base", args.base, "--out", model, env=env)
        throughput = None
        if not args.skip_predict:
            throughput = predict_throughput(model, images, work, env)
            print(f"predict: {throughput:.1f} images/s", flush=True)
        base = json.loads((model / "smallcnn.json").read_text())["settings"]["base"]
        rows = []
        for round_ in range(args.rounds):
            turn = round_ % len(args.engines)
            for engine in args.engines[turn:] + args.engines[:turn]:
                rows += serve_and_load(model, bodies, args.clients, args.seconds,
                                       {**env, "SMALLCNN_ENGINE": engine})
    results = {"date": time.strftime("%Y-%m-%d"), "seconds": args.seconds, "base": base,
               "rounds": args.rounds, "predict_images_per_second": throughput, "rows": rows}
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
