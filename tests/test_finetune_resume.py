"""finetune --resume: a run stopped in its head phase goes on with fine-tuning, one stopped
in fine-tuning with the epochs it has left, numbered on from the run's, into the same
folder."""

import json
import signal

import pytest

from conftest import invoke
from smallcnn.model import runs
from smallcnn.progress import Reporter
from smallcnn.train import Settings, finetune

HEAD_EPOCHS, EPOCHS = 3, 3
SETTINGS = Settings(base="small", image_size=32, batch_size=8, head_epochs=HEAD_EPOCHS,
                    epochs=EPOCHS, unfreeze=1, patience=HEAD_EPOCHS + EPOCHS, augment="none")


class CtrlC(Reporter):
    """Presses Ctrl-C (a real SIGINT) at the end of the given epoch of a phase."""

    def __init__(self, phase, epoch):
        self.phase, self.at = phase, epoch

    def epoch(self, phase, epoch, epochs, logs):
        if (phase, epoch) == (self.phase, self.at):
            # Only while training, when smallcnn's handler replaces Python's.
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("phase, epoch", [
    pytest.param("frozen", 1, id="in-the-head-phase"),  # both phases' arithmetic
    pytest.param("finetune", 1, id="in-fine-tuning", marks=pytest.mark.heavy),
])
def test_finetune_resumes_each_phase_with_the_epochs_it_has_left(tiny_data, phase, epoch):
    stopped = finetune(tiny_data, settings=SETTINGS, out="runs/f", reporter=CtrlC(phase, epoch))
    assert stopped.interrupted == "SIGINT"
    before = runs.read_history("runs/f")
    assert 0 < len(before) < HEAD_EPOCHS + EPOCHS
    assert before[-1]["phase"] == phase

    resumed = invoke("finetune", "--resume", "runs/f")
    assert resumed.exit_code == 0, resumed.output
    assert f"Resuming runs/f after {len(before)} epoch(s)" in resumed.output
    rows = runs.read_history("runs/f")
    assert rows[: len(before)] == before  # the epochs trained before are kept as they were
    # A head phase stopped is over (extract's heads, trained in seconds, were saved);
    # fine-tuning goes on with the epochs it has left.
    head = sum(row["phase"] == "frozen" for row in before)
    assert [row["phase"] for row in rows] == ["frozen"] * head + ["finetune"] * EPOCHS
    assert [int(row["epoch"]) for row in rows] == list(range(1, head + EPOCHS + 1))
    metrics = json.loads((stopped.run_dir / runs.METRICS_FILE).read_text())
    assert "interrupted" not in metrics
    assert metrics["finetune_start_epoch"] == head + 1
    assert metrics["unfrozen_layers"]  # the base was unfrozen again on resuming
    config = runs.read_config(stopped.run_dir)
    assert config["resumed"] == ["smallcnn finetune --resume runs/f"]
