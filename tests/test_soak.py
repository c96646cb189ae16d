"""A short soak of `smallcnn serve` (bench/soak.py's harness, tools/soak.py, for seconds
instead of a minute): ordinary and hostile clients at once, and nothing gets through (issue 26)."""

import json

import pytest
from conftest import invoke

from smallcnn.serve import ServeSettings
from tools import soak, soak_requests

SECONDS = 6
CLIENTS = 4
MOST = 1_500  # requests in all, whichever bound comes first


@pytest.mark.heavy  # a server in a process of its own, 30 s or more on 2 cores
def test_a_short_soak_answers_every_request_as_promised(trained, tmp_path):
    run, data = trained
    photos = sorted((data / "val").rglob("*.png"))
    readable, damaged = soak_requests.corpus_files(tmp_path / "corpus")
    good = [*photos, *readable]
    classes = len(json.loads((run / "smallcnn.json").read_text())["class_names"])
    # Small limits: refusing a body or a list of files costs the clients little, and two
    # Grad-CAMs at once are one too many (503, counted).
    settings = ServeSettings(max_upload_mb=0.5, max_files=4, max_gradcam=1)

    def predicted():
        done = invoke("predict", *good, "--model", run, "--json", "--top-k", classes)
        assert done.exit_code == 0, done.output
        return soak_requests.expected_probabilities(json.loads(done.stdout))

    m = soak_requests.materials(good, damaged, settings, classes)
    results = soak.run_soak(run, settings, m, predicted, tmp_path / "server.log", CLIENTS,
                            SECONDS, MOST)
    assert soak.failures(results) == []
    sent = {row["kind"] for row in results["rows"]}
    every = {soak.FIRST_GRADCAM, *soak_requests.KINDS, soak.HEALTH}
    assert sent == every, "every kind, and /health"
    answered = sum(row["statuses"].get("200", 0) for row in results["rows"]
                   if row["kind"].startswith("good"))
    assert answered >= 10  # good images whose probabilities were compared with predict's
