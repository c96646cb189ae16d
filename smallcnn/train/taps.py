"""Whether a run's head reads the base's intermediate taps, decided on val.

`--taps auto` (the default) trains the heads twice on the same rows: on the last layer's
pooled features (what smallcnn always did) and on those and the taps' (each group
normalised: `smallcnn.model.taps`). The taps are kept only when, on val, the images they get right
and the last layer's head gets wrong outnumber the reverse by at least `MIN_VAL_GAIN` and
by one standard deviation of that difference were the two equally good (the square root
of the images they disagree on: a sign test), at a val loss no higher. So a data set
they do not help keeps the head it had: on food101-10 the taps are within noise, and a
plain "2 more val images" rule kept them there and lost 4 test images (bench/taps.py);
on a leaf-disease set they gained 4.2 points. `on` and `off` train one head only.
"""

import dataclasses
import math

import numpy as np


from smallcnn.model import head
from smallcnn.model.taps import HeadInput, layer_names

CHOICES = ("auto", "on", "off")
MIN_VAL_GAIN = 2  # val images the taps must gain (one is within any seed's noise)
SIGNIFICANCE = 1.0  # standard deviations of the difference under "equally good"


def candidates(spec, requested):
    """The head inputs to try for `--taps requested` on a registry entry."""
    last, tapped = HeadInput.of(spec), HeadInput.of(spec, taps=True)
    if not spec.taps or requested == "off":
        return [last]
    return [tapped] if requested == "on" else [last, tapped]


def describe(head_input, spec):
    """What a head reads, in words."""
    if not head_input.taps:
        return "the last layer's features"
    names = ", ".join(layer_names(spec.taps))
    return f"the last layer's and {len(spec.taps)} intermediate taps' features ({names})"


def choose(source, requested, train, note, stopped=lambda: False):
    """Trains a head on each candidate input and keeps the better on val (see above).

    Args:
        source: the run's `FeatureSource`; its `head_input` is left at the choice, so its
            `features` are then the chosen head's input.
        requested: `--taps` (`CHOICES`).
        train: `train(head_input)` trains on the training rows as that input, reading val
            through `source.features`, and returns `(weights, history)`.
        note: says in one line what is tried and what was chosen.
        stopped: true once training was interrupted (nothing more is tried).

    Returns:
        `((weights, history) of the chosen head, record)`, the record (for metrics.json)
        None where the base has no taps.
    """
    spec = source.plan.spec
    options = candidates(spec, requested)
    val_x, val_y = source.raw_features("val")
    trained = []
    for head_input in options:
        if trained and stopped():
            break
        source.head_input = head_input
        if len(options) > 1:
            note(f"Heads on {describe(head_input, spec)}:")
        weights, history = train(head_input)
        x = head_input(val_x)
        loss, accuracy = head.evaluate(weights, x, val_y)
        right = head.probabilities(weights, x).argmax(axis=1) == val_y
        trained.append(Trained(head_input, (weights, history), float(loss), float(accuracy),
                               right))
    best, duel = _better(trained)
    source.head_input = best.head_input
    if not spec.taps:
        return best.result, None
    if duel is not None:
        note(f"With the taps, the heads got {duel['taps_only']} val image(s) right that the "
             f"last layer's got wrong and {duel['last_only']} wrong that it got right, val "
             f"loss {trained[0].loss:.4f} -> {trained[1].loss:.4f}: the head reads "
             f"{describe(best.head_input, spec)} (the taps are kept where they win clearly "
             "at no higher val loss).")
    return best.result, {
        "requested": requested, "used": best.head_input.taps,
        "layers": layer_names(spec.taps),
        **({"val_images_right": duel} if duel else {}),
        **{key: {("with_taps" if t.head_input.taps else "last_layer"): round(getattr(t, key[4:]), 4)
                 for t in trained}
           for key in ("val_accuracy", "val_loss")}}


@dataclasses.dataclass
class Trained:
    head_input: object
    result: tuple  # (weights, history)
    loss: float
    accuracy: float
    right: np.ndarray  # which val images it gets right


def _better(trained):
    """`(the head kept, the val duel)`: the last layer's head unless the taps' wins the
    duel (see the module's docstring; `trained`: the last layer's first)."""
    if len(trained) == 1:
        return trained[0], None
    last, taps = trained
    taps_only = int(np.sum(taps.right & ~last.right))
    last_only = int(np.sum(last.right & ~taps.right))
    gained = taps_only - last_only
    clear = gained >= max(MIN_VAL_GAIN, SIGNIFICANCE * math.sqrt(taps_only + last_only))
    duel = {"taps_only": taps_only, "last_only": last_only}
    return (taps if clear and taps.loss <= last.loss else last), duel
