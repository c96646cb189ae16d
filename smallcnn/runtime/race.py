"""Which of two engines runs a model faster here: raced once, alternating, the winner
recorded in the cache.

`--engine auto` has LiteRT and OpenVINO float32 to choose from, and neither is faster for
every model (issue 29, this 2-core Sapphire Rapids: OpenVINO float32 ran EfficientNet-B0 at
1.35x LiteRT's speed, MobileNetV2 at 0.77-0.9x). So the first open of a model races them
on a few batches of its own input shape, in turns (A B, B A, ...: the machine's speed
drifts, medians), within `RACE_SECONDS`; the winner is written to a small JSON entry of
the cache's `engines` part, and later opens read it instead of racing.
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np

from smallcnn.runtime import cache

RACE_SECONDS = 3.0  # the most a race may take, warm-up included (a pair is never cut short)
RACE_BATCH = 8  # images per timed call
RACE_ROUNDS = 4  # pairs of calls at most


def recorded(name, contestants, warn=None):
    """The recorded result `{"winner", "speedup"}` of the race `name`, or None when there is
    none; a record that cannot be read, or names no contestant, is removed and said in one
    line (through `warn`) by `cache.load`, so the caller races again."""

    def read(path):
        result = json.loads(Path(path).read_text())
        if not isinstance(result, dict) or result.get("winner") not in contestants or \
                not isinstance(result.get("speedup"), (int, float)) or result["speedup"] < 1:
            raise ValueError(f"not a race's result: {str(result)[:60]!r}")
        return result

    return cache.load("engines", name, read, warn=warn)


def race(engines, input_shape, seconds=RACE_SECONDS):
    """`{"winner", "speedup", "seconds"}` of `engines` ({name: callable on a batch}) on
    random uint8 batches of `input_shape` (batch dimension ignored): each warmed up on a
    batch, then timed in turns, the order reversed each round, until `RACE_ROUNDS` pairs or
    `seconds` run out; `speedup` is the loser's median time over the winner's."""
    images = np.random.default_rng(0).integers(0, 256, (RACE_BATCH, *input_shape[1:]),
                                               dtype=np.uint8)
    started = time.perf_counter()
    for run in engines.values():
        run(images)  # first calls allocate (XNNPACK's buffers, OpenVINO's requests)
    times = {name: [] for name in engines}
    order = list(engines)
    for _ in range(RACE_ROUNDS):
        round_started = time.perf_counter()
        for name in order:
            times[name].append(_timed(engines[name], images))
        order.reverse()
        now = time.perf_counter()
        if now - started + (now - round_started) > seconds:  # another pair would overrun
            break
    medians = {name: statistics.median(values) for name, values in times.items()}
    winner = min(medians, key=medians.get)
    loser = max(medians, key=medians.get)
    speedup = medians[loser] / medians[winner] if medians[winner] > 0 else 1.0
    return {"winner": winner, "speedup": round(speedup, 3),
            "seconds": round(time.perf_counter() - started, 2)}


def _timed(run, images):
    """Seconds one call of `run` on `images` takes."""
    start = time.perf_counter()
    run(images)
    return time.perf_counter() - start


def record(name, result, warn=None):
    """Writes a race's result as the entry `name` (atomically, through `cache.store`)."""
    cache.store("engines", name, lambda temp: Path(temp).write_text(json.dumps(result)),
                warn=warn)
