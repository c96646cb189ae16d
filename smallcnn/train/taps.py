"""Whether a run's head reads the base's intermediate taps, decided on val.

`--taps auto` (the default) trains the heads twice on the same rows: on the last layer's
pooled features (what smallcnn always did) and on those and the taps' (each group
normalised: `smallcnn.model.taps`). The taps are kept only when they gain at least
`MIN_VAL_GAIN` val images at a val loss no higher, so a data set they do not help keeps
the head it had (on food101-10 they are within noise; on a leaf-disease set they gained
4.2 points: bench/taps.py). `on` and `off` train one head only.
"""

from smallcnn.model import head
from smallcnn.model.taps import HeadInput

CHOICES = ("auto", "on", "off")
MIN_VAL_GAIN = 2  # val images the taps must gain (one is within any seed's noise)


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
    names = ", ".join(name.partition(":")[0] for name, _ in spec.taps)
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
        loss, accuracy = head.evaluate(weights, head_input(val_x), val_y)
        trained.append((head_input, (weights, history), float(loss), float(accuracy)))
    best = _better(trained, len(val_y))
    source.head_input = best[0]
    if not spec.taps:
        return best[1], None
    if len(trained) > 1:
        note(f"The head reads {describe(best[0], spec)}: val accuracy "
             f"{trained[0][3]:.2%} on the last layer's, {trained[1][3]:.2%} with the taps "
             f"(kept where they gain {MIN_VAL_GAIN}+ val images at no higher val loss).")
    return best[1], {
        "requested": requested, "used": best[0].taps,
        "layers": [name.partition(":")[0] for name, _ in spec.taps],
        **{key: {("with_taps" if t[0].taps else "last_layer"): round(t[index], 4)
                 for t in trained}
           for key, index in (("val_accuracy", 3), ("val_loss", 2))}}


def _better(trained, val_count):
    """The last layer's head unless the taps' gains `MIN_VAL_GAIN` val images at a val
    loss no higher (`trained`: the last layer's first, where both were tried)."""
    if len(trained) == 1:
        return trained[0]
    last, taps = trained
    gained = round((taps[3] - last[3]) * val_count)
    return taps if gained >= MIN_VAL_GAIN and taps[2] <= last[2] else last
