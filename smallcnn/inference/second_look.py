"""Close calls of a bfloat16 base looked at again in float32.

On a CPU with AMX, OpenVINO runs the frozen base in bfloat16 about twice as fast as in
float32 (issue 29), its features within a cosine of 0.99 of float32's. That moves no
clear prediction, but it can swap the head's top two classes where they are nearly tied.
Measured on the bench sets' val and test images (the same head on bf16 and on LiteRT
float32 features): EfficientNet-B0 changed 6 of 500 labels on food101-10, 1 of 2,000 on
cats-dogs-small, 0 of 153 on ants-bees; MobileNetV2 18 of 500, 2 of 2,000 and 1 of 153;
every one with its top two log-probabilities within 0.72 of each other. So a
prediction from bf16 features whose top two are within `MARGIN` is made again from the
same images' float32 features, and labels are float32's. Only the close calls pay for a
second pass: 27% of food101-10's images (a hard set: 81% accuracy), 2% of
cats-dogs-small's, 6-7% of ants-bees'.
"""

import numpy as np

# The log-probability margin under which a bf16 prediction is made again in float32:
# above the widest margin at which bf16 changed a label on the bench sets (0.72).
MARGIN = 1.0


def close_calls(probabilities, margin=MARGIN):
    """Which rows of `probabilities` have their top two classes within `margin` of each
    other in log-probability (every row, with one class: nothing to compare)."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] < 2:
        return np.zeros(len(probabilities), bool)
    top_two = np.log(np.maximum(np.sort(probabilities, axis=-1)[:, -2:], np.finfo(np.float32).tiny))
    return top_two[:, 1] - top_two[:, 0] < margin


def looked_again(probabilities, again):
    """`probabilities` with their close calls' rows replaced by `again(rows)`: a function
    of the close rows' indices that returns their float32 probabilities (not called
    where there is none)."""
    probabilities = np.asarray(probabilities)
    close = np.flatnonzero(close_calls(probabilities))
    if len(close):
        probabilities = probabilities.copy()
        probabilities[close] = again(close)
    return probabilities


class SecondLook:
    """`predict` (a function of a pixel batch to probabilities) with its close calls
    replaced by `again`'s on the same images; `again` is a function of no arguments that
    returns the float32 predict function, called on the first close call only.

    With test-time augmentation (`averaged`), the close calls are those of the views'
    average, and their views all run again in float32: the label is float32's averaged
    label, not an average of views each looked at on its own.
    """

    def __init__(self, predict, again):
        self._predict, self._again, self._exact = predict, again, None

    def _float32(self):
        if self._exact is None:
            self._exact = self._again()
        return self._exact

    def __call__(self, images):
        return looked_again(self._predict(images),
                            lambda rows: self._float32()(images[rows]))

    def averaged(self, images, views):
        """The mean probabilities over the first `views` views of `images`
        (`tta.averaged`), its close calls made again from float32's views."""
        from smallcnn.inference.tta import averaged

        return looked_again(averaged(self._predict, images, views),
                            lambda rows: averaged(self._float32(), images[rows], views))


class Float32Engine:
    """A .tflite model in float32 for close calls, one image at a time (they come in any
    number, and each new batch size makes LiteRT allocate its tensors again:
    EfficientNet-B0's second look grew predict's peak memory by 94 MB in batches of 1 and
    2, against 35 MB for its interpreter). LiteRT (lighter than a second compiled
    OpenVINO model, and no race to run); OpenVINO float32 where LiteRT cannot run, said
    in one line through `warn`."""

    def __init__(self, tflite_path, warn):
        from smallcnn.errors import described
        from smallcnn.runtime.engine import open_engine
        from smallcnn.runtime.litert import LiteRTEngine

        try:
            self._engine = LiteRTEngine(tflite_path)
        except Exception as error:  # no LiteRT wheel for this platform
            warn(f"Close calls run again in OpenVINO float32: LiteRT is not usable here "
                 f"({described(error)}).")
            self._engine = open_engine(tflite_path, "openvino", precision="float32")
        self.name, self.precision = self._engine.name, self._engine.precision

    def __call__(self, images):
        return np.concatenate([self._engine(image[None]) for image in images])
