"""What `smallcnn label`'s loop costs on a real set, and what its page shows as labels grow.

A person is simulated through the page's API (FastAPI's TestClient, in this process): for
each image the page shows, the answer is the image's true class. DATA starts with the
set's validation images and no training image; the pool is its train split, the features
the default base's (no model: the classes from DATA's folders, the first images by
coverage). Recorded: the start (pool features, cached after a first run), each answer's
latency (written into DATA at once), each retraining's wait (from the K-th answer to its
accuracy on the page: the heads, then the pool's new ranking), how often the page's
pre-selected guess was right, and the validation accuracy at each retraining. The set is
only linked and copied into a temporary folder.

    .venv/bin/python bench/label_page.py [--dataset food101-10] [--labels 200] [--every 10]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SHARED, load_results, save_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "label_page.json"


def data_folder(dataset, work):
    """DATA: the set's val/ (linked), and an empty train/<class>/ for each class."""
    data = work / "data"
    for folder in sorted((dataset / "val").iterdir()):
        (data / "train" / folder.name).mkdir(parents=True)
        (data / "val").mkdir(exist_ok=True)
        (data / "val" / folder.name).symlink_to(folder.resolve())
    return data


def simulate(dataset, labels, every, work):
    from fastapi.testclient import TestClient

    from smallcnn.inference.stream import images_of
    from smallcnn.progress import Reporter
    from smallcnn.serve.label_routes import create_label_app
    from smallcnn.serve.label_store import LabelStore
    from smallcnn.serve.labelling import Labelling, LabelSettings, model_features

    data = data_folder(dataset, work)
    starts = []
    for _ in ("cold", "cached"):  # the features computed, then read from the cache
        started = time.perf_counter()
        labelling = Labelling(images_of([dataset / "train"]), LabelStore(data),
                              model_features(None, Reporter()), every=every)
        starts.append(time.perf_counter() - started)
    val = len(labelling.y)
    client = TestClient(create_label_app(labelling, LabelSettings(every=every)))
    answers, waits, guessed, right = [], [], 0, 0
    for count in range(1, labels + 1):
        item = client.get("/api/next").json()[0]
        truth = Path(labelling.paths[item["id"]]).parent.name
        guessed += item["guess"] is not None
        right += item["guess"] == truth
        started = time.perf_counter()
        response = client.post("/api/answer", json={"id": item["id"], "answer": truth})
        answers.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        if count % every == 0:
            started = time.perf_counter()
            labelling.wait_for_training()
            waits.append(time.perf_counter() - started)
    state = client.get("/api/state").json()
    return {"pool": len(labelling.paths), "val": val, "every": every,
            "start_seconds": starts[0], "cached_start_seconds": starts[1], "answer_ms_median": 1000 * statistics.median(answers),
            "answer_ms_max": 1000 * max(answers),
            "retrain_seconds_median": statistics.median(waits), "retrain_seconds_max": max(waits),
            "guessed": guessed, "guess_right": right, "history": state["history"],
            "load_average": os.getloadavg()[0]}  # other work on the machine slows it down


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    r = results["result"]
    points = [p for p in r["history"] if (p["labels"] - r["val"]) % (5 * r["every"]) == 0]
    return ["## The labelling page", "",
            f"bench/label_page.py ({results['date']}, {results['dataset']}): a person simulated "
            f"through `smallcnn label`'s API, answering with the true class; DATA starts with "
            f"the {r['val']} validation images, the pool is the {r['pool']} training images, "
            f"the heads retrain every {r['every']} answers. Start: {r['start_seconds']:.1f} s "
            f"(the features computed), {r['cached_start_seconds']:.1f} s (cached). "
            f"An answer, written into DATA: {r['answer_ms_median']:.1f} ms median, "
            f"{r['answer_ms_max']:.1f} ms at most. A retraining and the new ranking: "
            f"{r['retrain_seconds_median']:.2f} s median, {r['retrain_seconds_max']:.2f} s at "
            f"most (load average {r.get('load_average', float('nan')):.1f} on the machine's "
            f"{os.cpu_count()} cores at the end). The pre-selected guess was right for {r['guess_right']} of the "
            f"{r['guessed']} images shown with one: once labels are a few per class, the "
            "page shows the images the heads doubt most. The validation accuracy as labels "
            "grew:", "",
            "| labels | validation accuracy |", "|---|---|",
            *(f"| {p['labels'] - r['val']} | {p['accuracy']:.1%} |" for p in points), ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="food101-10")
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smallcnn-label-page-") as folder:
        os.environ["SMALLCNN_CACHE"] = str(Path(folder) / "cache")  # a cold start first
        result = simulate(SHARED / args.dataset, args.labels, args.every, Path(folder))
    save_results(RESULTS, {"date": time.strftime("%Y-%m-%d"), "dataset": args.dataset,
                           "result": result}, summary)


if __name__ == "__main__":
    main()
