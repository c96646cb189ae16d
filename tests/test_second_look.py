"""bf16 predictions whose top two classes are nearly tied are made again in float32."""

import numpy as np

from smallcnn.inference.second_look import MARGIN, SecondLook, close_calls


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

    predict = SecondLook(lambda batch: fast[batch[:, 0]], again)
    assert opened == []  # nothing opened before a close call
    result = predict(images)
    assert seen == [[0, 2]] and opened == [True]
    np.testing.assert_array_equal(result[[0, 2]], exact[[0, 2]])
    np.testing.assert_array_equal(result[[1, 3]], fast[[1, 3]])
    assert result.argmax(1).tolist() == exact.argmax(1).tolist()
    predict(images[[1, 3]])  # no close call: float32 not run
    predict(images[[0]])
    assert opened == [True] and seen == [[0, 2], [0]]  # opened once


def test_tta_looks_again_at_the_close_calls_of_the_views_average():
    from smallcnn.inference.classifier import ImageClassifier
    from smallcnn.inference.tta import averaged

    # Image 0: its two views each sure, of opposite classes, so their average is a tie;
    # image 1: its first view a close call, its mirror sure of the same class.
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[:, :, 0] = np.array([0, 1])[:, None, None]  # first column: the image's number
    images[:, :, -1] = np.array([10, 11])[:, None, None]  # last column: 10 + its number
    fast = {0: [5.0], 10: [-5.0], 1: [MARGIN / 2], 11: [5.0]}  # by the first pixel
    seen = []

    def predicted(table):
        return lambda batch: np.concatenate(
            [probabilities_with_margins(table[int(image[0, 0, 0])]) for image in batch])

    def float32(batch):
        seen.append(sorted(int(image[0, 0, 0]) for image in batch))
        return predicted({0: [-2.0], 10: [-2.0], 1: [-2.0], 11: [-2.0]})(batch)

    looked = SecondLook(predicted(fast), lambda: float32)

    class Classifier(ImageClassifier):  # as a bf16 run's route runs: a SecondLook
        def _runner(self, count, batch_size):
            return looked

    classifier = Classifier({"class_names": ["a", "b", "c"], "image_size": 4})
    result = classifier.probabilities(images, tta_views=2)
    assert seen == [[0], [10]]  # image 0's two views, in float32; image 1 not again
    np.testing.assert_allclose(result[0], probabilities_with_margins([-2.0])[0], rtol=1e-6)
    np.testing.assert_allclose(result[1], averaged(predicted(fast), images[1:], 2)[0], rtol=1e-6)
    assert result.argmax(1).tolist() == [1, 0]
    # One view: the close calls are the view's own (image 1's first view).
    seen.clear()
    assert classifier.probabilities(images).argmax(1).tolist() == [0, 1] and seen == [[1]]
