"""bf16 predictions whose top two classes are nearly tied are made again in float32."""

import numpy as np

from smallcnn.inference.second_look import MARGIN, close_calls, second_look


def probabilities_with_margins(margins, classes=3):
    """Rows whose top two log-probabilities are `margins` apart (class 0 first)."""
    rows = []
    for margin in margins:
        logits = np.array([margin, 0.0] + [-10.0] * (classes - 2))
        rows.append(np.exp(logits) / np.exp(logits).sum())
    return np.array(rows)


def test_close_calls_are_the_rows_within_the_margin():
    rows = probabilities_with_margins([0.0, MARGIN * 0.9, MARGIN * 1.1, 5.0])
    assert close_calls(rows).tolist() == [True, True, False, False]
    assert close_calls(np.ones((2, 1))).tolist() == [False, False]  # one class: no call
    assert close_calls(np.zeros((2, 3))).tolist() == [True, True]  # no log of zero


def test_only_close_calls_are_made_again_and_float32_opens_once_when_needed():
    images = np.arange(4)[:, None]
    fast = probabilities_with_margins([0.01, 3.0, MARGIN / 2, 4.0])
    exact = probabilities_with_margins([-0.01, 3.1, MARGIN / 2, 4.1])  # row 0: class 1 wins
    opened, seen = [], []

    def again():
        opened.append(True)

        def float32(batch):
            seen.append(batch[:, 0].tolist())
            return exact[batch[:, 0]]

        return float32

    predict = second_look(lambda batch: fast[batch[:, 0]], again)
    assert opened == []  # nothing opened before a close call
    result = predict(images)
    assert seen == [[0, 2]] and opened == [True]
    np.testing.assert_array_equal(result[[0, 2]], exact[[0, 2]])
    np.testing.assert_array_equal(result[[1, 3]], fast[[1, 3]])
    assert result.argmax(1).tolist() == exact.argmax(1).tolist()
    predict(images[[1, 3]])  # no close call: float32 not run
    predict(images[[0]])
    assert opened == [True] and seen == [[0, 2], [0]]  # opened once
