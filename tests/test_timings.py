"""Where the time goes: stages add up, nothing is counted twice, every run records them."""

import json

import pytest

from conftest import invoke
from smallcnn.runtime.timings import STAGES, Timings, summary


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_nested_stage_pauses_the_enclosing_one():
    clock = Clock()
    timings = Timings(clock)
    with timings("build"):
        clock.now += 1.0
        with timings("import"):  # 2 s of import inside the build
            clock.now += 2.0
        clock.now += 0.5
    clock.now += 0.25  # claimed by no stage
    with timings("decode"):
        clock.now += 3.0
    with timings("decode"):  # a stage entered twice adds up
        clock.now += 1.0
    assert timings.report() == {"import": 2.0, "build": 1.5, "decode": 4.0, "other": 0.25,
                                "total": 7.75}
    assert summary(timings.report()) == "decode 4.0 s, import 2.0 s, build 1.5 s, other 0.2 s"


def test_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="Unknown stage 'lunch'"):
        with Timings()("lunch"):
            pass


def test_extract_records_where_its_time_went(tiny_data):
    result = invoke("extract", tiny_data, "--base", "small", "--image-size", "32",
                    "--epochs", "3", "--batch-size", "8", "--out", "runs/t")
    assert result.exit_code == 0, result.output
    assert "where the time went" in result.output
    metrics = json.loads(open("runs/t/metrics.json").read())
    timings = metrics["timings"]
    assert {"scan", "decode", "base", "head", "save"} <= set(timings) <= {*STAGES, "other", "total"}
    assert sum(v for k, v in timings.items() if k != "total") == pytest.approx(
        timings["total"], abs=0.05)
    assert metrics["seconds"] == timings["total"]
