"""Real data, real weights: slow, so `make test` leaves them out; `make test-all` (CI) and
`pytest -m slow` run them."""

import json
from pathlib import Path

import pytest

from conftest import invoke

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "ants-bees"


@pytest.mark.slow
def test_the_bundled_sample_reaches_its_accuracy_with_the_bundled_weights():
    result = invoke("extract", SAMPLE, "--out", "runs/demo")
    assert result.exit_code == 0, result.output
    metrics = json.loads(Path("runs/demo/metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.92
    # The saved model predicts what extract measured.
    evaluated = invoke("evaluate", "runs/demo", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["val_accuracy"])
